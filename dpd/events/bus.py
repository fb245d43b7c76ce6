"""The event bus: one ordered stream of numbered events, fanned out to every outlet.

``emit`` never blocks its caller: it puts the event on a queue. The bus task numbers each
event (per task ``seq``, gapless from 1), makes it durable in the task's ``events.jsonl``
(training jobs, through the store) and only then hands it to subscribers — NATS, SSE,
WebSocket — so whatever a subscriber sees can be replayed from disk.

Progress events are coalesced per task (at most one per ``progress_interval``; the latest
wins) before they are numbered, so coalescing never leaves a gap in ``seq``.

Subscribers get a bounded queue each; one that falls behind by more than its queue loses
the overflow and is told so (``Subscription.lost`` counts it) — it can catch up from
events.jsonl by seq. A slow subscriber never slows the bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from dpd.spool.store import JobStore, event_record

log = logging.getLogger("dpd.events")

Event = dict[str, Any]
Predicate = Callable[[Event], bool]
BATCH_LIMIT = 2000


@dataclass
class Subscription:
    predicate: Predicate | None
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(maxsize=10000))
    lost: int = 0

    def offer(self, event: Event) -> None:
        if self.predicate is not None and not self.predicate(event):
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lost += 1

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()


class EventBus:
    def __init__(self, store: JobStore, node: str, progress_interval: float = 0.25) -> None:
        self.store = store
        self.node = node
        self.progress_interval = progress_interval
        self.published = 0
        # (scope, task_id, kind, data), an event already recorded by the store, or a
        # ``recorded`` marker
        self._queue: asyncio.Queue[
            tuple[str, str, str, dict[str, Any]] | Event | asyncio.Future[None]
        ] = asyncio.Queue()
        self._subscribers: list[Subscription] = []
        self._other_seq: dict[tuple[str, str], int] = {}
        self._last_progress: dict[str, float] = {}
        self._held_progress: dict[str, dict[str, Any]] = {}
        self._flush_handles: dict[str, asyncio.TimerHandle] = {}

    # ------------------------------------------------------------ producing

    def emit(self, scope: str, task_id: str, kind: str, data: dict[str, Any]) -> None:
        if scope == "jobs" and kind == "progress":
            self._coalesce_progress(task_id, data)
            return
        if scope == "jobs" and kind == "status":
            self._flush_progress(task_id)  # progress before a status change keeps its order
        self._queue.put_nowait((scope, task_id, kind, data))

    def announce(self, event: Event) -> None:
        """Fan out an event the store already numbered and persisted (a job's first
        ``queued`` status is written with the job itself)."""
        self._queue.put_nowait(dict(event, scope="jobs"))

    async def recorded(self) -> None:
        """Return once every event emitted before the call is in events.jsonl (or failed to
        be, which was logged): what claims to follow them on disk — a follower's log offset
        in state.json — may be written after this, never before. Held progress aside."""
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(marker)
        await marker

    def _coalesce_progress(self, task_id: str, data: dict[str, Any]) -> None:
        now = time.monotonic()
        due = self._last_progress.get(task_id, 0.0) + self.progress_interval
        if now >= due and task_id not in self._held_progress:
            self._last_progress[task_id] = now
            self._queue.put_nowait(("jobs", task_id, "progress", data))
            return
        self._held_progress[task_id] = data
        if task_id not in self._flush_handles:
            loop = asyncio.get_running_loop()
            self._flush_handles[task_id] = loop.call_later(
                max(0.0, due - now), self._flush_progress, task_id
            )

    def _flush_progress(self, task_id: str) -> None:
        handle = self._flush_handles.pop(task_id, None)
        if handle is not None:
            handle.cancel()
        data = self._held_progress.pop(task_id, None)
        if data is not None:
            self._last_progress[task_id] = time.monotonic()
            self._queue.put_nowait(("jobs", task_id, "progress", data))

    # ------------------------------------------------------------ consuming

    def subscribe(self, predicate: Predicate | None = None) -> Subscription:
        subscription = Subscription(predicate)
        self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    async def run(self) -> None:
        """Number, persist and fan out events until cancelled. Whatever is queued at once is
        handled as one batch: one write and one fsync per task, order kept."""
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH_LIMIT and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            markers = [item for item in batch if isinstance(item, asyncio.Future)]
            batch = [item for item in batch if not isinstance(item, asyncio.Future)]
            try:
                events = await asyncio.to_thread(self._record_batch, batch) if batch else []
            except Exception:
                log.exception("could not record a batch of %d events", len(batch))
                events = []
            for marker in markers:
                if not marker.done():
                    marker.set_result(None)
            self.published += len(events)
            for event in events:
                for subscription in list(self._subscribers):
                    subscription.offer(event)

    def _record_batch(self, batch: list[Any]) -> list[Event]:
        """Blocking (store I/O): runs in a worker thread, one batch at a time."""
        per_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for item in batch:
            if not isinstance(item, dict) and item[0] == "jobs":
                per_task.setdefault(item[1], []).append((item[2], item[3]))
        recorded: dict[str, list[Event]] = {}
        for task_id, items in per_task.items():
            try:
                recorded[task_id] = self.store.append_events(task_id, items)
            except Exception:
                log.exception("could not record %d events of %s", len(items), task_id)
                recorded[task_id] = []
        events: list[Event] = []
        for item in batch:
            if isinstance(item, dict):
                events.append(item)
            elif item[0] == "jobs":
                if recorded[item[1]]:
                    events.append(dict(recorded[item[1]].pop(0), scope="jobs"))
            else:
                events.append(self._number_other(*item))
        return events

    async def drain(self, timeout: float) -> bool:
        """Flush held progress and wait until the queue is empty (shutdown)."""
        for task_id in list(self._held_progress):
            self._flush_progress(task_id)
        deadline = time.monotonic() + timeout
        while not self._queue.empty():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _number_other(self, scope: str, task_id: str, kind: str, data: dict[str, Any]) -> Event:
        """Preprocess and model events: numbered in memory (they have no events.jsonl)."""
        key = (scope, task_id)
        seq = self._other_seq.get(key, 0) + 1
        self._other_seq[key] = seq
        return dict(event_record(self.node, task_id, seq, kind, data), scope=scope)
