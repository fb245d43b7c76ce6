"""Text for people: tables, a task's details, a progress bar, log lines — pure.

The CLI prints these; scripts use ``--json`` instead, so the layout may change between
releases while the JSON may not.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

BAR_WIDTH = 24


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; None shows as "-"."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def percent(value: Any) -> str | None:
    return f"{float(value):.1f}%" if isinstance(value, int | float) else None


def task_rows(tasks: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for task in tasks:
        progress = task.get("progress") or {}
        metrics = task.get("metrics") or {}
        rows.append(
            [task.get("task_id"), task.get("status"), progress.get("phase"),
             _gpus(task), percent(progress.get("overall_progress")),
             metrics.get("current_loss"), task.get("model_type"), task.get("created_at")]
        )  # fmt: skip
    headers = ["TASK", "STATUS", "PHASE", "GPU", "PROGRESS", "LOSS", "MODEL", "CREATED"]
    return table(headers, rows)


def _gpus(task: Mapping[str, Any]) -> str | None:
    ids = task.get("gpu_ids") or ([task["gpu_id"]] if task.get("gpu_id") is not None else [])
    return ",".join(str(i) for i in ids) or None


def task_details(task: Mapping[str, Any]) -> str:
    progress = task.get("progress") or {}
    metrics = task.get("metrics") or {}
    fields: list[tuple[str, Any]] = [
        ("task", task.get("task_id")),
        ("status", task.get("status")),
        ("phase", progress.get("phase")),
        ("model", task.get("model_type")),
        ("description", task.get("description")),
        ("gpus", _gpus(task)),
        ("progress", progress_line(progress, metrics)),
        ("best loss", metrics.get("best_loss")),
        ("created", task.get("created_at")),
        ("started", task.get("started_at")),
        ("ended", task.get("ended_at")),
        ("last checkpoint", task.get("last_checkpoint")),
        ("last model", task.get("last_model")),
        ("error", _error(task.get("error"))),
    ]
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name.ljust(width)}  {_cell(v)}" for name, v in fields if v is not None)


def _error(error: Any) -> str | None:
    if not error:
        return None
    if isinstance(error, Mapping):
        return str(error.get("message") or error.get("reason") or error)
    return str(error)


def gpu_rows(gpus: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [g.get("gpu_id"), g.get("name"), f"{g.get('memory_used')}/{g.get('memory_total')} MB",
         percent(g.get("utilization_gpu")), g.get("temperature"), g.get("status"),
         g.get("current_task")]
        for g in gpus
    ]  # fmt: skip
    return table(["GPU", "NAME", "MEMORY", "UTIL", "TEMP", "STATUS", "TASK"], rows)


def progress_line(progress: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str:
    """``[######------]  45.6%  epoch 4/10  step 150/500  loss 0.2450  ETA 1h 00m 00s``."""
    overall = progress.get("overall_progress")
    filled = int(BAR_WIDTH * min(100.0, float(overall or 0)) / 100)
    parts = [f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]", (percent(overall) or "--").rjust(6)]
    if progress.get("current_epoch") is not None:
        parts.append(f"epoch {progress['current_epoch']}/{progress.get('total_epochs') or '?'}")
    about = "~" if progress.get("total_steps_estimated") else ""  # counted from the dataset
    if progress.get("current_step") is not None:
        total = progress.get("total_steps")
        parts.append(f"step {progress['current_step']}/{f'{about}{total}' if total else '?'}")
    loss = (metrics or {}).get("current_loss")
    if isinstance(loss, int | float):
        parts.append(f"loss {loss:.4f}")
    eta = duration(progress.get("eta_seconds"))
    if eta is not None:
        parts.append(f"ETA {about}{eta}")
    return "  ".join(parts)


def log_line(entry: Mapping[str, Any]) -> str:
    stamp = entry.get("timestamp") or "-"
    return f"{stamp} [{entry.get('level', 'INFO')}] {entry.get('message', '')}"


def fit_width(line: str, columns: int) -> str:
    """``line`` cut to ``columns - 1`` characters. A line redrawn in place (``\\r``) must not
    reach the terminal's last column: the terminal would wrap it, and every redraw would
    then start a new line instead of replacing the last one."""
    limit = max(1, columns - 1)
    return line if len(line) <= limit else line[:limit]


def terminal_columns(stream: TextIO | None = None) -> int:
    """The width of the terminal ``stream`` writes to (else of standard output, ``COLUMNS``
    or 80), read at each redraw so that a resized window is followed."""
    if stream is not None:
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            pass
    return shutil.get_terminal_size().columns
