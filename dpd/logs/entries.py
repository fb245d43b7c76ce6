"""What one train.log line looks like in a logs answer, and the filters over it — pure.

Time: DeepSpeed logger lines carry the trainer host's local time without a zone (this
machine: the trainer runs here). Answers give UTC with a ``Z``; comparisons happen on the
local form, so a ``since`` parameter is converted once instead of every line. A line without
a timestamp of its own (plain prints, tqdm bars) belongs to the time of the nearest
timestamped line before it: that is the time it was written after, and the one it is shown
with.

Level filter: a minimum severity (``level=WARNING`` keeps WARNING, ERROR and CRITICAL), the
way journalctl's priority filter works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from dpd.errors import BadRequest
from dpd.trainlog.lines import LEVEL_RANK, LogLine, classify_line, split_logger, split_rank

LEVELS: Final = tuple(LEVEL_RANK)
TYPES: Final = ("train", "eval", "system", "all")
# Bytes of a line looked at to find its logger timestamp ("[2025-02-12 07:00:00,101] [INFO]").
STAMP_PREFIX_BYTES: Final = 160
_VALUE_AFTER: Final = re.compile(r"\s*[:=]\s*[^\s,;|]+")


@dataclass(frozen=True)
class LineFilter:
    """Which lines an answer keeps: a minimum level and a type (None: any)."""

    min_level: str | None = None
    type: str | None = None

    @property
    def keeps_everything(self) -> bool:
        return self.min_level is None and self.type is None

    def keeps(self, line: LogLine) -> bool:
        return self._keeps(line.level, line.type)

    def keeps_entry(self, entry: dict[str, Any]) -> bool:
        return self._keeps(str(entry.get("level")), str(entry.get("type")))

    def _keeps(self, level: str, type_: str) -> bool:
        if self.type is not None and type_ != self.type:
            return False
        if self.min_level is None:
            return True
        return LEVEL_RANK.get(level, 20) >= LEVEL_RANK[self.min_level]


def make_filter(level: str | None, type_: str | None) -> LineFilter:
    """From query parameters (already checked against LEVELS and TYPES)."""
    return LineFilter(min_level=level, type=None if type_ in (None, "all") else type_)


def display_text(raw: bytes) -> str:
    """A physical line as people see it: a run of tqdm "\\r" redraws is its last state."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r")
    if "\r" not in text:
        return text
    states = [state for state in text.split("\r") if state.strip()]
    return states[-1] if states else ""


def line_stamp(raw: bytes) -> str | None:
    """The local timestamp of a DeepSpeed logger line (``2025-02-12T07:00:00.101``), else
    None. Cheap enough for every line a bisection or a look-back touches."""
    if raw[:1] != b"[":
        return None
    _, body = split_rank(raw[:STAMP_PREFIX_BYTES].decode("utf-8", errors="replace"))
    logged = split_logger(body)
    return logged.timestamp if logged else None


def classify(text: str) -> LogLine:
    return classify_line(text)


def utc_iso(local_stamp: str | None) -> str | None:
    """``2025-02-12T07:00:00.101`` (local) -> ``2025-02-12T06:00:00.101Z`` (UTC)."""
    if local_stamp is None:
        return None
    try:
        moment = datetime.fromisoformat(local_stamp).astimezone(UTC)
    except ValueError:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(name: str, text: str | None) -> str | None:
    """A time query parameter as the local stamp form lines are compared in.

    ISO 8601 with ``Z`` or an offset, a zone-less ISO time (taken as UTC, like every time
    dpd answers with), or Unix seconds."""
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    try:
        if re.fullmatch(r"\d+(\.\d+)?", text):
            moment = datetime.fromtimestamp(float(text), UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise BadRequest(
            f"query parameter {name!r} must be an ISO 8601 time, got {text!r}"
        ) from None
    local = moment.astimezone().replace(tzinfo=None)
    return local.isoformat(timespec="milliseconds")


def entry(line: LogLine, stamp: str | None, line_number: int) -> dict[str, Any]:
    """One line of a /logs answer (api.md §5.1) plus its line number."""
    return {
        "timestamp": utc_iso(line.timestamp or stamp),
        "level": line.level,
        "type": line.type,
        "message": line.message,
        "epoch": line.epoch,
        "step": line.step,
        "line_number": line_number,
    }


def search_hit(line: LogLine, stamp: str | None, line_number: int, matched: str) -> dict[str, Any]:
    """One result of /logs/search (api.md §5.3)."""
    return {
        "timestamp": utc_iso(line.timestamp or stamp),
        "level": line.level,
        "type": line.type,
        "message": line.message,
        "epoch": line.epoch,
        "step": line.step,
        "line_number": line_number,
        "matched_text": matched,
    }


def matched_text(text: str, keyword: str, ignore_case: bool) -> str | None:
    """The keyword as it appears in the line, with the value that follows it when there is
    one (``Loss`` in ``... Loss: 0.456 - LR`` -> ``Loss: 0.456``); None if absent."""
    haystack, needle = (text.lower(), keyword.lower()) if ignore_case else (text, keyword)
    at = haystack.find(needle)
    if at < 0:
        return None
    end = at + len(keyword)
    value = _VALUE_AFTER.match(text, end)
    return text[at : value.end() if value else end]


def live_entry(text: str, event_timestamp: float | None) -> dict[str, Any]:
    """A line of a live log event: its own time, else the time the daemon read it."""
    line = classify_line(text)
    stamp = utc_iso(line.timestamp)
    if stamp is None and event_timestamp is not None:
        moment = datetime.fromtimestamp(event_timestamp, UTC)
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return {
        "timestamp": stamp,
        "level": line.level,
        "type": line.type,
        "message": line.message,
        "epoch": line.epoch,
        "step": line.step,
    }
