"""systemd's notify protocol (sd_notify(3)) for ``dpd serve``, over the ``sdnotify`` package.

Why it exists: the unit is ``Type=notify`` with ``WatchdogSec=``, so systemd considers dpd
started only when it says ``READY=1`` (sent after recovery and once HTTP listens), shows its
``STATUS=`` line in ``systemctl status``, and restarts it when the ``WATCHDOG=1`` pings stop.

Guarantees:
- With ``NOTIFY_SOCKET`` unset (a laptop, the tests, a container) every call is a no-op.
- Never blocks the event loop and never raises: the socket is non-blocking, and a failed send
  (systemd gone, queue full) is logged once per kind of message and dropped.
- The watchdog ping comes from a task on the event loop, so a wedged loop stops the pings and
  systemd restarts the service (reliability.md WD1); a thread would hide the hang.
- One message is one datagram; text is flattened to one line so a status can never smuggle
  another assignment (``\\nREADY=1``) in.

Not trusted: ``WATCHDOG_USEC`` meant for another process (``WATCHDOG_PID`` names who it is for).
Children must not inherit the sockets: ``clean_child_env`` removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping

import sdnotify

log = logging.getLogger("dpd.notify")

# Inherited from systemd; a trainer seeing them could speak for dpd or think it is a service.
CHILD_ENV_NAMES = frozenset({"NOTIFY_SOCKET", "INVOCATION_ID", "JOURNAL_STREAM"})
CHILD_ENV_PREFIXES = ("WATCHDOG_", "LISTEN_")


def clean_child_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` without systemd's per-service variables, for processes dpd starts.

    ``JOURNAL_STREAM`` goes too: trainer output is redirected to train.log, and a program that
    saw it would believe its stderr is still the journal."""
    return {
        name: value
        for name, value in env.items()
        if name not in CHILD_ENV_NAMES and not name.startswith(CHILD_ENV_PREFIXES)
    }


def status_line(running: int, queued: int, nats: str | None = None) -> str:
    """The ``STATUS=`` text: what ``systemctl status dpd`` shows, e.g.
    ``2 running, 5 queued, NATS connected``; ``nats`` None when NATS is not configured."""
    parts = [f"{running} running", f"{queued} queued"]
    if nats is not None:
        parts.append(f"NATS {nats}")
    return ", ".join(parts)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Notifier:
    """Talks to the service manager through ``$NOTIFY_SOCKET`` (a path or an ``@abstract``
    name), read once, at construction, with ``WATCHDOG_USEC``/``WATCHDOG_PID``.

    ``unset_environment=True`` then removes those variables from ``os.environ`` (like
    ``sd_notify(unset_environment=1)``), so no subprocess started later inherits them."""

    def __init__(self, unset_environment: bool = False) -> None:
        self._failed: set[str] = set()
        self._watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        self._watchdog_pid = os.environ.get("WATCHDOG_PID")
        self._notifier = self._connect(os.environ.get("NOTIFY_SOCKET", ""))
        if unset_environment:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    @staticmethod
    def _connect(address: str) -> sdnotify.SystemdNotifier | None:
        if not address:
            return None
        try:
            # sdnotify reads $NOTIFY_SOCKET itself and handles the "@" abstract form.
            notifier = sdnotify.SystemdNotifier(debug=True)
        except (OSError, ValueError) as err:
            log.warning("NOTIFY_SOCKET=%s: cannot connect (%s); systemd not notified", address, err)
            return None
        notifier.socket.setblocking(False)  # a full queue drops a message, never the loop
        return notifier

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments as one datagram; True when it went out."""
        if self._notifier is None:
            return False
        message = "\n".join(_one_line(a) for a in assignments)
        kind = assignments[0].split("=", 1)[0] if assignments else ""
        try:
            self._notifier.socket.sendall(message.encode("utf-8", errors="replace"))
        except OSError as err:
            if kind not in self._failed:
                log.warning("sd_notify %s failed: %s", kind, err)
                self._failed.add(kind)
            return False
        self._failed.discard(kind)
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: recovery done, HTTP listening."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def reloading(self) -> bool:
        """Before a reload; ``MONOTONIC_USEC`` is what Type=notify-reload (systemd 253+)
        requires and older managers ignore. Follow it with ``ready()``."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time for the current start-up or shutdown step (EXTEND_TIMEOUT_USEC),
        e.g. while ``stop_jobs_on_shutdown`` waits for trainers to save and quit."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    @contextlib.contextmanager
    def reload_window(self, status: str | None = None) -> Iterator[None]:
        """``RELOADING=1`` on entry and ``READY=1`` on exit, also when the reload failed
        (the old configuration is still in force, so the service is ready)."""
        self.reloading()
        try:
            yield
        finally:
            self.ready(status)

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds from ``WATCHDOG_USEC``, or None when there is no
        watchdog for this process (notify disabled, unset, invalid, or meant for another pid)."""
        if not self.enabled:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        owner = self._watchdog_pid
        if owner is not None and owner.strip() != str(os.getpid()):
            return None
        return usec / 1_000_000 if usec > 0 else None

    async def run_watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping ``WATCHDOG=1`` every half interval until cancelled; returns at once without a
        watchdog. ``healthy`` (optional) vouches for the components the loop drives: while it
        returns False no ping is sent, so systemd restarts a daemon that runs but is stuck."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        period = interval / 2
        log.info("systemd watchdog: %.3g s, pinging every %.3g s", interval, period)
        while True:
            if healthy is None or healthy():
                self.send("WATCHDOG=1")
            else:
                log.warning("watchdog ping withheld: a component is not making progress")
            await asyncio.sleep(period)

    def close(self) -> None:
        if self._notifier is not None and self._notifier.socket is not None:
            with contextlib.suppress(OSError):
                self._notifier.socket.close()
        self._notifier = None
