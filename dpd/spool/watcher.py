"""Watching ``incoming/``: inotify events are hints, a periodic full scan is the truth.

Owns: one inotify instance on incoming/ (IN_CLOSE_WRITE, IN_MOVED_TO), a queue of names,
``workers`` ingestion tasks. A writer that renames a finished file in produces IN_MOVED_TO;
one that writes in place produces IN_CLOSE_WRITE when it closes — nothing is looked at on
IN_CREATE/IN_MODIFY, so half a file is never read because of an event. A worker takes the
next name and, with it, whatever other names are already waiting (up to ``batch_size``),
and ingests them as one batch whose jobs share their fsyncs; it never waits for more, so a
lone file is ingested at once. A name whose
ingestion is deferred (still being written) is looked at again after ``retry_delay``. The
scan at start and every ``scan_interval`` seconds catches whatever events missed (queue
overflow, files present before start).

Errors: an ingestion that raises is logged with its traceback and the names of its batch
retried on the next scan; the watcher itself only stops when cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence

from asyncinotify import Inotify, Mask

from dpd.spool.ingest import IngestResult, Outcome
from dpd.spool.layout import SpoolLayout, is_candidate

log = logging.getLogger("dpd.spool")

Ingest = Callable[[Sequence[str]], Awaitable[Sequence[IngestResult]]]
# Names one worker takes at once; each holds a few descriptors while its job is built.
BATCH_SIZE = 32


class SpoolWatcher:
    def __init__(
        self,
        layout: SpoolLayout,
        ingest: Ingest,
        *,
        workers: int = 2,
        batch_size: int = BATCH_SIZE,
        scan_interval: float = 60.0,
        retry_delay: float = 0.5,
    ) -> None:
        self.layout = layout
        self._ingest = ingest
        self._workers = workers
        self._batch_size = batch_size
        self._scan_interval = scan_interval
        self._retry_delay = retry_delay
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._pending: set[str] = set()
        self._paused = False
        self.started = asyncio.Event()

    async def run(self) -> None:
        """Watch until cancelled."""
        with Inotify() as inotify:
            inotify.add_watch(self.layout.incoming, Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.ONLYDIR)
            async with asyncio.TaskGroup() as group:
                for _ in range(self._workers):
                    group.create_task(self._work())
                group.create_task(self._scan_periodically())
                await self.scan()
                self.started.set()
                async for event in inotify:
                    if event.mask & Mask.Q_OVERFLOW:
                        log.warning("inotify queue overflowed; rescanning incoming/")
                        await self.scan()
                    elif event.name is not None:
                        self._offer(str(event.name))

    def pause(self) -> None:
        """Stop taking new files (shutdown); files stay in incoming/ for the next start."""
        self._paused = True

    async def drain(self) -> None:
        """Wait until every name taken so far has been handled."""
        while self._pending:
            await asyncio.sleep(0.01)

    async def scan(self) -> None:
        names = await asyncio.to_thread(os.listdir, self.layout.incoming)
        for name in sorted(names):
            self._offer(name)

    def _offer(self, name: str) -> None:
        if self._paused or name in self._pending or not is_candidate(name):
            return
        self._pending.add(name)
        self._queue.put_nowait(name)

    async def _work(self) -> None:
        while True:
            names = [await self._queue.get()]
            while len(names) < self._batch_size and not self._queue.empty():
                names.append(self._queue.get_nowait())
            try:
                results = await self._ingest(names)
            except Exception:
                log.exception(
                    "ingesting %s failed; it stays in incoming/ for the next scan", ", ".join(names)
                )
                self._pending.difference_update(names)
                continue
            deferred = {r.name for r in results if r.outcome is Outcome.DEFERRED}
            for name in names:
                if name in deferred and not self._paused:
                    asyncio.get_running_loop().call_later(self._retry_delay, self._retry, name)
                else:
                    self._pending.discard(name)

    def _retry(self, name: str) -> None:
        if self._paused:
            self._pending.discard(name)
        else:
            self._queue.put_nowait(name)

    async def _scan_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._scan_interval)
            await self.scan()
