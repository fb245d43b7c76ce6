"""What a run reads and writes besides its status: the launch request built from the job, its
train.log's start, and the fields recorded with its outcome. Blocking helpers (file reads,
one open), no state of their own; ``dpd.supervisor.run`` calls them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dpd.config import Config
from dpd.events import EmitEvent
from dpd.spool import layout as names
from dpd.spool.store import JobStore, StatusEvent
from dpd.supervisor import outputs
from dpd.supervisor.lease import LEASE_FILE, FenceOrder
from dpd.supervisor.shim_records import LaunchSpec
from dpd.supervisor.trainer_command import build_trainer_command, build_trainer_env


def announce(emit: EmitEvent, event: StatusEvent) -> None:
    """Hand a status change to the bus (which appends it to events.jsonl first)."""
    emit("jobs", event.task_id, "status", event.data)


def launch_spec(
    config: Config,
    store: JobStore,
    state: dict[str, Any],
    run: int,
    gpu_ids: tuple[int, ...],
    port: int,
) -> LaunchSpec:
    """The command, environment and files of run ``run`` (``ValueError``: a bad resume name)."""
    task_id = state["task_id"]
    job_dir = store.layout.job_dir(task_id)
    trainer = config.trainer
    return LaunchSpec(
        task_id=task_id,
        run=run,
        command=build_trainer_command(
            trainer.deepspeed,
            trainer.diffusion_pipe_dir,
            gpu_ids,
            port,
            job_dir / names.CONFIG_TOML,
            resume_run_name(state, store.spec(task_id).resume_from_checkpoint),
        ),
        cwd=trainer.diffusion_pipe_dir,
        env=build_trainer_env(os.environ, trainer.env),  # the launcher adds the job markers
        log_path=job_dir / names.TRAIN_LOG,
        job_dir=job_dir,
        fence=fence_order(config, state),
        run_lock=run_lock(config, state),
    )


RUN_LOCK = ".dpd-run.lock"


def run_lock(config: Config, state: dict[str, Any]) -> Path | None:
    """A fleet job's run lock in its (shared) output dir (FLEET.md §10.2); None otherwise."""
    if not config.fleet.enabled or not isinstance(state.get("fleet"), dict):
        return None
    return Path(state["output_dir"]) / RUN_LOCK if state.get("output_dir") else None


def fence_order(config: Config, state: dict[str, Any]) -> FenceOrder | None:
    """What the shim of a fleet job claimed in requeue mode checks (FLEET.md §9.4): the
    daemon's lease, and how to stop the trainer once it runs out. None otherwise."""
    fleet = config.fleet
    if not fleet.enabled or fleet.node_loss != "requeue":
        return None
    if not isinstance(state.get("fleet"), dict):
        return None
    trainer = config.trainer
    return FenceOrder(
        lease=str(config.daemon.state_dir / LEASE_FILE),
        after=fleet.fence_after,
        check=fleet.fence_check,
        stop_timeout=trainer.stop_timeout,
        term_timeout=trainer.term_timeout,
        kill_timeout=trainer.kill_timeout,
        output_dir=str(state.get("output_dir") or ""),
    )


def resume_run_name(state: dict[str, Any], requested: bool | str | None) -> str | None:
    """The run directory a launch resumes: the one a resume named, the one the job document
    names, or (``resume_from_checkpoint = true``) the newest."""
    if state.get("resume_run"):
        return str(state["resume_run"])
    if isinstance(requested, str):
        return requested
    if requested is True:
        run_dir = outputs.latest_run_dir(Path(state["output_dir"]))
        return run_dir.name if run_dir else None
    return None


def create_log(path: Path) -> int:
    """train.log's size, creating it empty if need be: it exists before the trainer starts,
    so it can be watched from the first byte (the shim appends to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def latest_run(state: dict[str, Any]) -> str | None:
    run_dir = outputs.latest_run_dir(Path(state["output_dir"]))
    return str(run_dir) if run_dir else None


def final_fields(
    state: dict[str, Any],
    error: dict[str, Any] | None,
    stopped: bool,
    run_seconds: float,
    now: str,
) -> dict[str, Any]:
    """What the outcome records beside the status: the run's models and checkpoint, its
    time, and a progress block whose phase is over (``None``: an ended job is in no phase)."""
    run_dir = outputs.latest_run_dir(Path(state["output_dir"]))
    models = outputs.saved_models(run_dir) if run_dir else []
    checkpoint = outputs.latest_checkpoint(run_dir) if run_dir else None
    training_time = float(state.get("training_time") or 0) + run_seconds
    progress = state.get("progress")
    return {
        "ended_at": now,
        "stopped_at": now if stopped else None,
        "error": error,
        "run_dir": str(run_dir) if run_dir else state.get("run_dir"),
        "checkpoints": [m.as_dict() for m in models],
        "last_model": models[-1].name if models else None,
        "last_checkpoint": checkpoint,
        "training_time": round(training_time, 1),
        "resume_run": None,
        "progress": None if progress is None else dict(progress, phase=None),
    }
