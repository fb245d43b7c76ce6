"""The supervisor's two seams, as small protocols: what starts and stops trainers
(``Launcher``; ``ShimLauncher`` in production, a fake in tests/fakes/) and what tells the
time (``Clock``). A run's logic depends on these, never on subprocesses or ``time`` itself,
so its edges can be tested in milliseconds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from dpd.supervisor.shim_records import ExitStatus, LaunchSpec, Reattach, ShimInfo


class Launcher(Protocol):
    """Starts, adopts and stops one job's trainer; keeps no per-job state of its own (all of
    it is in the job directory, so a restarted daemon knows what an old one knew)."""

    async def spawn(self, spec: LaunchSpec) -> ShimInfo:
        """Start run ``spec.run``; returns once the trainer runs. Raises a ``ShimError``."""
        ...

    async def stop(
        self,
        info: ShimInfo,
        graceful: bool,
        run_dir: Path | None,
        training: bool,
        timeout: float,
    ) -> ExitStatus:
        """Staged stop (save_quit, SIGTERM, SIGKILL); returns once nothing of the job lives."""
        ...

    async def reattach(self, job_dir: Path) -> Reattach:
        """What became of a job's run while no daemon watched it."""
        ...

    def read_exit(self, job_dir: Path) -> ExitStatus | None:
        """The end the shim recorded, if any (blocking: a file read)."""
        ...

    def is_alive(self, info: ShimInfo) -> bool:
        """The recorded shim still runs (blocking: a /proc read)."""
        ...

    def open_pidfd(self, info: ShimInfo) -> int | None:
        """A descriptor readable once the shim ended, or None (then the caller polls)."""
        ...


class Clock(Protocol):
    """``monotonic`` for intervals (timeouts, hang detection), ``wall`` for what is
    recorded (unix time)."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


SYSTEM_CLOCK: Clock = SystemClock()
