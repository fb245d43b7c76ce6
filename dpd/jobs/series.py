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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


def markers(
    events: Iterable[dict[str, Any]],
    saved: Iterable[str],
    checkpoint_steps: Iterable[int],
    epoch_steps: dict[int, int],
) -> list[dict[str, Any]]:
    """Resume, save and checkpoint markers ordered by step (unknown steps last).

    ``saved``: model names (``epochN``/``stepN``); ``checkpoint_steps``: N of each
    ``global_stepN``; ``epoch_steps``: epoch -> the step it ended at (epoch-loss points)."""
    found = resume_markers(events)
    for name in saved:
        step = _saved_step(name, epoch_steps)
        found.append({"step": step, "kind": "save", "run": None, "name": name})
    for step in checkpoint_steps:
        found.append(
            {"step": step, "kind": "checkpoint", "run": None, "name": f"global_step{step}"}
        )
    return sorted(found, key=lambda m: (m["step"] is None, m["step"] or 0, m["kind"]))


def resume_markers(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    runs = 0
    step: int | None = None
    for event in events:
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "progress" and isinstance(data.get("current_step"), int):
            step = data["current_step"]
        elif kind == "status" and data.get("status") == "running":
            runs += 1
            if runs > 1:
                found.append({"step": step or 0, "kind": "resume", "run": runs,
                              "name": f"run {runs}"})  # fmt: skip
    return found


def _saved_step(name: str, epoch_steps: dict[int, int]) -> int | None:
    if name.startswith("step") and name[4:].isdigit():
        return int(name[4:])
    if name.startswith("epoch") and name[5:].isdigit():
        return epoch_steps.get(int(name[5:]))
    return None
