"""The Debian package: packaging/deb/build.sh builds it, its contents and maintainer scripts
are what the contract says, lintian finds no error, and (slow) its whole life cycle in an
isolated Debian 12 root made by debootstrap: install with apt, a working ``dpd`` (version and
a real ``dpd serve`` answering /healthz as user dpd), the user, the directories and their
modes, the enabled unit; reinstall is idempotent; remove keeps configuration and data; purge
removes configuration and state but never training outputs. Nothing on this machine changes.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import dpd
from tests.packaging.conftest import DEB, TMPFILES, tmpfiles_entries

NETWORK_TROUBLE = ("No matching distribution", "Could not find a version", "unreachable")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(DEB / "build.sh"), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0 and any(s in result.stderr for s in NETWORK_TROUBLE):
        pytest.skip(f"the package index is unreachable: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == out / f"dpd_{dpd.__version__}_all.deb"
    return path


@pytest.fixture(scope="module")
def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    listing = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(listing)) as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers()}


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_contents(members: dict[str, tarfile.TarInfo]) -> None:
    expected = {
        "usr/bin/dpd": 0o755,
        "lib/systemd/system/dpd.service": 0o644,
        "usr/lib/sysusers.d/dpd.conf": 0o644,
        "usr/lib/tmpfiles.d/dpd.conf": 0o644,
        "etc/dpd/dpd.toml": 0o644,
        "usr/share/doc/dpd/copyright": 0o644,
        "usr/share/doc/dpd/changelog.gz": 0o644,
        "usr/share/doc/dpd/OPERATOR.md": 0o644,
        "usr/share/man/man1/dpd.1.gz": 0o644,
        "usr/share/bash-completion/completions/dpd": 0o644,
        "usr/share/zsh/vendor-completions/_dpd": 0o644,
        "usr/lib/dpd/dpd/__init__.py": 0o644,
        "usr/lib/dpd/dpd/notify.py": 0o644,
        "usr/lib/dpd/aiohttp/web.py": 0o644,
    }
    for name, mode in expected.items():
        assert name in members, name
        assert members[name].mode == mode, name
    for name, member in members.items():
        assert (member.uname, member.gname) == ("root", "root"), name
        assert not re.search(r"\.(so|pyd|pyc)$|__pycache__", name), f"{name} in an _all package"
        assert not member.mode & 0o002, f"{name} is world-writable"
    shipped = {n.split("/")[4] for n in members if n.startswith("usr/lib/dpd/dpd/")}
    assert shipped >= {"cli", "spool", "supervisor", "http", "config.py", "daemon.py"}


def test_shell_completion_is_generated_from_the_parser(deb: Path, tmp_path: Path) -> None:
    """The packaged scripts are exactly what shtab makes of today's parser, and bash reads
    the bash one; each knows every command (tests/test_cli_options.py checks that part)."""
    import shtab

    from dpd.cli import build_parser

    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    bash = tmp_path / "usr/share/bash-completion/completions/dpd"
    zsh = tmp_path / "usr/share/zsh/vendor-completions/_dpd"
    assert bash.read_text() == shtab.complete(build_parser(), "bash") + "\n"
    assert zsh.read_text() == shtab.complete(build_parser(), "zsh") + "\n"
    subprocess.run(["bash", "-n", str(bash)], check=True)
    loaded = subprocess.run(
        ["bash", "-c", f"source {bash} && complete -p dpd"], capture_output=True, text=True
    )
    assert loaded.returncode == 0 and "dpd" in loaded.stdout, loaded.stderr


def test_control_declares_real_dependencies(deb: Path) -> None:
    assert field(deb, "Package") == "dpd"
    assert field(deb, "Version") == dpd.__version__
    assert field(deb, "Architecture") == "all"
    depends = field(deb, "Depends")
    for package in ("python3 (>= 3.11)", "python3-yaml", "python3-psutil", "python3-sdnotify"):
        assert package in depends
    assert "ffmpeg" in field(deb, "Recommends")
    assert "nats-server" in field(deb, "Suggests")


def test_conffile_and_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--control", str(deb), str(tmp_path)], check=True)
    assert (tmp_path / "conffiles").read_text().split() == ["/etc/dpd/dpd.toml"]
    for script in ("postinst", "prerm", "postrm"):
        path = tmp_path / script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True)  # syntax
    postinst = (tmp_path / "postinst").read_text()
    assert "systemd-sysusers dpd.conf" in postinst
    assert "systemd-tmpfiles --create dpd.conf" in postinst
    assert "deb-systemd-helper enable" in postinst
    # An upgrade restarts the daemon (KillMode=process: trainings stay); it never stops it.
    assert "restart" in postinst and "stop" not in postinst
    prerm = (tmp_path / "prerm").read_text()
    on_remove = prerm[prerm.index('"$1" = "remove"') :].split("fi\n", 1)[0]
    assert "deb-systemd-invoke stop" in on_remove  # only when removed, not on upgrade
    postrm = (tmp_path / "postrm").read_text()
    purge = postrm[postrm.index('"$1" = "purge"') :]
    for state in ("/etc/dpd", "/var/lib/dpd", "/var/spool/dpd"):
        assert state in purge
    assert "/srv" not in purge.split("rm -rf", 1)[1]  # training outputs survive a purge


def test_lintian_reports_no_errors(deb: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("lintian") is None:
        pytest.skip("lintian is not installed (apt-get install lintian)")
    result = subprocess.run(["lintian", str(deb)], capture_output=True, text=True, timeout=300)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    with capsys.disabled():
        print(f"\nlintian {deb.name}: {len(tags)} tag(s) {tags}")
    assert not [t for t in tags if t.startswith("E: ")], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


# -- the life cycle in an isolated Debian 12 root ----------------------------------------------

MIRROR = os.environ.get("DPD_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def in_root(root: Path, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run in the chroot with its own /proc, in a private mount namespace (nothing leaks)."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c", script, str(root),
         *command],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def modes(root: Path, paths: list[str]) -> dict[str, tuple[int, str, str]]:
    lines = in_root(root, "stat", "-c", "%n %a %U %G", *paths).stdout.splitlines()
    return {n: (int(m, 8), u, g) for n, m, u, g in (line.split() for line in lines)}


SERVE_PROBE = """
import subprocess, sys, time, urllib.request
env = {"PATH": "/usr/bin:/bin", "DPD_HTTP_PORT": "5987", "HOME": "/var/lib/dpd"}
p = subprocess.Popen(["dpd", "serve"], env=env, user="dpd", group="dpd", extra_groups=[],
                     stderr=subprocess.PIPE)
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:5987/healthz", timeout=1) as r:
            print("healthz", r.status)
            break
    except OSError:
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            sys.exit("dpd serve failed: " + p.communicate()[1].decode()[-3000:])
        time.sleep(0.1)
