"""What wakes a run's follower: a write to its train.log (inotify, shared by all jobs), the
end of its shim (a pidfd), or time passing (a health check due, a lost event, polling where
inotify or pidfds are not to be had). One event for all of them, so waiting costs no task.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class WatchTiming:
    """How often a follower looks. ``period``: at least this between reads of a job's output
    while it prints (a chatty trainer's lines are read in batches: each read costs a thread
    hop, events, an fsync or two, and the daemon must not compete with the trainer for the
    CPU; a backlog is read without pause). ``idle_period``: polling, where inotify or a pidfd
    is not to be had. ``fallback_period``: a full look even without any event."""

    period: float = 0.25
    idle_period: float = 0.25
    fallback_period: float = 5.0


class Wakeups:
    """Why a follower task wakes: its log changed (inotify), its shim ended (a pidfd), or
    time passed. One event for all of them, so waiting costs no task of its own."""

    def __init__(self, timing: WatchTiming = WatchTiming()) -> None:
        self.timing = timing
        self.event = asyncio.Event()
        self.ended = asyncio.Event()
        self._last_pass = 0.0

    def shim_ended(self, pidfd: int) -> None:
        """The pidfd is readable: the shim has ended (level-triggered, so say it once)."""
        asyncio.get_running_loop().remove_reader(pidfd)
        self.ended.set()
        self.event.set()

    async def wait(self, read: bool, more: bool, watched: bool, health_due: float) -> bool:
        """Sleep until the next pass is due; True when that pass must look for the run's
        end (the shim ended, a fallback pass, or polling). ``more``: the last read stopped
        short of the end of the log; ``watched``: the log has an inotify watch and the shim
        a pidfd, so nothing needs polling; ``health_due``: seconds until a health check is
        due at the latest."""
        if not watched:
            await asyncio.sleep(self.timing.period if read else self.timing.idle_period)
            return True
        if more and not self.ended.is_set():  # a backlog: no write may come to say so
            await asyncio.sleep(0)
            self._last_pass = time.monotonic()
            return False
        timed_out = not await wait_event(self.event, min(self.timing.fallback_period, health_due))
        if not timed_out and not self.ended.is_set():
            # output: read it in a batch, at most one per timing.period, unless the run ends
            await wait_event(self.ended, self._last_pass + self.timing.period - time.monotonic())
        self._last_pass = time.monotonic()
        return timed_out or self.ended.is_set()


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True if ``event`` is set within ``timeout`` seconds (no task, unlike wait_for)."""
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
