"""The GPU monitor: the latest inventory snapshot, refreshed every ``monitor_interval``.

Owns: one polling loop (``run``) and the inventory it polls; ``close()`` releases NVML.
Each poll runs ``inventory.snapshot()`` in a worker thread, never on the event loop. Nothing
escapes the loop: an exception from the inventory marks every known GPU ``unknown`` with the
error text, and a poll that hangs (NVML can block on a sick GPU) is given up after
``snapshot_timeout`` with the same effect — the hung call is not started again until it
returns. Problems are logged once when they appear and once when they clear, not every poll.
Listeners (``add_listener``) get every snapshot; one that raises is logged and kept.
Cancellation stops the loop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from dpd.supervisor.gpus import GpuInfo, GpuInventory, unknown_gpu

log = logging.getLogger("dpd.gpus")

SnapshotListener = Callable[[list[GpuInfo]], None]
DEFAULT_SNAPSHOT_TIMEOUT = 10.0
MIN_INTERVAL = 0.05


class GpuMonitor:
    def __init__(
        self,
        inventory: GpuInventory,
        interval: float,
        on_snapshot: list[SnapshotListener] | None = None,
        snapshot_timeout: float = DEFAULT_SNAPSHOT_TIMEOUT,
    ) -> None:
        self.inventory = inventory
        self.interval = max(MIN_INTERVAL, interval)
        self.snapshot_timeout = snapshot_timeout
        self.latest: list[GpuInfo] = []
        self.updated_at: float | None = None  # unix time of the latest snapshot
        self.polls = 0
        self._listeners: list[SnapshotListener] = list(on_snapshot or [])
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[list[GpuInfo]] | None = None
        self._problems: dict[int | None, str] = {}  # gpu_id (None: the whole inventory)

    @property
    def backend(self) -> str:
        return self.inventory.backend

    def add_listener(self, listener: SnapshotListener) -> None:
        self._listeners.append(listener)

    def set_interval(self, seconds: float) -> None:
        """Apply a reloaded ``monitor_interval`` from the next wait on."""
        self.interval = max(MIN_INTERVAL, seconds)
        self._wake.set()

    async def run(self) -> None:
        """Poll every ``interval`` seconds until cancelled."""
        while True:
            await self.poll_now()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):  # asyncio.timeout keeps a cancellation one
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()

    async def poll_now(self) -> list[GpuInfo]:
        """Take a snapshot now (also what ``run`` does each interval) and return it."""
        async with self._lock:
            snapshot, failure = await self._snapshot()
            self.latest = snapshot
            self.updated_at = time.time()
            self.polls += 1
        self._log_changes(snapshot, failure)
        self._notify(snapshot)
        return snapshot

    async def close(self) -> None:
        await asyncio.to_thread(self.inventory.close)

    async def _snapshot(self) -> tuple[list[GpuInfo], str | None]:
        """The snapshot, and what went wrong with the inventory as a whole (if anything)."""
        if self._pending is None or self._pending.done():
            self._pending = asyncio.ensure_future(asyncio.to_thread(self.inventory.snapshot))
            self._pending.add_done_callback(_consume_result)
        pending = self._pending
        done, _ = await asyncio.wait({pending}, timeout=self.snapshot_timeout)
        if not done:
            return self._all_unknown(f"GPU query gave no answer in {self.snapshot_timeout:g}s")
        error = pending.exception()
        if error is not None:
            return self._all_unknown(f"GPU query failed: {error!r}")
        return pending.result(), None

    def _all_unknown(self, error: str) -> tuple[list[GpuInfo], str]:
        gpus = [unknown_gpu(g.gpu_id, g.name, g.memory_total, error) for g in self.latest]
        return gpus, error

    def _log_changes(self, snapshot: list[GpuInfo], failure: str | None) -> None:
        problems: dict[int | None, str] = {
            g.gpu_id: g.error for g in snapshot if g.error is not None
        }
        if failure is not None:
            problems = {None: failure}  # one line for the whole inventory, not one per GPU
        for gpu_id, error in problems.items():
            if self._problems.get(gpu_id) != error:
                log.warning("%s unknown: %s", _label(gpu_id), error)
        for gpu_id in self._problems.keys() - problems.keys():
            log.info("%s answers again", _label(gpu_id))
        self._problems = dict(problems)

    def _notify(self, snapshot: list[GpuInfo]) -> None:
        for listener in list(self._listeners):
            try:
                listener(snapshot)
            except Exception:
                log.exception("GPU snapshot listener %r failed", listener)


def _label(gpu_id: int | None) -> str:
    return "every GPU" if gpu_id is None else f"GPU {gpu_id}"


def _consume_result(future: asyncio.Future[list[GpuInfo]]) -> None:
    """Fetch the outcome of a poll nobody waits for any more (it outlived its timeout, or
    the monitor was cancelled), so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()
