"""Events produced in a worker thread, handed to the bus on the event loop in one go."""

from __future__ import annotations

from typing import Any

from dpd.events import EmitEvent


class PendingEvents:
    """Events a follower produced in a worker thread, handed to the bus on the loop in one go
    once the thread's work is done: one loop wake-up per read rather than one per event
    (``call_soon_threadsafe`` each), in the same order. Only one thread fills it at a time
    (a job's reads never overlap), and only the loop empties it, between reads."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str, str, dict[str, Any]]] = []

    def __call__(self, scope: str, task_id: str, kind: str, data: dict[str, Any]) -> None:
        self._items.append((scope, task_id, kind, data))

    def __len__(self) -> int:
        return len(self._items)

    def flush(self, emit: EmitEvent) -> None:
        items, self._items = self._items, []
        for item in items:
            emit(*item)
