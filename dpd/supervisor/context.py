"""What every run of one supervisor shares: the store and the bus, the launcher and the
clock, the GPU monitor, the registry of live runs, and the supervisor's two callbacks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpd.config import Config
from dpd.events import EmitEvent
from dpd.spool.atomic import DurabilityError
from dpd.spool.store import JobStore
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.seams import Clock, Launcher
from dpd.supervisor.wakeups import WatchTiming
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.follow import LogChanges

if TYPE_CHECKING:
    from dpd.supervisor.registry import RunRegistry


async def no_events_pending() -> None:
    """``events_recorded`` without a bus: nothing emitted waits to be written."""


@dataclass(frozen=True)
class RunContext:
    """What every run of one supervisor shares."""

    config: Config
    store: JobStore
    emit: EmitEvent
    launcher: Launcher
    monitor: GpuMonitor
    clock: Clock
    timing: WatchTiming
    log_changes: LogChanges
    line_counts: LineCounter
    registry: RunRegistry
    wake: Callable[[], None]  # the scheduler: GPUs may have freed
    give_up: Callable[[DurabilityError], None]
    # returns once the events emitted so far are durable (the bus's ``recorded``)
    events_recorded: Callable[[], Awaitable[None]] = no_events_pending
