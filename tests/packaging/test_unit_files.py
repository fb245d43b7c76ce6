"""The systemd unit, sysusers.d and tmpfiles.d files, checked by systemd's own tools where
this machine has them (systemd-analyze, systemd-sysusers/-tmpfiles --root) and against the
contract: Type=notify with a watchdog, KillMode=process so restarts leave trainings running,
a sandbox that still reaches /dev/nvidia* and the configured roots, and the spool modes."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dpd.cli import EXIT_CONFIG
from dpd.config import TrainerConfig, load_config
from dpd.spool.layout import SpoolLayout
from tests.daemon_harness import free_port
from tests.packaging.conftest import (
    DEFAULT_CONFIG,
    SYSUSERS,
    TMPFILES,
    UNIT,
    parse_unit,
    tmpfiles_entries,
)

EXPOSURE_TARGET = 3.0
needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    (value,) = service[key]
    return value


def test_notify_with_watchdog_and_restart_on_failure(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"  # trainers cannot speak for dpd
    assert 10 <= int(one(service, "WatchdogSec")) <= 120
    assert one(service, "Restart") == "on-failure"
    assert one(service, "ExecStart") == "/usr/bin/dpd serve --config /etc/dpd/dpd.toml"
    assert "$MAINPID" in one(service, "ExecReload") and "HUP" in one(service, "ExecReload")
    unit = parse_unit(UNIT.read_text())
    assert int(unit["Unit"]["StartLimitBurst"][0]) > 0
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_restart_signals_only_the_daemon_so_trainings_survive(
    service: dict[str, list[str]],
) -> None:
    """DESIGN §6 by emulation (no systemd here): shims live in the service's cgroup, so only
    KillMode=process spares them on stop/restart; the daemon itself stops them when
    stop_jobs_on_shutdown is set, and the stop timeout must leave room for that."""
    assert one(service, "KillMode") == "process"
    assert "Delegate" not in service
    graceful = TrainerConfig().stop_timeout + 30  # diffusion-pipe's save, deepspeed's grace
    assert int(one(service, "TimeoutStopSec")) >= graceful
    text = UNIT.read_text()
    assert "stop_jobs_on_shutdown" in text and "KillMode=process" in text  # documented


def test_one_killed_trainer_does_not_stop_the_service(service: dict[str, list[str]]) -> None:
    """The OOM killer taking a trainer (in this unit's cgroup, KillMode=process) must not
    stop dpd: systemd's default OOMPolicy=stop would, and restarts would burn the limit."""
    assert one(service, "OOMPolicy") == "continue"


def test_a_configuration_error_is_not_restarted_in_a_loop(
    service: dict[str, list[str]], tmp_path: Path
) -> None:
    """dpd exits 78 on a configuration error, found early or late; the unit does not
    restart that status."""
    assert one(service, "RestartPreventExitStatus") == str(EXIT_CONFIG) == "78"
    bad_catalog = tmp_path / "catalog.yaml"
    bad_catalog.write_text("models: 3\n")
    early = "[http]\nport = 'x'\n"
    late = (  # valid TOML; the model catalog it names is refused while the daemon is built
        f"[daemon]\nstate_dir = '{tmp_path / 'state'}'\nspool_dir = '{tmp_path / 'spool'}'\n"
        f"[http]\nport = {free_port()}\n[models]\ncatalog = '{bad_catalog}'\n"
    )
    for text in (early, late):
        config = tmp_path / "dpd.toml"
        config.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_", "NOTIFY_"))}
        result = subprocess.run(
            [sys.executable, "-m", "dpd", "serve", "--config", str(config)],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert result.returncode == 78, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith("dpd: configuration error:")
        assert "Traceback" not in result.stderr


def test_runs_as_dpd_in_a_sandbox(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "dpd" and one(service, "Group") == "dpd"
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "RestrictSUIDSGID": "yes",
        "PrivateDevices": "no",  # it would hide the GPUs
        "DevicePolicy": "closed",
    }.items():
        assert one(service, key) == value, key
    assert service["CapabilityBoundingSet"] == [""]  # no capabilities at all
    assert one(service, "UMask") == "0027"


def test_the_gpus_are_reachable_in_the_sandbox(service: dict[str, list[str]]) -> None:
    allowed = {entry.split()[0]: entry.split()[1] for entry in service["DeviceAllow"]}
    for device in ("char-nvidiactl", "char-nvidia", "char-nvidia-frontend", "char-nvidia-uvm"):
        assert allowed.get(device) == "rw", device
    assert "char-nvidia-caps" in allowed  # MIG


def test_every_path_the_shipped_config_writes_is_writable(
    service: dict[str, list[str]],
) -> None:
    config = load_config(DEFAULT_CONFIG, environ={"DPD_DAEMON_NODE": "ci"})  # any hostname
    writable = [Path(p.lstrip("-")) for e in service["ReadWritePaths"] for p in e.split()]
    for key, base in (("StateDirectory", "lib"), ("CacheDirectory", "cache")):
        writable.append(Path("/var") / base / one(service, key))
    daemon = config.daemon
    for path in (
        daemon.spool_dir,
        daemon.state_dir,
        daemon.output_root,
        daemon.models_root,
        daemon.preprocessed_root,
        *daemon.data_roots,
    ):
        assert any(path == w or w in path.parents for w in writable), path
    assert config.daemon.state_dir == Path("/var/lib") / one(service, "StateDirectory")


def test_trainer_temporary_files_outlive_the_private_tmp(service: dict[str, list[str]]) -> None:
    env = dict(e.split("=", 1) for e in service["Environment"])
    cache = Path("/var/cache") / one(service, "CacheDirectory")
    for name in ("TMPDIR", "TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR", "HF_HOME"):
        assert cache in Path(env[name]).parents, name
    assert "/var/cache/dpd/tmp" in tmpfiles_entries(TMPFILES.read_text())


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """verify checks that ExecStart exists: point it at a stub unless dpd is installed."""
    stub = tmp_path / "dpd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "dpd.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/dpd ", f"{stub} "))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_analyze
def test_security_exposure_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    score, verdict = float(match[1]), match[2]
    with capsys.disabled():
        print(f"\nsystemd-analyze security --offline=yes dpd.service: {score} {verdict}")
    assert score <= EXPOSURE_TARGET and verdict == "OK"
    gate = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(UNIT)],
        capture_output=True,
        timeout=60,
    )
    assert gate.returncode == 0  # the CI gate form (threshold compares exposure x 10)


