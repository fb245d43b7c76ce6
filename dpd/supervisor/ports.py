"""Master ports: each running job gets its own from ``trainer.master_port_range`` (DESIGN §6).

Two jobs on one port fail at the second one's ``init_process_group`` (EADDRINUSE), after
minutes of model loading; so a port is handed out only if no dpd job holds it and a socket can
bind it right now. The probe binds the wildcard address without SO_REUSEADDR: rank 0's store
listens on every address, and a probe that fails on anything bound to the port (any address,
or still in TIME_WAIT) errs on the side of skipping it.

Known weakness: between the probe and the trainer's bind (seconds to minutes later) another
program may take the port; the trainer then fails with a port clash that the output parser
reports. Allocation walks the range round-robin from the last port handed out, so a port just
released (whose old trainer may still be dying) is reused last.
"""

from __future__ import annotations

import errno
import logging
import socket

from dpd.errors import InsufficientResources

log = logging.getLogger("dpd.ports")


class NoFreePort(InsufficientResources):
    """Every port of the range is held by a job or bound by another program."""


def port_is_free(port: int) -> bool:
    """Whether a TCP socket can bind ``port`` on all IPv4 addresses right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError as err:
            if err.errno not in (errno.EADDRINUSE, errno.EACCES):
                log.warning("probing port %d: %s", port, err)
            return False
    return True


class PortAllocator:
    """Master ports for running jobs, ``low``..``high`` inclusive. Not thread-safe: the
    supervisor calls it from the event loop only (a probe is one bind, microseconds)."""

    def __init__(self, low: int, high: int) -> None:
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad master port range {low}-{high}")
        self.low, self.high = low, high
        self._held: dict[str, int] = {}
        self._next = low

    def allocate(self, task_id: str) -> int:
        """A port for ``task_id`` (the same one again if it already holds one)."""
        if task_id in self._held:
            return self._held[task_id]
        taken = set(self._held.values())
        size = self.high - self.low + 1
        bound = 0
        for step in range(size):
            port = self.low + (self._next - self.low + step) % size
            if port in taken:
                continue
            if not port_is_free(port):
                bound += 1
                continue
            self._held[task_id] = port
            self._next = port + 1 if port < self.high else self.low
            return port
        raise NoFreePort(
            f"no free master port in {self.low}-{self.high}: {len(taken)} held by jobs, "
            f"{bound} bound by other programs",
            {"port_range": [self.low, self.high], "held_by_jobs": len(taken), "bound": bound},
        )

    def reserve(self, task_id: str, port: int) -> None:
        """Record the port of a job found running after a restart: it holds it, whatever a
        probe says (its trainer has it bound)."""
        for other, held in self._held.items():
            if held == port and other != task_id:
                log.warning("master port %d recorded for both %s and %s", port, other, task_id)
        self._held[task_id] = port

    def release(self, task_id: str) -> None:
        self._held.pop(task_id, None)

    def holder(self, port: int) -> str | None:
        return next((task for task, held in self._held.items() if held == port), None)

    @property
    def held(self) -> dict[str, int]:
        return dict(self._held)
