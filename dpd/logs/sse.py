"""The server-sent events wire format of the log stream — pure.

Every message carries an ``id:`` so a reconnecting client (``Last-Event-ID``) misses nothing
and gets nothing twice. A log event holds a batch of lines and each line is its own message
(api.md §5.2: one line object per ``data:``); the last line of event ``seq`` has the id
``<seq>``, the ones before it ``<seq>:<index>``. So ``Last-Event-ID: 12`` resumes after event
12 and ``Last-Event-ID: 12:3`` after its fourth line. Status, progress and metrics events are
named SSE events (``event: status``) whose data is the whole event record, with id ``<seq>``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from dpd.errors import BadRequest
from dpd.logs.entries import LineFilter, live_entry

KINDS: Final = ("log", "status", "progress", "metrics")
# At most 18 digits each: every id dpd hands out fits, and int() never meets a number it
# refuses to convert (more than 4300 digits) or a seq no file could hold.
_ID: Final = re.compile(r"(\d{1,18})(?::(\d{1,18}))?")


@dataclass(frozen=True)
class Cursor:
    """Where a client stands: after event ``seq``, or within it after line ``line``."""

    seq: int
    line: int | None = None

    @property
    def after_seq(self) -> int:
        """The last event the client has entirely."""
        return self.seq if self.line is None else self.seq - 1


def parse_cursor(text: str | None) -> Cursor | None:
    if text is None or text.strip() == "":
        return None
    match = _ID.fullmatch(text.strip())
    if match is None:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise BadRequest(f"Last-Event-ID must be <seq> or <seq>:<line>, got {shown!r}")
    line = match.group(2)
    return Cursor(int(match.group(1)), int(line) if line is not None else None)


def parse_kinds(text: str | None) -> frozenset[str]:
    if text is None or text.strip() == "":
        return frozenset(KINDS)
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = kinds - set(KINDS)
    if unknown or not kinds:
        raise BadRequest(f"query parameter 'kinds' takes a list of {', '.join(KINDS)}")
    return kinds


def message(data: Any, event_id: str | None = None, event: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


HEARTBEAT: Final = b": heartbeat\n\n"


def retry_hint(milliseconds: int) -> bytes:
    return f"retry: {milliseconds}\n\n".encode()


def event_messages(
    event: dict[str, Any], kinds: frozenset[str], keep: LineFilter, resume: Cursor | None = None
) -> list[bytes]:
    """The SSE messages for one bus/events.jsonl event."""
    kind = event.get("type")
    seq = int(event["seq"])
    if kind != "log":
        if kind not in kinds:
            return []
        record = {k: v for k, v in event.items() if k != "scope"}
        return [message(record, str(seq), str(kind))]
    if "log" not in kinds:
        return []
    lines = (event.get("data") or {}).get("lines") or []
    skip_through = resume.line if resume is not None and resume.seq == seq else None
    out: list[bytes] = []
    for index, text in enumerate(lines):
        if skip_through is not None and index <= skip_through:
            continue
        entry = live_entry(text, event.get("timestamp"))
        if not keep.keeps_entry(entry):
            continue
        event_id = str(seq) if index == len(lines) - 1 else f"{seq}:{index}"
        out.append(message(entry, event_id))
    return out
