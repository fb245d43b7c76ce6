"""Metric series for charts, and the markers drawn on them — pure.

``thin`` cuts a series down to at most ``max_points`` buckets of consecutive points. Each
bucket becomes one point: the mean value at the bucket's last step, with the bucket's
``min`` and ``max`` so a chart can draw a band and no spike is hidden by the thinning.
Points whose value is null (NaN or Inf in the trainer's output) stay out of the statistics;
a bucket of nothing but nulls has a null value.

``markers`` finds where a job's runs begin (a resume) from its events, in event order: a
``running`` status after the first starts run n + 1 at the step the last progress event
reported; and where it saved (``epochN``/``stepN`` models) and checkpointed
(``global_stepN``), from what its output directory holds.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

# ``kind`` query value -> (record "type", record "metric") as metrics.jsonl holds them
SERIES: Final = {
    "step_loss": ("step", "loss"),
    "epoch_loss": ("epoch", "loss"),
    "eval_loss": ("eval", "loss"),
    "lr": ("step", "lr"),
    "grad_norm": ("step", "grad_norm"),
}
DEFAULT_MAX_POINTS: Final = 2000


@dataclass(frozen=True)
class Thinned:
    points: list[dict[str, Any]]
    thinned: bool
    total: int


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def plain_point(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": record.get("step"),
        "value": _finite(record.get("value")),
        "epoch": record.get("epoch"),
        "t": record.get("timestamp"),
    }


def bucket_point(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    last = records[-1]
    values = [v for r in records if (v := _finite(r.get("value"))) is not None]
    return {
        "step": last.get("step"),
        "value": sum(values) / len(values) if values else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "epoch": last.get("epoch"),
        "t": last.get("timestamp"),
    }


def thin(records: Sequence[dict[str, Any]], max_points: int) -> Thinned:
    """At most ``max_points`` points; every record lands in exactly one bucket."""
    total = len(records)
    if total <= max_points:
        return Thinned([plain_point(r) for r in records], False, total)
    points = []
    for index in range(max_points):
        start = index * total // max_points
        end = (index + 1) * total // max_points
        points.append(bucket_point(records[start:end]))
    return Thinned(points, True, total)


# ------------------------------------------------------------------ columns

NO_INT: Final = -(2**63)  # a step or epoch that is null (or not an integer)
_NAN: Final = float("nan")


def _plain_int(value: Any) -> int:
    return value if type(value) is int else NO_INT


def _value_or_nan(value: Any) -> float:
    if type(value) is float and value - value == 0.0:
        return value
    finite = _finite(value)
    return _NAN if finite is None else finite


def _int_or_none(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not NO_INT < value < 2**63:
        return NO_INT
    return value


@dataclass
class Columns:
    """One series kept as columns: 8 bytes a number, a timestamp string shared with the
    point before when equal (the trainer's points of one step share one). What ``thin``
    would answer for the records appended, with steps and epochs that are not integers
    taken as null."""

    steps: array[int] = field(default_factory=lambda: array("q"))
    epochs: array[int] = field(default_factory=lambda: array("q"))
    values: array[float] = field(default_factory=lambda: array("d"))
    stamps: list[str | None] = field(default_factory=list)
    stamp_bytes: int = 0  # what the distinct timestamp strings weigh

    def __len__(self) -> int:
        return len(self.steps)

    def extend(self, records: Sequence[dict[str, Any]]) -> None:
        """Append ``records`` (a fast path for the usual types; the rest one by one)."""
        try:
            steps = array("q", [_plain_int(r.get("step")) for r in records])
            epochs = array("q", [_plain_int(r.get("epoch")) for r in records])
        except OverflowError:  # an integer beyond 64 bits
            for record in records:
                self.append(record)
            return
        self.steps.extend(steps)
        self.epochs.extend(epochs)
        self.values.extend([_value_or_nan(r.get("value")) for r in records])
        self._add_stamps(r.get("timestamp") for r in records)

    def append(self, record: dict[str, Any]) -> None:
        self.steps.append(_int_or_none(record.get("step")))
        self.epochs.append(_int_or_none(record.get("epoch")))
        self.values.append(_value_or_nan(record.get("value")))
        self._add_stamps([record.get("timestamp")])

    def _add_stamps(self, stamps: Iterable[Any]) -> None:
        last = self.stamps[-1] if self.stamps else None
        kept = self.stamps
        for stamp in stamps:
            if stamp != last:
                last = stamp if isinstance(stamp, str) else None
                self.stamp_bytes += 0 if last is None else 49 + len(last)
            kept.append(last)

    def weight(self) -> int:
        """About how many bytes the columns hold."""
        return 32 * len(self.steps) + self.stamp_bytes

    def point(self, index: int) -> dict[str, Any]:
        value = self.values[index]
        return {
            "step": _none_if(self.steps[index]),
            "value": None if value != value else value,
            "epoch": _none_if(self.epochs[index]),
            "t": self.stamps[index],
        }

    def bucket(self, start: int, end: int) -> dict[str, Any]:
        values = [v for v in self.values[start:end] if v == v]
        last = end - 1
        return {
            "step": _none_if(self.steps[last]),
            "value": sum(values) / len(values) if values else None,
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "epoch": _none_if(self.epochs[last]),
            "t": self.stamps[last],
        }


def _none_if(number: int) -> int | None:
    return None if number == NO_INT else number


def thin_columns(columns: Columns, max_points: int) -> Thinned:
    """``thin`` of the records ``columns`` holds, same buckets and numbers."""
    total = len(columns)
    if total <= max_points:
        return Thinned([columns.point(i) for i in range(total)], False, total)
    points = [
        columns.bucket(index * total // max_points, (index + 1) * total // max_points)
        for index in range(max_points)
    ]
    return Thinned(points, True, total)


@dataclass
class ResumeFold:
    """``resume_markers`` kept up to date one event at a time (status and progress events,
    in event order)."""

    runs: int = 0
    step: int | None = None
    found: list[dict[str, Any]] = field(default_factory=list)

    def add(self, event: dict[str, Any]) -> None:
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "progress" and isinstance(data.get("current_step"), int):
            self.step = data["current_step"]
        elif kind == "status" and data.get("status") == "running":
            self.runs += 1
            if self.runs > 1:
                self.found.append({"step": self.step or 0, "kind": "resume", "run": self.runs,
                                   "name": f"run {self.runs}"})  # fmt: skip


def markers(
    events: Iterable[dict[str, Any]],
    saved: Iterable[str],
    checkpoint_steps: Iterable[int],
    epoch_steps: dict[int, int],
) -> list[dict[str, Any]]:
    """Resume, save and checkpoint markers ordered by step (unknown steps last).

    ``saved``: model names (``epochN``/``stepN``); ``checkpoint_steps``: N of each
    ``global_stepN``; ``epoch_steps``: epoch -> the step it ended at (epoch-loss points)."""
    return place_markers(resume_markers(events), saved, checkpoint_steps, epoch_steps)


def place_markers(
    resumes: Iterable[dict[str, Any]],
    saved: Iterable[str],
    checkpoint_steps: Iterable[int],
    epoch_steps: dict[int, int],
) -> list[dict[str, Any]]:
    """``markers`` with the resume markers found already (``ResumeFold``)."""
    found = [dict(m) for m in resumes]
    for name in saved:
        step = _saved_step(name, epoch_steps)
        found.append({"step": step, "kind": "save", "run": None, "name": name})
    for step in checkpoint_steps:
        found.append(
            {"step": step, "kind": "checkpoint", "run": None, "name": f"global_step{step}"}
        )
    return sorted(found, key=lambda m: (m["step"] is None, m["step"] or 0, m["kind"]))


def resume_markers(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    fold = ResumeFold()
    for event in events:
        fold.add(event)
    return fold.found


def _saved_step(name: str, epoch_steps: dict[int, int]) -> int | None:
    if name.startswith("step") and name[4:].isdigit():
        return int(name[4:])
    if name.startswith("epoch") and name[5:].isdigit():
        return epoch_steps.get(int(name[5:]))
    return None
