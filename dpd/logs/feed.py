"""One task's events in ``seq`` order, recorded ones first and then live ones, with no gap
and no duplicate — what the SSE and WebSocket streams send.

The seam between replay and live is closed by order of operations: subscribe to the bus
first, then read events.jsonl after the client's cursor, then take live events, skipping
those at or below the last one sent. The bus writes an event to disk before it hands it to
subscribers, so any event missing from the replay arrives live. A live event further ahead
than the next ``seq`` (this subscriber's queue overflowed, or the event was still being
written during the replay) is filled in from disk.

Owns its bus subscription: ``close()`` (or leaving the ``with`` block) drops it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

from dpd.events.bus import EventBus, Subscription
from dpd.spool.store import JobStore

Event = dict[str, Any]
TERMINAL: Final = frozenset({"completed", "failed", "stopped"})


class Finished:
    """Returned by ``TaskFeed.next`` once the task has ended and everything was sent."""


FINISHED: Final = Finished()


class TaskFeed:
    """``after_seq``: the last seq the client has (None: only what happens from now)."""

    def __init__(self, store: JobStore, bus: EventBus, task_id: str, after_seq: int | None):
        self.store = store
        self.bus = bus
        self.task_id = task_id
        self.cursor = after_seq if after_seq is not None else 0
        self._from_now = after_seq is None
        self._backlog: deque[Event] = deque()
        self._subscription: Subscription | None = None
        self._replayed = False
        self._finished = False

    def __enter__(self) -> TaskFeed:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        task_id = self.task_id
        self._subscription = self.bus.subscribe(
            lambda e: e.get("scope", "jobs") == "jobs" and e.get("task_id") == task_id
        )
        if self._from_now:
            self.cursor = self.store.last_event_seq(task_id)

    def close(self) -> None:
        if self._subscription is not None:
            self.bus.unsubscribe(self._subscription)
            self._subscription = None

    async def next(self, timeout: float) -> Event | Finished | None:
        """The next event; None when nothing came within ``timeout`` seconds (time for a
        heartbeat); FINISHED after the task's terminal status event was returned."""
        assert self._subscription is not None, "open() the feed first"
        if not self._replayed:
            await self._replay()
        while True:
            if self._backlog:
                return self._advance(self._backlog.popleft())
            if self._finished:
                return FINISHED
            try:  # asyncio.timeout: a cancellation is never taken for a timeout
                async with asyncio.timeout(timeout):
                    event = await self._subscription.queue.get()
            except TimeoutError:
                return None
            seq = int(event["seq"])
            if seq <= self.cursor:
                continue
            if seq > self.cursor + 1:
                await self._fill_from_disk()
                continue
            return self._advance(event)

    async def _replay(self) -> None:
        self._replayed = True
        if not self._from_now:
            await self._fill_from_disk()
        state = self.store.get(self.task_id)
        if state["status"] in TERMINAL and self.store.last_event_seq(self.task_id) <= max(
            self.cursor, max((int(e["seq"]) for e in self._backlog), default=0)
        ):
            self._finished = True  # nothing more will come: end after the backlog

    async def _fill_from_disk(self) -> None:
        recorded = await asyncio.to_thread(self.store.read_events, self.task_id, self.cursor)
        known = int(self._backlog[-1]["seq"]) if self._backlog else self.cursor
        self._backlog.extend(e for e in recorded if int(e["seq"]) > known)

    def _advance(self, event: Event) -> Event:
        self.cursor = max(self.cursor, int(event["seq"]))
        if self._is_last_status(event):
            self._finished = True
        return event

    def _is_last_status(self, event: Event) -> bool:
        """A terminal status that is still the task's status (not an old run's end that a
        resume has since left behind)."""
        if event.get("type") != "status" or self._backlog:
            return False
        if (event.get("data") or {}).get("status") not in TERMINAL:
            return False
        return self.store.get(self.task_id)["status"] in TERMINAL
