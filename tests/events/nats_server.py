"""A real nats-server on 127.0.0.1 for tests: start, kill -9, start again on the same port
and store directory (JetStream file store), stop. The way nats.py's own tests run it.

The first start lets the server pick a free port itself (``-p -1``) and reads it from the
server's log: a port probed free and then handed over could be taken meanwhile by another
test's server on this machine, and a test would silently talk to that one."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tests.waiting import wait_for

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
READY = "Server is ready"
LISTENING = re.compile(r"Listening for client connections on 127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    def __init__(self, root: Path, jetstream: bool = True, args: list[str] | None = None) -> None:
        self.port = -1  # chosen by the server at the first start
        self.store_dir = root / "nats-store"
        self.log_path = root / "nats-server.log"
        self.jetstream = jetstream
        self.args = list(args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        command = [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), *self.args]
        if self.jetstream:
            command += ["-js", "-sd", str(self.store_dir)]
        ready_before = self._log().count(READY)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"nats-server exited:\n{self._log()}")
            return self._log().count(READY) > ready_before

        wait_for(ready, timeout, what=lambda: f"nats-server to start:\n{self._log()}")
        self.port = int(LISTENING.findall(self._log())[-1])
        return self

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """kill -9: no goodbye to clients, whatever the kernel held is lost."""
        self.stop(signal.SIGKILL)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
