"""A ``Launcher`` without processes (``dpd.supervisor.seams.Launcher``): a run lives in
memory, its output is what the test appends to its train.log, and it ends when the test or
a stop says so. Gates let a test hold a spawn or a stop half-way, to interleave a request.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from dataclasses import dataclass, field
from pathlib import Path

from dpd.supervisor.launcher import LaunchFailed
from dpd.supervisor.shim_records import ExitStatus, LaunchSpec, Reattach, ShimInfo


@dataclass
class FakeRun:
    info: ShimInfo
    log_path: Path
    exit: ExitStatus | None = None
    stops: list[tuple[bool, bool]] = field(default_factory=list)  # (graceful, training)


class FakeLauncher:
    def __init__(self) -> None:
        self.runs: dict[str, FakeRun] = {}  # by task id: the latest run
        self.spawns: list[str] = []  # task ids, in spawn order (a spawn that failed too)
        self.spawn_gate: asyncio.Event | None = None  # spawns wait for it while it is set up
        self.stop_gate: asyncio.Event | None = None
        self.spawning = asyncio.Event()  # set when a spawn has begun
        self.fail_spawn: str | None = None  # the next spawn raises LaunchFailed with this
        self.exit_at_spawn: int | None = None  # the next run's trainer exits at once so
        self.never_started: set[str] = set()  # reattach finds no trace of these
        self._pids = itertools.count(50_000)

    # ------------------------------------------------------------- test side

    def print(self, task_id: str, *lines: str) -> None:
        with self.runs[task_id].log_path.open("a", encoding="utf-8") as log:
            log.writelines(line + "\n" for line in lines)

    def end(self, task_id: str, returncode: int | None = 0, signum: int | None = None) -> None:
        run = self.runs[task_id]
        if run.exit is None:
            reason = f"returncode {returncode}" if signum is None else f"signal {signum}"
            run.exit = ExitStatus(returncode, signum, 0.0, reason, 0, run.info.run)

    def alive(self, task_id: str) -> bool:
        run = self.runs.get(task_id)
        return run is not None and run.exit is None

    # --------------------------------------------------------------- Launcher

    async def spawn(self, spec: LaunchSpec) -> ShimInfo:
        self.spawns.append(spec.task_id)
        self.spawning.set()
        if self.spawn_gate is not None:
            await self.spawn_gate.wait()
        if self.fail_spawn is not None:
            message, self.fail_spawn = self.fail_spawn, None
            raise LaunchFailed(f"job {spec.task_id}: {message}")
        pid = next(self._pids)
        info = ShimInfo(
            spec.task_id, spec.run, "boot", pid, 1, pid + 1, pid + 1, 1, 0.0, str(spec.job_dir)
        )
        self.runs[spec.task_id] = FakeRun(info, Path(spec.log_path))
        if self.exit_at_spawn is not None:
            code, self.exit_at_spawn = self.exit_at_spawn, None
            self.print(spec.task_id, "Traceback (most recent call last):", "ImportError: torch")
            self.end(spec.task_id, code)
        return info

    async def stop(
        self, info: ShimInfo, graceful: bool, run_dir: Path | None, training: bool, timeout: float
    ) -> ExitStatus:
        run = self.runs[info.task_id]
        run.stops.append((graceful, training))
        if graceful and self.stop_gate is not None:
            await self.stop_gate.wait()
        self.end(info.task_id, None, int(signal.SIGTERM if graceful else signal.SIGKILL))
        assert run.exit is not None
        return run.exit

    async def reattach(self, job_dir: Path) -> Reattach:
        task_id = Path(job_dir).name
        run = self.runs.get(task_id)
        if run is None or task_id in self.never_started:
            return Reattach("never_started")
        if run.exit is None:
            return Reattach("alive", run.info)
        return Reattach("exited", run.info, run.exit)

    def read_exit(self, job_dir: Path) -> ExitStatus | None:
        run = self.runs.get(Path(job_dir).name)
        return None if run is None else run.exit

    def is_alive(self, info: ShimInfo) -> bool:
        return self.alive(info.task_id)

    def open_pidfd(self, info: ShimInfo) -> int | None:
        return None  # the follower polls
