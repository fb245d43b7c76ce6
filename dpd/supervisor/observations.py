"""What the output parser reports (``dpd.supervisor.output_parser``): one small frozen record
per kind of event in diffusion-pipe's output, and the failure causes the API names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from dpd.jobs.states import Phase


@dataclass(frozen=True, slots=True)
class PhaseChanged:
    phase: Phase


@dataclass(frozen=True, slots=True)
class StepDone:
    step: int
    loss: float  # may be nan/inf, as printed
    iter_time: float
    samples_per_sec: float
    lr: float | None
    grad_norm: float | None
    epoch: int


@dataclass(frozen=True, slots=True)
class EpochStarted:
    epoch: int


@dataclass(frozen=True, slots=True)
class EpochEnded:
    epoch: int
    loss: float | None  # mean of the epoch's finite step losses (TensorBoard train/epoch_loss)
    step: int


@dataclass(frozen=True, slots=True)
class EvalStarted:
    step: int


@dataclass(frozen=True, slots=True)
class EvalLoss:
    """diffusion-pipe at the pinned commit sends eval losses to TensorBoard only; this
    exists for a trainer that prints ``eval loss: X`` (or ``<name> eval loss: X``)."""

    loss: float
    step: int
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ModelSaved:
    name: str  # "epoch3" / "step100"; the files are complete later (no tmp/, weights present)
    step: int


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    tag: str  # "global_step100"
    step: int
    run_dir: str | None  # the only place the output names the run dir


@dataclass(frozen=True, slots=True)
class GlobalBatch:
    size: int


@dataclass(frozen=True, slots=True)
class Resumed:
    epoch: int
    step: int  # the first step this launch will run (saved step + 1)


@dataclass(frozen=True, slots=True)
class TotalSteps:
    total: int
    steps_per_epoch: int | None


@dataclass(frozen=True, slots=True)
class Completed:
    pass


@dataclass(frozen=True, slots=True)
class ManualQuit:
    pass


@dataclass(frozen=True, slots=True)
class Failure:
    cause: str  # see FAILURE_CAUSES
    message: str
    lines: tuple[str, ...]  # the traceback (rank prefix removed), last lines first-to-last
    phase: Phase


Observation = (
    PhaseChanged
    | StepDone
    | EpochStarted
    | EpochEnded
    | EvalStarted
    | EvalLoss
    | ModelSaved
    | CheckpointSaved
    | GlobalBatch
    | Resumed
    | TotalSteps
    | Completed
    | ManualQuit
    | Failure
)

FAILURE_CAUSES: Final = (
    "cuda_oom",
    "port_in_use",
    "cuda_error",
    "missing_file",
    "dataset_error",
    "checkpoint_missing",
    "config_error",
    "worker_killed",
    "traceback",
)
