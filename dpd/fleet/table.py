"""An in-memory table of a fleet bucket, fed by a KV watch (FLEET.md §3.4, §9.3).

A hint, never proof: a watch reads one replica, and a watcher that was cut off while a key
and its limit marker expired resumes after them and keeps the key forever (measured, §3.4).
So the table records, for every key, the monotonic time its current revision was first seen
here — a reaper suspects a key that stopped changing and settles the suspicion with a leader
read — and it is rebuilt from scratch whenever its watcher is recreated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import nats.errors

from dpd.fleet.kv import Bucket, Entry, Operation

STOP_WAIT: Final = 2.0  # seconds for a watcher's unsubscribe

log = logging.getLogger("dpd.fleet.table")
_NOTHING = object()  # no update within the poll interval


@dataclass(frozen=True)
class TableEntry:
    entry: Entry
    seen_at: float  # monotonic time this revision was first seen here


class WatchedTable:
    """An in-memory view of a bucket fed by a KV watch (a hint, never proof, §3.4).

    ``run()`` owns the watcher: it creates it, applies updates, and when ``rebuild()`` is
    called (after a reconnect: the ordered consumer may have skipped expiries) or the
    watcher fails, it creates a new one and replaces the whole table once the new
    snapshot is complete. ``seen_at`` survives a rebuild for a key whose revision did not
    change, so a key that stopped changing keeps looking old. Retries every watcher error
    after ``retry_pause``; cancellation stops the watcher and propagates.
    """

    def __init__(
        self,
        bucket: Bucket,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str], Awaitable[None] | None] | None = None,
        retry_pause: float = 0.5,
    ) -> None:
        self.bucket = bucket
        self.clock = clock
        self.on_change = on_change
        self.retry_pause = retry_pause
        self.entries: dict[str, TableEntry] = {}
        self.revision = 0  # the newest revision applied to ``entries``
        self.ready = asyncio.Event()
        self._advanced = asyncio.Event()
        self.rebuilds = 0
        self._rebuild = asyncio.Event()

    def get(self, key: str) -> TableEntry | None:
        return self.entries.get(key)

    def rebuild(self) -> None:
        self._rebuild.set()

    async def reached(self, revision: int) -> None:
        """Wait until ``entries`` reflect the bucket as of ``revision`` at least (the caller
        bounds the wait: a watcher cut off may never get there before its rebuild)."""
        while self.revision < revision:
            self._advanced.clear()
            await self._advanced.wait()

    def _advance(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision
            self._advanced.set()

    async def run(self) -> None:
        while True:
            self._rebuild.clear()
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the watcher failed: recreate it after a pause
                log.warning("watch of %s failed (%r); recreating it", self.bucket.stream, err)
                await asyncio.sleep(self.retry_pause)

    async def _watch_once(self) -> None:
        kv = await self.bucket.js.key_value(self.bucket.spec.bucket)
        # The watcher's "initial values complete" comes from the consumer's pending count at
        # its creation, which can read 0 before a just-acknowledged write is counted (seen
        # here on an R3 stream). The snapshot is complete once it holds the stream's last
        # message as of now (the newest message is always the last of its key, so the watch
        # delivers it), or once everything up to it is gone (expired, purged).
        floor = await self._last_seq()
        watcher = await kv.watch(">")
        try:
            snapshot: dict[str, TableEntry] | None = {}
            newest = 0
            initial_done = False
            while not self._rebuild.is_set():
                try:
                    update = await watcher.updates(timeout=0.5)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    update = _NOTHING
                if update is None:
                    initial_done = True
                elif update is not _NOTHING:
                    newest = max(newest, int(update.revision or 0))
                    target = snapshot if snapshot is not None else self.entries
                    await self._apply(target, update, notify=snapshot is None)
                if snapshot is not None and initial_done and await self._complete(newest, floor):
                    self._install(snapshot)
                    self._advance(max(newest, floor))
                    snapshot = None
        finally:
            # bounded: after a server restart nats-py's unsubscribe can wait for good, and a
            # table stuck here would never be rebuilt (nor let its task be cancelled)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_WAIT):
                    await watcher.stop()  # type: ignore[no-untyped-call]
        self.rebuilds += 1

    async def _last_seq(self) -> int:
        info = await self.bucket.js.stream_info(self.bucket.stream)
        return int(info.state.last_seq or 0)

    async def _complete(self, newest: int, floor: int) -> bool:
        if newest >= floor:
            return True
        info = await self.bucket.js.stream_info(self.bucket.stream)
        return int(info.state.first_seq or 0) > floor or not info.state.messages

    def _install(self, snapshot: dict[str, TableEntry]) -> None:
        for key, new in snapshot.items():
            old = self.entries.get(key)
            if old is not None and old.entry.revision == new.entry.revision:
                snapshot[key] = old  # same revision: keep when it was first seen
        self.entries = snapshot
        self.ready.set()

    async def _apply(self, table: dict[str, TableEntry], update: Any, notify: bool) -> None:
        op = update.operation
        operation = Operation.PUT if op is None else Operation(op)
        if operation is not Operation.PUT:
            table.pop(update.key, None)
        else:
            entry = Entry(update.key, update.value or b"", int(update.revision), operation)
            old = table.get(update.key)
            if old is None or old.entry.revision != entry.revision:
                table[update.key] = TableEntry(entry, self.clock())
        if notify:
            self._advance(int(update.revision or 0))
        if notify and self.on_change is not None:
            result = self.on_change(update.key)
            if result is not None:
                await result