# -- sysusers.d and tmpfiles.d ----------------------------------------------------------------


def test_tmpfiles_modes_match_the_contract() -> None:
    entries = tmpfiles_entries(TMPFILES.read_text())
    spool = SpoolLayout(Path("/var/spool/dpd"))
    incoming = entries[str(spool.incoming)]
    assert incoming[1] & stat.S_ISGID and incoming[1] & 0o070 == 0o070  # setgid, group rwx
    assert entries[str(spool.jobs)][1] == 0o2750
    assert entries[str(spool.rejected)][1] == 0o2750
    assert entries[str(spool.quarantine)][1] == 0o700
    assert entries["/var/lib/dpd"][1] == 0o710  # group dpd: local.key by name, no listing
    for path, (kind, mode, user, group) in entries.items():
        assert kind == "d" and (user, group) == ("dpd", "dpd"), path
        assert mode & 0o007 == 0, f"{path} is world-accessible"


needs_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or not all(map(shutil.which, ("systemd-sysusers", "systemd-tmpfiles"))),
    reason="needs root and systemd-sysusers/systemd-tmpfiles (they chown inside --root)",
)


@needs_root_tools
def test_sysusers_and_tmpfiles_in_an_isolated_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for tool, source in (("systemd-sysusers", SYSUSERS), ("systemd-tmpfiles", TMPFILES)):
        create = ["--create"] if tool == "systemd-tmpfiles" else []
        args = [tool, f"--root={root}", *create, "-"]
        result = subprocess.run(
            args, input=source.read_bytes(), capture_output=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr.decode()
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").open()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").open()}
    assert passwd["dpd"][5] == "/var/lib/dpd" and passwd["dpd"][6].strip() == "/usr/sbin/nologin"
    uid, gid = int(passwd["dpd"][2]), int(groups["dpd"][2])
    assert uid < 1000 and gid == int(passwd["dpd"][3])  # a system user with its own group
    for path, (_, mode, _, _) in tmpfiles_entries(TMPFILES.read_text()).items():
        info = (root / path.lstrip("/")).stat()
        assert stat.S_IMODE(info.st_mode) == mode, path
        assert (info.st_uid, info.st_gid) == (uid, gid), path
