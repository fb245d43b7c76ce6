"""What the daemon and the shim agree on: the job directory's file names, the markers a
job's processes carry in their environment, and the launch request (launch.json).

Standard library plus ``proctree`` only: the shim imports it, and its RSS is budgeted.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dpd.supervisor import proctree
from dpd.supervisor.lease import FenceOrder

LAUNCH_FILE = "launch.json"
SHIM_FILE = "shim.json"
EXIT_FILE = "exit.json"
LOCK_FILE = "shim.lock"
SHIM_LOG = "shim.log"
MARKER = "DPD_TASK_ID"  # the job's task id, for people looking at a process
JOB_MARKER = "DPD_JOB_DIR"  # its job directory: what dpd recognises the job's processes by


@dataclass(frozen=True)
class Launch:
    """launch.json: everything the shim needs, so it never talks to the daemon."""

    task_id: str
    run: int
    command: list[str]
    cwd: str
    env: dict[str, str]
    log_path: str
    orphan_grace: float = 5.0
    term_grace: float = 5.0
    fence: FenceOrder | None = None  # fleet requeue mode: stop the trainer on a stale lease
    run_lock: str = ""  # fleet mode: flock'ed for the trainer's life (FLEET.md §10.2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Launch:
        launch = cls(
            task_id=str(data["task_id"]),
            run=int(data["run"]),
            command=[str(part) for part in data["command"]],
            cwd=str(data["cwd"]),
            env={str(key): str(value) for key, value in dict(data["env"]).items()},
            log_path=str(data["log_path"]),
            orphan_grace=float(data.get("orphan_grace", 5.0)),
            term_grace=float(data.get("term_grace", 5.0)),
            fence=FenceOrder.from_dict(data.get("fence")),
            run_lock=str(data.get("run_lock") or ""),
        )
        if not launch.command or not launch.task_id:
            raise ValueError("launch.json needs a command and a task_id")
        return launch

    @property
    def mark(self) -> JobMark:
        """The markers the trainer is started with (launch.json's environment)."""
        return JobMark(self.task_id, self.env.get(JOB_MARKER, ""))


@dataclass(frozen=True)
class JobMark:
    """How the processes of one job are known on this machine: the trainer's environment
    carries both markers and every descendant inherits them (setsid'ed strays included).
    The job directory is unique on the machine; a task id is not (another dpd, a demo or a
    test may run the same id at the same time), so it counts alone only for a process
    without a directory marker (started by an older dpd)."""

    task_id: str
    job_dir: str  # as the trainer's environment has it; "" if not known: the task id decides

    @classmethod
    def of(cls, task_id: str, job_dir: str | os.PathLike[str]) -> JobMark:
        """Resolves ``job_dir`` (file-system calls): call it in a worker thread, not on the loop."""
        return cls(task_id, os.path.realpath(job_dir) if os.fspath(job_dir) else "")

    def env(self) -> dict[str, str]:
        return {MARKER: self.task_id, JOB_MARKER: self.job_dir}

    def carried_by(self, pid: int) -> bool:
        entries = proctree.environ(pid)
        prefix = f"{JOB_MARKER}=".encode()
        marked = next((entry for entry in entries if entry.startswith(prefix)), None)
        if marked is not None and self.job_dir:
            return marked == prefix + self.job_dir.encode()
        return f"{MARKER}={self.task_id}".encode() in entries

    def processes(self, pids: Iterable[int] | None = None) -> list[int]:
        """Live processes of the job (the calling process excluded)."""
        return proctree.processes_where(self.carried_by, pids)
