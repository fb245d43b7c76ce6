"""How stored job state is shown through the API (api.md §3, §4) — pure.

state.json holds more than a client needs (the parser's resumable state, log offsets);
these functions pick and shape the document's fields: the detail is the allow-list of
``dpd.jobs.record.JobView``, never state.json minus what is known to be private.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dpd.jobs.record import JobView

ENDED_OR_WAITING = frozenset({"queued", "completed", "failed", "stopped"})  # in no phase

EMPTY_PROGRESS: dict[str, Any] = {
    "current_epoch": None,
    "total_epochs": None,
    "current_step": None,
    "total_steps": None,
    "epoch_progress": 0.0,
    "overall_progress": 0.0,
    "eta_seconds": None,
}


def format_duration(seconds: float | None) -> str | None:
    """``3600`` -> ``"1h 0m 0s"`` as the API document writes it."""
    if seconds is None:
        return None
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m {secs}s"


def iso_from_unix(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def progress_block(state: dict[str, Any]) -> dict[str, Any]:
    progress = dict(EMPTY_PROGRESS)
    progress.update(state.get("progress") or {})
    if state.get("config", {}).get("epochs") and progress.get("total_epochs") is None:
        progress["total_epochs"] = state["config"]["epochs"]
    if state.get("status") == "completed":
        progress["overall_progress"] = 100.0
        progress["eta_seconds"] = 0
    if "phase" in progress and state.get("status") in ENDED_OR_WAITING:
        progress["phase"] = None  # an older state.json may hold the last run's phase
    return progress


def metrics_block(state: dict[str, Any]) -> dict[str, Any]:
    metrics = state.get("metrics") or {}
    return {
        "current_loss": metrics.get("current_loss"),
        "best_loss": metrics.get("best_loss"),
        "learning_rate": metrics.get("learning_rate"),
        "grad_norm": metrics.get("grad_norm"),
        **{k: v for k, v in metrics.items() if k not in ("step_losses",)},
    }


def task_summary(state: dict[str, Any]) -> dict[str, Any]:
    """One row of /training/list."""
    progress = progress_block(state)
    return {
        "task_id": state["task_id"],
        "status": state["status"],
        "gpu_id": state.get("gpu_id"),
        "gpu_ids": state.get("gpu_ids"),
        "gpu_name": state.get("gpu_name"),
        "model_type": state.get("model_type"),
        "description": state.get("description"),
        "priority": state.get("priority", 0),
        "progress": {k: progress.get(k) for k in EMPTY_PROGRESS},
        "metrics": {
            k: (state.get("metrics") or {}).get(k)
            for k in ("current_loss", "best_loss", "learning_rate", "grad_norm")
        },
        "created_at": state.get("created_at"),
        "started_at": state.get("started_at"),
        "updated_at": state.get("updated_at"),
    }


def task_detail(state: dict[str, Any]) -> dict[str, Any]:
    """``GET /training/{id}``: the job's public record (``JobView``)."""
    detail = JobView.from_state(state).as_dict()
    detail["progress"] = progress_block(state)
    detail["metrics"] = metrics_block(state)
    return detail


def progress_view(state: dict[str, Any]) -> dict[str, Any]:
    """``GET /training/{id}/progress`` (api.md §4.1)."""
    progress = progress_block(state)
    progress["eta_formatted"] = format_duration(progress.get("eta_seconds"))
    training_time = progress.get("training_time", state.get("training_time"))
    progress["training_time"] = training_time
    progress["training_time_formatted"] = format_duration(training_time)
    metrics = state.get("metrics") or {}
    return {
        "task_id": state["task_id"],
        "status": state["status"],
        "phase": progress.get("phase"),
        "progress": progress,
        "metrics": {
            k: metrics.get(k)
            for k in (
                "current_loss",
                "best_loss",
                "learning_rate",
                "grad_norm",
                "epoch_loss",
                "best_epoch",
            )
        },
        "speed": {
            "steps_per_second": progress.get("steps_per_second"),
            "samples_per_second": progress.get("samples_per_second"),
            "time_per_step": progress.get("time_per_step"),
        },
        "updated_at": state.get("updated_at"),
    }


def stop_view(state: dict[str, Any]) -> dict[str, Any]:
    """``POST /training/stop/{id}`` (api.md §3.2)."""
    checkpoint = state.get("last_checkpoint")
    model = state.get("last_model")
    return {
        "task_id": state["task_id"],
        "status": state["status"],
        "stopped_at": state.get("stopped_at") or state.get("ended_at"),
        "checkpoint_saved": bool(checkpoint or model),
        "last_checkpoint": checkpoint,
        "last_model": model,
        "training_time": state.get("training_time"),
    }


def checkpoint_plan(state: dict[str, Any]) -> dict[str, Any]:
    """The ``checkpoints`` block of the 201 answer (api.md §3.1)."""
    config = state.get("config", {})
    every = config.get("save_every_n_epochs")
    every_steps = config.get("save_every_n_steps")
    next_save = f"epoch {every}" if every else (f"step {every_steps}" if every_steps else None)
    return {
        "save_every_n_epochs": every,
        "save_every_n_steps": every_steps,
        "last_saved": state.get("last_model"),
        "next_save": next_save,
    }
