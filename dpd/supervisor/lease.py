"""The fleet fence lease as the shim reads it (FLEET.md §9.4, ``node_loss = "requeue"``).

In requeue mode another host may restart a job once its owner has been gone long enough; the
owner must have stopped its trainer by then, even when its daemon is dead, paused or cut off
from NATS. The daemon writes the CLOCK_BOOTTIME at which its last successful heartbeat was
sent to a lease file; each fleet job's shim reads it every ``check`` seconds and stops its
trainer itself (save_quit, ``stop_timeout``, SIGTERM, ``term_timeout``, SIGKILL,
``kill_timeout``) once the lease is older than ``after`` seconds.

The arithmetic is pure (``expired``, ``Stages``) and driven by the caller's clock; the only
I/O is ``read``. CLOCK_BOOTTIME, not the wall clock: a clock step changes nothing, and a
suspended host finds its lease expired when it wakes.

Standard library only: the shim imports it, and its RSS is budgeted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

LEASE_FILE = "fleet/lease"  # under the daemon's state_dir


def boottime() -> float:
    """CLOCK_BOOTTIME: monotonic, and it keeps counting while the host is suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def read(path: str) -> float | None:
    """The lease (a BOOTTIME), or None when missing or unreadable: that counts as expired."""
    try:
        with open(path, encoding="ascii") as handle:
            return float(handle.read().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def expired(lease: float | None, now: float, after: float) -> bool:
    """No renewal for more than ``after`` seconds, or no readable lease at all, or one from
    the future (written on an earlier boot, whose BOOTTIME ran further)."""
    return lease is None or lease > now or now - lease > after


@dataclass(frozen=True)
class FenceOrder:
    """launch.json's ``fence``: what the shim of a requeue-mode fleet job checks and does."""

    lease: str  # the daemon's lease file
    after: float  # fence_after
    check: float  # fence_check
    stop_timeout: float  # save_quit -> SIGTERM
    term_timeout: float  # SIGTERM -> SIGKILL
    kill_timeout: float  # SIGKILL -> given up waiting
    output_dir: str  # where the run dir (and its save_quit) is

    @classmethod
    def from_dict(cls, data: Any) -> FenceOrder | None:
        if data is None:
            return None
        order = cls(
            lease=str(data["lease"]),
            after=float(data["after"]),
            check=float(data["check"]),
            stop_timeout=float(data["stop_timeout"]),
            term_timeout=float(data["term_timeout"]),
            kill_timeout=float(data["kill_timeout"]),
            output_dir=str(data.get("output_dir", "")),
        )
        if min(order.after, order.check) <= 0 or not order.lease:
            raise ValueError("launch.json's fence needs a lease file and positive times")
        return order

    def as_dict(self) -> dict[str, Any]:
        return {
            "lease": self.lease,
            "after": self.after,
            "check": self.check,
            "stop_timeout": self.stop_timeout,
            "term_timeout": self.term_timeout,
            "kill_timeout": self.kill_timeout,
            "output_dir": self.output_dir,
        }

    @property
    def deadline(self) -> float:
        """The longest the trainer outlives the last renewal: ``owner.fence.deadline_s``."""
        return self.after + self.check + self.stop_timeout + self.term_timeout + self.kill_timeout


# the staged stop's steps, in order
SAVE_QUIT = "save_quit"
TERM = "term"
KILL = "kill"
GIVEN_UP = "given_up"  # SIGKILL sent kill_timeout ago: only waiting is left


@dataclass
class Stages:
    """The staged stop of a fenced trainer, as deadlines on the caller's monotonic clock.
    ``due(now)`` names the step to take now (None: wait until ``next_at``)."""

    order: FenceOrder
    began: float
    step: str | None = None  # the last step taken

    def due(self, now: float) -> str | None:
        o = self.order
        plan = (
            (SAVE_QUIT, 0.0),
            (TERM, o.stop_timeout),
            (KILL, o.stop_timeout + o.term_timeout),
            (GIVEN_UP, o.stop_timeout + o.term_timeout + o.kill_timeout),
        )
        names = [name for name, _ in plan]
        taken = names.index(self.step) if self.step is not None else -1
        for index, (name, offset) in enumerate(plan):
            if index > taken and now >= self.began + offset:
                self.step = name
                return name
        return None

    def next_at(self) -> float | None:
        """When the next step falls due (None once every step is taken)."""
        o = self.order
        offsets = {
            None: 0.0,
            SAVE_QUIT: o.stop_timeout,
            TERM: o.stop_timeout + o.term_timeout,
            KILL: o.stop_timeout + o.term_timeout + o.kill_timeout,
        }
        offset = offsets.get(self.step)
        return None if offset is None else self.began + offset
