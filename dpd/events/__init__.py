"""One event stream for every outlet (events.jsonl, NATS, SSE, WebSocket): DESIGN §5."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# emit(scope, task_id, kind, data): announce an event about one task. ``scope`` is "jobs",
# "preprocess" or "models"; the subject becomes <prefix>.<scope>.<task_id>.<kind>
# ("models" events are <prefix>.models.<download_id>.progress). Never blocks; the bus
# numbers the events per task (seq) and hands them to every outlet.
EmitEvent = Callable[[str, str, str, dict[str, Any]], None]


def discard_event(scope: str, task_id: str, kind: str, data: dict[str, Any]) -> None:
    """An EmitEvent for components running without a bus (tests of one component)."""
