"""The records a shim leaves in the job directory, as the daemon reads them: shim.json (who
runs), exit.json (how the run ended), and the launch request the daemon hands the shim.

Not trusted: their contents (a half-written or foreign file reads as absent).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from dpd.errors import InternalError
from dpd.supervisor.lease import FenceOrder
from dpd.supervisor.shim_protocol import EXIT_FILE, SHIM_FILE, JobMark


class ShimError(InternalError):
    """A launch or stop could not be carried out as the contract requires."""


class LaunchFailed(ShimError):
    default_message = "the trainer could not be launched"


class DuplicatePrevented(LaunchFailed):
    """Another trainer of the task holds its run lock (FLEET.md §10.2): nothing started."""


class RunAlreadyLaunched(ShimError):
    default_message = "this run of the job was already launched"


class StopFailed(ShimError):
    default_message = "processes of the job survived the stop"


@dataclass(frozen=True)
class LaunchSpec:
    task_id: str
    run: int
    command: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    job_dir: Path
    fence: FenceOrder | None = None  # fleet requeue mode (FLEET.md §9.4)
    run_lock: Path | None = None  # fleet mode: the task's lock in the shared output dir (§10.2)


@dataclass(frozen=True)
class ShimInfo:
    """What shim.json recorded; goes into state.json as is (``as_dict``)."""

    task_id: str
    run: int
    boot_id: str
    shim_pid: int
    shim_start_time: int
    trainer_pid: int
    trainer_pgid: int
    trainer_start_time: int
    started_at: float
    job_dir: str = ""  # where it was read from (resolved), not stored in shim.json

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mark(self) -> JobMark:
        """Pure: ``job_dir`` was resolved when shim.json was read (in a worker thread)."""
        return JobMark(self.task_id, self.job_dir)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShimInfo:
        return cls(
            task_id=str(data["task_id"]),
            run=int(data["run"]),
            boot_id=str(data.get("boot_id", "")),
            shim_pid=int(data["shim_pid"]),
            shim_start_time=int(data["shim_start_time"]),
            trainer_pid=int(data["trainer_pid"]),
            trainer_pgid=int(data["trainer_pgid"]),
            trainer_start_time=int(data.get("trainer_start_time") or -1),
            started_at=float(data["started_at"]),
            job_dir=str(data.get("job_dir", "")),
        )


@dataclass(frozen=True)
class ExitStatus:
    """How a run ended: ``returncode`` or ``signal`` (both None when the run was lost or
    never started); ``reason`` is one line for people."""

    returncode: int | None
    signal: int | None
    ended_at: float
    reason: str
    leftovers_killed: int = 0
    run: int | None = None
    fenced: bool = False  # the shim stopped the trainer: its fleet lease ran out (§9.4)
    duplicate_prevented: bool = False  # the run lock was held elsewhere: nothing started

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reattach:
    """What ``ShimLauncher.reattach`` found for a job after a daemon start.

    alive: the shim runs (``info``); exited: the run ended meanwhile (``exit``); lost: the shim
    vanished without recording an end (reboot, SIGKILL; ``exit.reason`` says which); never
    started: no shim.json for any run (the daemon stopped during a launch)."""

    kind: Literal["alive", "exited", "lost", "never_started"]
    info: ShimInfo | None = None
    exit: ExitStatus | None = None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_shim_info(job_dir: Path) -> ShimInfo | None:
    data = read_json(Path(job_dir) / SHIM_FILE)
    try:
        if data is None:
            return None
        return ShimInfo.from_dict({**data, "job_dir": os.path.realpath(job_dir)})
    except (KeyError, TypeError, ValueError):
        return None


def read_exit_status(job_dir: Path) -> ExitStatus | None:
    data = read_json(Path(job_dir) / EXIT_FILE)
    if data is None:
        return None
    return ExitStatus(
        returncode=data.get("returncode"),
        signal=data.get("signal"),
        ended_at=float(data.get("ended_at", 0.0)),
        reason=str(data.get("reason", "")),
        leftovers_killed=int(data.get("leftovers_killed", 0)),
        run=data.get("run"),
        fenced=data.get("fenced") is True,
        duplicate_prevented=data.get("duplicate_prevented") is True,
    )
