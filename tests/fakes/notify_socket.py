"""A stand-in for systemd's end of the notify protocol: a bound AF_UNIX datagram socket.

systemd creates the socket named by ``$NOTIFY_SOCKET``, reads one datagram per
``sd_notify()`` call, splits it into newline-separated ``KEY=value`` assignments and checks
the sender's pid from ``SCM_CREDENTIALS`` (``NotifyAccess=main``). This fake does the same:
a background thread receives every datagram as it arrives, stamps it with
``time.monotonic()`` and the sender's pid, and keeps it for the test to inspect. It binds
either a filesystem path (``/run/systemd/notify`` style) or an abstract name (``@...``,
what systemd uses for per-service sockets on recent versions).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.waiting import wait_for

UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Message:
    """One datagram: its assignments in order, when it arrived, and who sent it."""

    assignments: tuple[tuple[str, str], ...]
    received: float
    sender_pid: int | None

    @property
    def fields(self) -> dict[str, str]:
        return dict(self.assignments)

    def has(self, key: str, value: str | None = None) -> bool:
        return any(k == key and (value is None or v == value) for k, v in self.assignments)


def parse_datagram(data: bytes) -> tuple[tuple[str, str], ...]:
    """Split like systemd does: one assignment per line, empty lines ignored."""
    lines = data.decode("utf-8", errors="replace").split("\n")
    return tuple(tuple(line.split("=", 1)) for line in lines if "=" in line)  # type: ignore[misc]


class NotifySocket:
    """Bind, collect in a thread, close. ``address`` is the value for ``NOTIFY_SOCKET``."""

    def __init__(self, abstract: bool = False) -> None:
        self._dir: str | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract:
            name = f"dpd-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            # A short directory: AF_UNIX paths are limited to 107 bytes.
            self._dir = tempfile.mkdtemp(prefix="dpd-ns-", dir="/tmp")
            self.address = os.path.join(self._dir, "notify")
            self.sock.bind(self.address)
        self._messages: list[Message] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="notify-socket", daemon=True)
        self.receiving = True
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            if not self.receiving:
                time.sleep(0.01)
                continue
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if not readable:
                continue
            data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(UCRED.size))
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
            message = Message(parse_datagram(data), time.monotonic(), pid)
            with self._lock:
                self._messages.append(message)

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def with_key(self, key: str, value: str | None = None) -> list[Message]:
        return [m for m in self.messages if m.has(key, value)]

    def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = 5.0
    ) -> list[Message]:
        """Wait until ``predicate(messages)`` holds; AssertionError with what came otherwise."""

        def holds() -> tuple[list[Message]] | None:
            messages = self.messages
            return (messages,) if predicate(messages) else None  # a tuple: true when empty

        (messages,) = wait_for(
            holds,
            timeout,
            interval=0.01,
            what=lambda: f"notify condition; got {[m.assignments for m in self.messages][-20:]}",
        )
        return messages

    def wait_for_key(self, key: str, value: str | None = None, timeout: float = 5.0) -> Message:
        self.wait_for(lambda ms: any(m.has(key, value) for m in ms), timeout)
        return self.with_key(key, value)[0]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