with urllib.request.urlopen("http://127.0.0.1:5987/", timeout=5) as r:
    page = r.read().decode()
    print("dashboard", r.status, "script-src 'self'" in r.headers["Content-Security-Policy"])
script = page.split('type="module" src="', 1)[1].split('"', 1)[0]
with urllib.request.urlopen("http://127.0.0.1:5987" + script, timeout=5) as r:
    print("dashboard script", r.status, r.headers["Content-Type"].split(";")[0])
def cli(user, groups):
    r = subprocess.run(["dpd", "gpus"], env=dict(env, DPD_URL="http://127.0.0.1:5987"),
                       user=user, group=user, extra_groups=groups, capture_output=True, text=True)
    return r.returncode, r.stderr.replace("\\n", " ")
print("member", *cli("alice", ["dpd"]))
print("outsider", *cli("bob", []))
p.terminate()
print("exit", p.wait(60))
"""


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the install test needs root (chroot, mount namespaces)")
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install debootstrap)")
    root = tmp_path_factory.mktemp("debian-root")
    root.chmod(0o755)  # it becomes "/", which user dpd must traverse
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"debootstrap from {MIRROR} failed: {result.stdout[-500:]}")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(900)
def test_install_reinstall_remove_purge_in_a_debootstrap_root(deb: Path, debian_root: Path) -> None:
    root = debian_root
    shutil.copy(deb, root / "tmp" / deb.name)
    in_root(root, "apt-get", "update", "-qq")
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", f"/tmp/{deb.name}"]
    in_root(root, *install)

    assert in_root(root, "dpd", "--version").stdout.strip() == f"dpd {dpd.__version__}"
    user = in_root(root, "getent", "passwd", "dpd").stdout.strip().split(":")
    assert user[5:] == ["/var/lib/dpd", "/usr/sbin/nologin"] and int(user[2]) < 1000
    assert in_root(root, "getent", "group", "dpd").stdout.startswith("dpd:x:")
    expected = tmpfiles_entries(TMPFILES.read_text())
    found = modes(root, sorted(expected))
    assert found == {path: (mode, "dpd", "dpd") for path, (_, mode, _, _) in expected.items()}
    assert modes(root, ["/etc/dpd", "/etc/dpd/dpd.toml"]) == {
        "/etc/dpd": (0o750, "root", "dpd"),
        "/etc/dpd/dpd.toml": (0o640, "root", "dpd"),
    }
    wants = root / "etc/systemd/system/multi-user.target.wants/dpd.service"
    assert os.readlink(wants) == "/lib/systemd/system/dpd.service"  # enabled
    for unit_file in ("lib/systemd/system/dpd.service", "usr/lib/sysusers.d/dpd.conf",
                      "usr/lib/tmpfiles.d/dpd.conf"):  # fmt: skip
        assert (root / unit_file).is_file(), unit_file
    for person, groups in (("alice", ["-G", "dpd"]), ("bob", [])):
        in_root(root, "useradd", "--no-create-home", "--user-group", *groups, person)
    probe = in_root(root, "python3", "-c", SERVE_PROBE)
    assert "healthz 200" in probe.stdout and "exit 0" in probe.stdout, probe.stdout
    # the installed package serves the dashboard: its page under the strict policy, its code
    assert "dashboard 200 True" in probe.stdout, probe.stdout
    assert "dashboard script 200 text/javascript" in probe.stdout, probe.stdout
    # The local admin key: group dpd may read it, so a member's first command needs no key;
    # anyone else gets 401 and is told how to get in.
    assert modes(root, ["/var/lib/dpd/local.key"]) == {
        "/var/lib/dpd/local.key": (0o640, "dpd", "dpd")
    }
    assert "member 0" in probe.stdout, probe.stdout
    assert "outsider 1" in probe.stdout and "adduser $USER dpd" in probe.stdout, probe.stdout

    # postinst is idempotent: a reinstall leaves the same user, modes and unit.
    in_root(root, "dpkg", "-i", f"/tmp/{deb.name}")
    assert in_root(root, "getent", "passwd", "dpd").stdout.strip().split(":") == user
    assert modes(root, sorted(expected)) == found

    output = root / "srv/dpd/training_runs/job-1/epoch1/adapter_model.safetensors"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"weights")
    (root / "etc/dpd/dpd.toml").write_text((root / "etc/dpd/dpd.toml").read_text() + "\n# mine\n")

    in_root(root, "dpkg", "--remove", "dpd")
    assert not (root / "usr/bin/dpd").exists()
    assert not (root / "lib/systemd/system/dpd.service").exists()
    assert (root / "etc/dpd/dpd.toml").read_text().endswith("# mine\n")  # configuration kept
    assert (root / "var/spool/dpd/incoming").is_dir() and (root / "var/lib/dpd").is_dir()
    assert not (root / "usr/lib/dpd").exists()  # no bytecode left behind

    in_root(root, "dpkg", "--purge", "dpd")
    for gone in ("etc/dpd", "var/lib/dpd", "var/spool/dpd", "var/cache/dpd", "var/log/dpd"):
        assert not (root / gone).exists(), gone
    assert output.read_bytes() == b"weights"  # training outputs survive a purge
    assert in_root(root, "dpkg-statoverride", "--list", check=False).stdout.strip() == ""
