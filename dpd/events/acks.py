"""Which events JetStream has acknowledged, per task, and the durable record of it.

``AckWindow`` (pure) turns acks that may arrive out of order into one number per task: the
highest ``seq`` such that every event up to it is acked (the watermark). Only the watermark
is kept on disk, in ``<state_dir>/nats/acked.json``, written atomically and at most every
``flush_interval`` — never one fsync per ack.

What this guarantees: an event at or below a stored watermark was acked by the stream.
What it does not: events acked after the last write are not in the file; after a crash
they are published again and the stream drops them by ``Nats-Msg-Id`` while within its
``duplicate_window`` (see nats_bridge for the consequence beyond it).

The same file keeps the muted tasks (fleet mode, FLEET.md §9.7): task → the attempt whose
events must never be published (it was superseded on another host). They are written in
the same atomic write as the watermarks, so the two never disagree on disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dpd.spool.atomic import write_json_atomic

log = logging.getLogger("dpd.nats")

ACKS_DIR = "nats"
ACKS_FILE = "acked.json"


class AckWindow:
    """Per-task watermarks of contiguous acked seqs; acks above a hole wait in a set."""

    def __init__(self, watermarks: dict[str, int] | None = None) -> None:
        self._watermarks: dict[str, int] = dict(watermarks or {})
        self._above: dict[str, set[int]] = {}
        self.changed = False

    def watermark(self, task_id: str) -> int:
        return self._watermarks.get(task_id, 0)

    def ack(self, task_id: str, seq: int) -> None:
        mark = self._watermarks.get(task_id, 0)
        if seq <= mark:
            return  # a duplicate ack of something already counted
        if seq != mark + 1:
            self._above.setdefault(task_id, set()).add(seq)
            return
        mark = seq
        waiting = self._above.get(task_id)
        while waiting and mark + 1 in waiting:
            mark += 1
            waiting.discard(mark)
        if waiting is not None and not waiting:
            del self._above[task_id]
        self._watermarks[task_id] = mark
        self.changed = True

    def skip(self, task_id: str, through: int) -> None:
        """Seqs up to ``through`` will never be published from here (a fleet task's events
        on this host go on after other hosts' seqs, FLEET.md §9.7): count them as acked."""
        mark = self._watermarks.get(task_id, 0)
        if through <= mark:
            return
        mark = through
        waiting = self._above.pop(task_id, set())
        waiting = {seq for seq in waiting if seq > mark}
        while mark + 1 in waiting:
            mark += 1
            waiting.discard(mark)
        if waiting:
            self._above[task_id] = waiting
        self._watermarks[task_id] = mark
        self.changed = True

    def preset(self, task_id: str, seq: int) -> None:
        """Count everything up to ``seq`` as done: events that must never be published
        (a muted attempt's, when a later attempt of the task starts here)."""
        self._above.pop(task_id, None)
        if seq > 0:
            self._watermarks[task_id] = seq
        else:
            self._watermarks.pop(task_id, None)
        self.changed = True

    def forget(self, task_id: str) -> None:
        self._watermarks.pop(task_id, None)
        self._above.pop(task_id, None)
        self.changed = True

    def snapshot(self) -> dict[str, int]:
        return dict(self._watermarks)


def acks_path(state_dir: Path) -> Path:
    return state_dir / ACKS_DIR / ACKS_FILE


def load_watermarks(path: Path) -> dict[str, int]:
    """The watermarks of the record (see ``load_record``)."""
    return load_record(path)[0]


def load_record(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The watermarks and the muted tasks, or nothing (first start; an unreadable file is
    logged and replaced — everything is then republished and the stream's dedup drops what
    it already holds; a fleet node's gate mutes a superseded task again)."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError) as err:
        log.error("ignoring unreadable %s (%s); republishing from the start", path, err)
        return {}, {}
    if not isinstance(raw, dict):
        return {}, {}
    return _counts(raw.get("tasks"), 1), _counts(raw.get("muted"), 0)


def _counts(section: object, least: int) -> dict[str, int]:
    if not isinstance(section, dict):
        return {}
    return {str(k): v for k, v in section.items() if isinstance(v, int) and v >= least}


def save_watermarks(
    path: Path, watermarks: dict[str, int], muted: dict[str, int] | None = None
) -> None:
    """Blocking (fsync): call from a worker thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record: dict[str, object] = {"version": 1, "tasks": watermarks}
    if muted:
        record["muted"] = muted
    write_json_atomic(path, record, 0o640)
