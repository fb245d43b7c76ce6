"""The first command after ``dpd serve`` works: a real daemon on the embedded default (no
configuration file, auth on) makes ``<state_dir>/local.key``, and the same user's ``dpd ls`` and
``dpd gpus`` find it; other addresses never get it; every 401/403 says what to do."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpd.cli import EXIT_FAILURE, EXIT_OK
from dpd.cli.connection import Credentials, auth_hint
from dpd.client.local_key import LocalKey, find_local_key
from dpd.local_key import KEY_SHAPE, ensure_local_key, local_key_path
from tests.daemon_harness import free_port, wait_for


class LaptopDaemon:
    """``dpd serve`` with no configuration file, as a person starts it on a laptop."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DPD_", "API_", "NOTIFY_"))}  # fmt: skip
        self.env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"),
                        DPD_HTTP_PORT=str(self.port))  # fmt: skip
        self.state_dir = home / "state" / "dpd" / "state"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env["DPD_URL"] = self.url
        self.log = home / "dpd.stderr"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LaptopDaemon:
        with self.log.open("ab") as stderr:
            self.process = subprocess.Popen([sys.executable, "-m", "dpd", "serve"],
                                            stdout=subprocess.DEVNULL, stderr=stderr,
                                            env=self.env)  # fmt: skip
        wait_for(self.ready, timeout=30)
        return self

    def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log.read_text()
        return self.dpd("gpus", "--key", "sk_probe").returncode in (EXIT_OK, EXIT_FAILURE)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)

    def dpd(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dpd", *args], capture_output=True,
                              text=True, env={**self.env, **env}, timeout=30)  # fmt: skip


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaptopDaemon]:
    daemon = LaptopDaemon(tmp_path_factory.mktemp("laptop")).start()
    yield daemon
    daemon.stop()


def test_the_same_user_needs_no_key(laptop: LaptopDaemon) -> None:
    for command in (["ls"], ["gpus"], ["ls", "--url", f"http://localhost:{laptop.port}"]):
        result = laptop.dpd(*command)
        assert result.returncode == EXIT_OK, (command, result.stderr)
    path = local_key_path(laptop.state_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert KEY_SHAPE.fullmatch(key)


def test_only_the_local_daemons_address_gets_the_key(
    laptop: LaptopDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HOME", "XDG_STATE_HOME", "DPD_HTTP_PORT"):
        monkeypatch.setenv(name, laptop.env[name])
    monkeypatch.delenv("DPD_CONFIG", raising=False)
    key = local_key_path(laptop.state_dir).read_text().strip()
    assert find_local_key(laptop.url) == key
    assert find_local_key(f"http://[::1]:{laptop.port}") == key
    assert find_local_key(f"http://127.0.0.1:{laptop.port + 1}") is None  # another port
    assert find_local_key(f"http://192.0.2.7:{laptop.port}") is None  # another machine
    assert find_local_key(f"http://dpd.example:{laptop.port}") is None
    assert find_local_key("not a url") is None


def test_a_wrong_key_gets_a_401_with_what_to_do(laptop: LaptopDaemon) -> None:
    result = laptop.dpd("ls", DPD_API_KEY="sk_" + "x" * 43)
    assert result.returncode == EXIT_FAILURE
    assert "error 401" in result.stderr
    for advice in ("dpd keys create --permission", "DPD_API_KEY", "--key"):
        assert advice in result.stderr, result.stderr


def test_a_key_without_the_permission_gets_a_403_with_what_to_do(laptop: LaptopDaemon) -> None:
    created = laptop.dpd("keys", "create", "--permission", "preprocessing")
    assert created.returncode == EXIT_OK, created.stderr
    result = laptop.dpd("stop", "no-such-task", "--key", created.stdout.strip())
    assert result.returncode == EXIT_FAILURE and "error 403" in result.stderr
    assert "dpd keys create --permission training" in result.stderr, result.stderr
    assert "--key" in result.stderr and "DPD_API_KEY" in result.stderr


def test_remote_addresses_get_no_key_and_a_hint(laptop: LaptopDaemon, tmp_path: Path) -> None:
    """Another daemon on this machine stands for a remote one: the local key is not sent."""
    other = LaptopDaemon(tmp_path).start()
    try:
        result = laptop.dpd("ls", "--url", other.url)
        assert result.returncode == EXIT_FAILURE and "error 401" in result.stderr
        assert "no API key was sent" in result.stderr
        assert "dpd keys create --permission" in result.stderr
    finally:
        other.stop()


def test_the_daemon_repairs_the_file(tmp_path: Path) -> None:
    key = ensure_local_key(tmp_path)
    path = local_key_path(tmp_path)
    path.chmod(0o644)
    assert ensure_local_key(tmp_path) == key  # kept, and private again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("not a key\n")
    fresh = ensure_local_key(tmp_path)
    assert fresh != key and KEY_SHAPE.fullmatch(fresh)
    path.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(key + "\n")
    path.symlink_to(elsewhere)  # never followed: replaced by a file of its own
    assert ensure_local_key(tmp_path) != key
    assert not path.is_symlink() and elsewhere.read_text() == key + "\n"


def test_an_unreadable_key_file_is_explained() -> None:
    who = Credentials("http://127.0.0.1:5000", None, "none",
                      LocalKey(Path("/var/lib/dpd/local.key"), None, unreadable=True))  # fmt: skip
    hint = auth_hint(401, "missing API key", who) or ""
    assert "/var/lib/dpd/local.key" in hint and "adduser $USER dpd" in hint
    assert "dpd keys create --permission" in hint
    assert auth_hint(404, "no such task", who) is None


def test_someone_who_cannot_read_the_configuration_is_told_about_the_group() -> None:
    """Outside group dpd even /etc/dpd/dpd.toml is unreadable: no path is known, yet the
    hint for a local address names the group; for a remote one it does not."""
    local = Credentials("http://127.0.0.1:5000", None, "none", LocalKey(None))
    assert "adduser $USER dpd" in (auth_hint(401, "missing API key", local) or "")
    remote = Credentials("http://192.0.2.1:5000", None, "none", LocalKey(None))
    hint = auth_hint(401, "missing API key", remote) or ""
    assert "adduser" not in hint and "dpd keys create --permission" in hint


def test_an_unreadable_default_configuration_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/dpd is 0750 root:dpd: for a non-member even looking at /etc/dpd/dpd.toml raises
    PermissionError (the install test in tests/packaging/test_deb.py meets it for real)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/etc/dpd/dpd.toml")

    monkeypatch.setattr("dpd.client.local_key.load_config", refuse)
    assert find_local_key("http://127.0.0.1:5000") is None
