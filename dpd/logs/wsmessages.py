"""WebSocket messages of ``/ws/training/{id}`` in api.md §9's format — pure.

``{"type": "progress"|"log"|"metrics"|"status", "timestamp": <unix s>, "seq": n, "data": {...}}``
(``seq`` is an addition: the event's seq, for ``since_seq`` on reconnect). A progress
message carries what api.md §9 shows — status, ``progress`` as the overall percent,
current/total epochs, current loss — plus the rest of the progress block. The status and the
loss are not in progress events; ``MessageBuilder`` keeps the latest of each from the status
and metrics events it has seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dpd.logs.entries import live_entry


@dataclass
class MessageBuilder:
    task_id: str
    status: str | None = None
    current_loss: float | None = None
    phase: str | None = None

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MessageBuilder:
        metrics = state.get("metrics") or {}
        progress = state.get("progress") or {}
        return cls(state["task_id"], state.get("status"), metrics.get("current_loss"),
                   progress.get("phase"))  # fmt: skip

    def snapshot(self, state: dict[str, Any], seq: int) -> dict[str, Any]:
        """The first message: where the task stands when the client connects."""
        return self._progress_message(dict(state.get("progress") or {}), None, seq)

    def message(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The message for one event, None for kinds the socket does not carry."""
        kind, data, seq = event.get("type"), event.get("data") or {}, event.get("seq")
        stamp = event.get("timestamp")
        if kind == "status":
            self.status = data.get("status", self.status)
            return _envelope("status", stamp, seq, {"task_id": self.task_id, **data})
        if kind == "metrics":
            if data.get("metric") == "loss" and data.get("type") == "step":
                self.current_loss = data.get("value")
            point = {k: v for k, v in data.items() if k != "offset"}
            return _envelope("metrics", stamp, seq, {"task_id": self.task_id, **point})
        if kind == "progress":
            return self._progress_message(data, stamp, seq)
        if kind == "log":
            lines = [live_entry(text, stamp) for text in data.get("lines") or []]
            return _envelope("log", stamp, seq, {"task_id": self.task_id, "lines": lines})
        return None

    def _progress_message(
        self, progress: dict[str, Any], stamp: float | None, seq: int | None
    ) -> dict[str, Any]:
        self.phase = progress.get("phase", self.phase)
        data = {
            **progress,
            "task_id": self.task_id,
            "status": self.status,
            "phase": self.phase,
            "progress": progress.get("overall_progress"),
            "current_loss": self.current_loss,
        }
        return _envelope("progress", stamp, seq, data)


def _envelope(kind: str, stamp: float | None, seq: Any, data: dict[str, Any]) -> dict[str, Any]:
    moment = stamp if isinstance(stamp, int | float) else time.time()
    return {"type": kind, "timestamp": int(moment), "seq": seq, "data": data}
