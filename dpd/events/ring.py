"""The recent events of every task, numbered per daemon run, for the multiplexed SSE stream.

Each entry gets the id ``<boot_id>:<n>``: ``boot_id`` is random per daemon run, ``n`` counts
up from 1. A client that reconnects with the id of the last event it saw gets exactly what
followed, as long as that is still in the ring (``capacity`` entries); an id from another
run, or one the ring has already dropped, gets ``None`` from ``after`` and the stream tells
the client to ``resync`` (refetch its REST state). Entries are encoded for the wire once and
shared by every client, so one more open stream costs a list slice per event, not an encode.

Not durable on purpose: events.jsonl is the record; this is a replay window for browsers.
Pure apart from ``wait``, which parks a client until the next ``append``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_CAPACITY: Final = 20_000
_ID: Final = re.compile(r"([0-9a-f]{1,32}):(\d{1,18})")
# SSE event names of scopes other than a training job's (whose name is its type)
SCOPE_NAMES: Final = {"preprocess": "preprocess", "models": "download"}
_ENCODE: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True)
class Entry:
    n: int
    name: str  # the SSE event name, also what ``kinds=`` filters on
    wire: bytes  # the whole SSE message: id, event and data lines

    @staticmethod
    def make(boot_id: str, n: int, event: dict[str, Any]) -> Entry:
        name = event_name(event)
        wire = f"id: {boot_id}:{n}\nevent: {name}\ndata: {_ENCODE(event)}\n\n".encode()
        return Entry(n, name, wire)


def event_name(event: dict[str, Any]) -> str:
    scope = event.get("scope", "jobs")
    return SCOPE_NAMES.get(scope, str(event.get("type")))


class EventRing:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, boot_id: str | None = None) -> None:
        self.boot_id = boot_id or secrets.token_hex(6)
        self.capacity = capacity
        self._entries: deque[Entry] = deque(maxlen=capacity)
        self._last = 0
        self._changed: asyncio.Future[None] | None = None

    @property
    def last(self) -> int:
        return self._last

    def append(self, event: dict[str, Any]) -> Entry:
        self._last += 1
        entry = Entry.make(self.boot_id, self._last, event)
        self._entries.append(entry)
        waiter, self._changed = self._changed, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return entry

    def parse_id(self, text: str | None) -> int | None:
        """The ``n`` of a Last-Event-ID from this run; None if absent, malformed or from
        another run (the client must resync)."""
        if not text:
            return None
        match = _ID.fullmatch(text.strip())
        if match is None or match.group(1) != self.boot_id:
            return None
        return int(match.group(2))

    def after(self, n: int) -> list[Entry] | None:
        """Entries after ``n``, oldest first; None when some of them were already dropped
        (or ``n`` is ahead of this run), so the client cannot be brought up to date."""
        if n > self._last:
            return None
        if n == self._last:
            return []
        first = self._entries[0].n if self._entries else self._last + 1
        if n + 1 < first:
            return None
        start = n + 1 - first
        return [self._entries[i] for i in range(start, len(self._entries))]

    async def wait(self, after: int, timeout: float) -> None:
        """Return once there is an entry after ``after``, or after ``timeout``."""
        if self._last > after:
            return
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):  # asyncio.timeout keeps a cancellation one
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._changed)
