"""Reading a server-sent events stream (the WHATWG event-stream format) — pure.

``SseParser.feed(line)`` takes one decoded line at a time and returns a complete event when
a blank line ends one. Comments (heartbeats) and ``retry:`` are kept out of the events.
``last_id`` moves only when an event is complete: a connection cut inside a message must
resume before that message, not after it (``reset`` drops the partial one).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" when unnamed
    data: str
    id: str | None


@dataclass
class SseParser:
    last_id: str | None = None
    retry_ms: int | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _has_data: bool = False
    _id: str | None = None
    _has_id: bool = False

    def reset(self) -> None:
        """Forget a message cut short by a dropped connection."""
        self._event, self._data, self._has_data, self._has_id = "", [], False, False

    def feed(self, line: str) -> SseEvent | None:
        line = line.rstrip("\r\n")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id, self._has_id = value, True
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        if self._has_id:
            self.last_id = self._id
        event = None
        if self._has_data:
            event = SseEvent(self._event or "message", "\n".join(self._data), self.last_id)
        self.reset()
        return event
