"""The two faces of a job's state.json, as typed records — pure.

``JobView`` is the public record: exactly the fields a client may see (``GET /training/{id}``
is built from it), an allow-list, so a field added to state.json for the daemon's own use
never leaks. ``RunRecovery`` is the private record a restarted daemon continues a run from
(where the tracked output stands, the parser's and the tracker's state as of there); it is
never shown.

Reading stays compatible: a state.json written by an older dpd loads (absent fields are
``None``, or absent from the view as they were from the answer).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class JobView:
    task_id: str
    status: str
    model_type: str | None = None
    description: str | None = None
    priority: int | None = None
    required_gpus: int | None = None
    gpu_id: int | None = None
    gpu_ids: list[int] | None = None
    gpu_name: str | None = None
    master_port: int | None = None
    config: dict[str, Any] | None = None
    dataset: Any = None
    output_dir: str | None = None
    logs_path: str | None = None
    run: int | None = None
    run_dir: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    started_at: str | None = None
    run_started_at: str | None = None
    ended_at: str | None = None
    stopped_at: str | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    checkpoints: list[Any] | None = None
    last_model: str | None = None
    last_checkpoint: str | None = None
    training_time: float | None = None
    error: dict[str, Any] | None = None
    # the public fields state.json held: the answer names those, as it always did
    present: frozenset[str] = frozenset()

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> JobView:
        found = {name: state[name] for name in PUBLIC_FIELDS if name in state}
        return cls(**found, present=frozenset(found))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PUBLIC_FIELDS if name in self.present}


PUBLIC_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(JobView) if f.name != "present")


@dataclass(frozen=True)
class RunRecovery:
    """What the daemon needs to go on following a run after a restart."""

    run: int = 0
    log_offset: int = 0  # the byte of train.log the tracked progress stands at
    run_log_start: int = 0  # where this run's output starts (a resumed run appends)
    output_state: dict[str, Any] | None = None  # parser and follower, as of log_offset
    progress_state: dict[str, Any] | None = None  # the tracker's numbers the API does not show
    progress: dict[str, Any] | None = None  # ...and those it does, kept once (public)
    metrics: dict[str, Any] | None = None
    resume_run: str | None = None  # the run directory the next launch resumes

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunRecovery:
        return cls(
            run=int(state.get("run") or 0),
            log_offset=int(state.get("log_offset") or 0),
            run_log_start=int(state.get("run_log_start") or 0),
            output_state=state.get("output_state") or None,
            progress_state=state.get("progress_state") or None,
            progress=state.get("progress") or None,
            metrics=state.get("metrics") or None,
            resume_run=state.get("resume_run") or None,
        )


PRIVATE_FIELDS: frozenset[str] = frozenset(
    {f.name for f in fields(RunRecovery)} - {"run", "progress", "metrics"}
    | {"schema_version", "submitted_seq"}
)
