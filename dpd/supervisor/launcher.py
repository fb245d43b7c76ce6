"""The daemon's side of trainer processes: build the command, spawn the shim, adopt, stop.

Guarantees:
- The daemon is never the trainer's parent in a way that matters: the shim detaches (double
  fork, own session) and owns the trainer, so a ``kill -9`` of the daemon stops nothing, and
  the run's end is still recorded in ``exit.json`` (``dpd.supervisor.shim``).
- A run is launched at most once: ``spawn`` refuses a run number for which ``shim.json`` or
  ``exit.json`` exists, or while a shim holds the job's ``shim.lock``.
- Identity is pid + /proc start time + boot id, never a bare pid: ``adopt`` returns None for a
  recorded pid that now names another process, and nothing is signalled without that check
  (a process group only if one of its members carries the job's marker).
- After ``stop`` returns, no process of the job exists: the trainer's group is signalled
  (save_quit → SIGTERM → SIGKILL, DESIGN §6 and diffusion-pipe.md §6.5), then every process
  whose environment carries ``DPD_TASK_ID=<task_id>`` is SIGKILLed (setsid'ed strays included),
  and the call waits until none is left.

Not trusted: pids in files, the trainer's exit code (0 is no proof of success).
Known weakness: between reading a stray's environment and killing it, its pid could be reused
(microseconds, not seconds); a process that rewrites its environment escapes the marker sweep,
though not the shim's own descendant sweep while the shim lives.

Blocking work (/proc scans, file reads and fsyncs) runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dpd.spool.atomic import write_json_atomic
from dpd.supervisor import proctree
from dpd.supervisor.shim import (
    EXIT_ALREADY_RUNNING,
    EXIT_FILE,
    LAUNCH_FILE,
    SHIM_FILE,
    SHIM_LOG,
    JobMark,
)
from dpd.supervisor.shim_records import (
    DuplicatePrevented,
    ExitStatus,
    LaunchFailed,
    LaunchSpec,
    Reattach,
    RunAlreadyLaunched,
    ShimError,
    ShimInfo,
    StopFailed,
    read_exit_status,
    read_json,
    read_shim_info,
)
from dpd.supervisor.shimproc import (
    is_alive,
    job_alive,
    kill_marked,
    lost_status,
    open_shim_pidfd,
    resolve,
    shim_lock_held,
    signal_group,
    tail,
    touch,
    unlink_quietly,
)
from dpd.supervisor.trainer_command import (
    build_trainer_command,
    build_trainer_env,
    shim_environment,
)

__all__ = [
    "DuplicatePrevented",
    "ExitStatus",
    "LaunchFailed",
    "LaunchSpec",
    "Reattach",
    "RunAlreadyLaunched",
    "ShimError",
    "ShimInfo",
    "ShimLauncher",
    "StopFailed",
    "build_trainer_command",
    "build_trainer_env",
    "is_alive",
    "open_shim_pidfd",
    "read_exit_status",
    "read_shim_info",
    "shim_environment",
    "shim_lock_held",
]

SAVE_QUIT = "save_quit"


class ShimLauncher:
    """Spawns, adopts and stops per-job shims. Holds no per-job state: a new instance (a
    restarted daemon) knows everything an old one knew, from the job directory.

    ``term_timeout`` is the SIGTERM → SIGKILL wait (deepspeed's launcher may spend 30 s
    terminating its workers); ``orphan_grace`` and ``shim_term_grace`` go to the shim for
    leftovers after the runner exits. ``scope_command`` is put before the shim's command,
    ``{task_id}`` and ``{run}`` filled in: under systemd, e.g. ``systemd-run --scope --collect
    --quiet --unit=dpd-job-{task_id}-{run}``, so the job leaves the daemon's cgroup and
    ``systemctl restart dpd`` does not kill it (DESIGN §6).
    Errors: ``RunAlreadyLaunched``, ``LaunchFailed``, ``StopFailed``; ``TimeoutError`` from
    ``wait_exit`` when its timeout passes."""

    def __init__(
        self,
        *,
        python: str = sys.executable,
        start_timeout: float = 15.0,
        term_timeout: float = 35.0,
        kill_timeout: float = 10.0,
        orphan_grace: float = 5.0,
        shim_term_grace: float = 5.0,
        poll_interval: float = 0.1,
        scope_command: Sequence[str] = (),
    ) -> None:
        self.python = python
        self.scope_command = list(scope_command)
        self.start_timeout = start_timeout
        self.term_timeout = term_timeout
        self.kill_timeout = kill_timeout
        self.orphan_grace = orphan_grace
        self.shim_term_grace = shim_term_grace
        self.poll_interval = poll_interval

    # -- spawn -------------------------------------------------------------------------------

    async def spawn(self, spec: LaunchSpec) -> ShimInfo:
        """Start the shim for ``spec.run`` and return once it has started the trainer."""
        await asyncio.to_thread(self._prepare, spec)
        shim_pid, shim_start = await self._start_shim(spec)
        try:
            return await asyncio.wait_for(
                self._await_start(spec, shim_pid, shim_start), self.start_timeout
            )
        except TimeoutError:
            await asyncio.to_thread(self._abort, spec, shim_pid, shim_start)
            raise LaunchFailed(
                f"job {spec.task_id}: the shim did not start the trainer within "
                f"{self.start_timeout:g} s"
            ) from None

    def _prepare(self, spec: LaunchSpec) -> None:
        """Refuse a second launch of a run, clear the previous run's records, write launch.json."""
        job_dir = Path(spec.job_dir)
        if shim_lock_held(job_dir):
            raise RunAlreadyLaunched(f"job {spec.task_id}: a shim is still running")
        recorded = [r.run for r in (read_shim_info(job_dir), read_exit_status(job_dir)) if r]
        if any(run is None or run >= spec.run for run in recorded):
            raise RunAlreadyLaunched(f"job {spec.task_id}: run {spec.run} was already launched")
        unlink_quietly(job_dir / SHIM_FILE)
        unlink_quietly(job_dir / EXIT_FILE)
        launch = {
            "task_id": spec.task_id,
            "run": spec.run,
            "command": list(spec.command),
            "cwd": str(spec.cwd),
            # The markers name the resolved job directory (a file-system call: in this thread).
            "env": {**spec.env, **JobMark.of(spec.task_id, spec.job_dir).env()},
            "log_path": str(spec.log_path),
            "orphan_grace": self.orphan_grace,
            "term_grace": self.shim_term_grace,
        }
        if spec.fence is not None:  # fleet requeue mode: the shim fences itself (§9.4)
            launch["fence"] = spec.fence.as_dict()
        if spec.run_lock is not None:  # fleet mode: the run lock (§10.2)
            launch["run_lock"] = str(spec.run_lock)
        # 0600: trainer.env may hold tokens.
        write_json_atomic(job_dir / LAUNCH_FILE, launch, mode=0o600)

    async def _start_shim(self, spec: LaunchSpec) -> tuple[int, int]:
        """Run the shim's short-lived parent, which forks the real shim and reports its pid."""
        job_dir = Path(spec.job_dir)
        process = await asyncio.create_subprocess_exec(
            *self._shim_command(spec),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=job_dir,
            env=shim_environment(os.environ),
            start_new_session=True,
        )
        try:
            output, errors = await asyncio.wait_for(process.communicate(), self.start_timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise LaunchFailed(f"job {spec.task_id}: the shim did not detach in time") from None
        if process.returncode == EXIT_ALREADY_RUNNING:
            raise RunAlreadyLaunched(f"job {spec.task_id}: a shim is still running")
        try:
            pid_text, start_text = output.decode().split()
            return int(pid_text), int(start_text)
        except ValueError:
            raise LaunchFailed(
                f"job {spec.task_id}: the shim exited with {process.returncode}: "
                + errors.decode(errors="replace").strip()[-2000:]
            ) from None

    def _shim_command(self, spec: LaunchSpec) -> list[str]:
        scope = [part.format(task_id=spec.task_id, run=spec.run) for part in self.scope_command]
        return [*scope, self.python, "-m", "dpd.supervisor.shim", str(spec.job_dir)]

    async def _await_start(self, spec: LaunchSpec, shim_pid: int, shim_start: int) -> ShimInfo:
        job_dir = Path(spec.job_dir)
        while True:
            info = await asyncio.to_thread(read_shim_info, job_dir)
            if info is not None and info.run == spec.run:
                return info
            status = await asyncio.to_thread(read_exit_status, job_dir)
            if status is not None and status.run == spec.run:
                if status.duplicate_prevented:
                    raise DuplicatePrevented(f"job {spec.task_id}: {status.reason}")
                raise LaunchFailed(f"job {spec.task_id}: {status.reason}")
            # A dead shim may have written its records just before ending: look once more.
            shim_alive = await asyncio.to_thread(proctree.is_same_process, shim_pid, shim_start)
            if not shim_alive and (await asyncio.to_thread(read_shim_info, job_dir) is None):
                log_tail = await asyncio.to_thread(tail, job_dir / SHIM_LOG)
                raise LaunchFailed(f"job {spec.task_id}: the shim died: {log_tail}")
            await asyncio.sleep(self.poll_interval)

    def _abort(self, spec: LaunchSpec, shim_pid: int, shim_start: int) -> None:
        if proctree.is_same_process(shim_pid, shim_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim_pid, signal.SIGKILL)
        kill_marked(JobMark.of(spec.task_id, spec.job_dir))

    # -- adopt and wait ----------------------------------------------------------------------

    def adopt(self, job_dir: Path) -> ShimInfo | None:
        """The live shim of this job, or None; a recorded pid naming another process (pid
        reuse, another boot) is not the shim."""
        info = read_shim_info(Path(job_dir))
        return info if info is not None and is_alive(info) else None

    def read_exit(self, job_dir: Path) -> ExitStatus | None:
        return read_exit_status(Path(job_dir))

    async def reattach(self, job_dir: Path) -> Reattach:
        """Reconcile one job after a daemon start; a lost run's strays are killed here."""
        job_dir = Path(job_dir)
        info = await asyncio.to_thread(read_shim_info, job_dir)
        status = await asyncio.to_thread(read_exit_status, job_dir)
        if status is not None and (info is None or status.run == info.run):
            return Reattach("exited", info, status)
        if info is None:
            return await self._reattach_unstarted(job_dir)
        if await asyncio.to_thread(is_alive, info):
            return Reattach("alive", info)
        status = await asyncio.to_thread(read_exit_status, job_dir)
        if status is not None and status.run == info.run:
            return Reattach("exited", info, status)
        if info.boot_id != await asyncio.to_thread(proctree.boot_id):
            reason = "the machine rebooted while the job ran; its processes are gone"
        else:
            reason = "the job's shim vanished without recording how the trainer ended"
        killed = await self._sweep(info.mark)
        return Reattach("lost", info, lost_status(info.run, reason, len(killed)))

    async def _reattach_unstarted(self, job_dir: Path) -> Reattach:
        launch = await asyncio.to_thread(read_json, job_dir / LAUNCH_FILE) or {}
        if await asyncio.to_thread(shim_lock_held, job_dir):
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                await asyncio.sleep(self.poll_interval)
                if await asyncio.to_thread(read_shim_info, job_dir) is not None:
                    return await self.reattach(job_dir)
        task_id = str(launch.get("task_id", job_dir.name))
        await self._sweep(await asyncio.to_thread(JobMark.of, task_id, job_dir))
        return Reattach("never_started")

    async def wait_exit(self, info: ShimInfo, timeout: float | None = None) -> ExitStatus:
        """Wait for the shim to end (a pidfd, no polling), then read what it recorded."""
        await asyncio.wait_for(self._wait_shim_gone(info), timeout)
        return await self._final_status(info)

    async def _wait_shim_gone(self, info: ShimInfo) -> None:
        try:
            pidfd = os.pidfd_open(info.shim_pid)
        except ProcessLookupError:
            return
        try:
            # Checked after opening: the pidfd pins the process, whatever happens to the pid.
            if not await asyncio.to_thread(is_alive, info):
                return
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, resolve, gone)
            try:
                await gone
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)

    async def _final_status(self, info: ShimInfo) -> ExitStatus:
        status = await asyncio.to_thread(read_exit_status, Path(info.job_dir))
        if status is not None and status.run == info.run:
            return status
        return lost_status(info.run, "the job's shim ended without recording an exit status")

    # -- stop --------------------------------------------------------------------------------

    async def stop(
        self,
        info: ShimInfo,
        graceful: bool,
        run_dir: Path | None,
        training: bool,
        timeout: float,
    ) -> ExitStatus:
        """Stop the run, staged as DESIGN §6 says, and return once nothing of it is alive.

        graceful + training + run_dir: create ``save_quit`` and wait ``timeout``; graceful:
        SIGTERM to the group and wait ``term_timeout``; then (or at once when not graceful)
        SIGKILL to the group and to every marked process. Raises ``StopFailed`` if marked
        processes survive ``kill_timeout`` after SIGKILL."""
        save_quit = Path(run_dir) / SAVE_QUIT if run_dir is not None else None
        touched = False
        try:
            # Only into the run of a job still alive: a run that ended (a fleet host's run
            # fenced while its daemon was paused) may share its run directory with the next
            # attempt by now, which would read the file as a stop (and lose it to the unlink).
            if (
                graceful
                and training
                and save_quit is not None
                and await asyncio.to_thread(job_alive, info)
            ):
                await asyncio.to_thread(touch, save_quit)
                touched = True
                if await self._wait_job_gone(info, timeout):
                    return await self._final_status(info)
            if graceful:
                await asyncio.to_thread(signal_group, info.trainer_pgid, info.mark, signal.SIGTERM)
                if await self._wait_job_gone(info, self.term_timeout):
                    return await self._final_status(info)
            await self._kill_everything(info)
            return await self._final_status(info)
        finally:
            if touched and save_quit is not None:
                # A stale save_quit would end a resumed run after its first step.
                await asyncio.to_thread(unlink_quietly, save_quit)

    async def _kill_everything(self, info: ShimInfo) -> None:
        await asyncio.to_thread(signal_group, info.trainer_pgid, info.mark, signal.SIGKILL)
        survivors = await self._sweep(info.mark)
        if await asyncio.to_thread(info.mark.processes):
            raise StopFailed(f"job {info.task_id}: processes {survivors} survived SIGKILL")
        # The shim now only has to reap and record; bound it in case it hangs.
        shim_budget = self.orphan_grace + self.shim_term_grace + self.kill_timeout
        try:
            await asyncio.wait_for(self._wait_shim_gone(info), shim_budget)
        except TimeoutError:
            if await asyncio.to_thread(is_alive, info):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info.shim_pid, signal.SIGKILL)

    async def _sweep(self, mark: JobMark) -> list[int]:
        """SIGKILL marked processes until none is left or ``kill_timeout`` passes."""
        killed: set[int] = set()
        deadline = time.monotonic() + self.kill_timeout
        while True:
            found = await asyncio.to_thread(kill_marked, mark)
            killed.update(found)
            if not found or time.monotonic() >= deadline:
                return sorted(killed)
            await asyncio.sleep(self.poll_interval)

    async def _wait_job_gone(self, info: ShimInfo, timeout: float) -> bool:
        """True once the shim and every marked process have ended within ``timeout``."""
        deadline = time.monotonic() + timeout
        while await asyncio.to_thread(job_alive, info):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
        return True

    def is_alive(self, info: ShimInfo) -> bool:
        return is_alive(info)

    def open_pidfd(self, info: ShimInfo) -> int | None:
        """See ``open_shim_pidfd`` (blocking: call it in a thread)."""
        return open_shim_pidfd(info)
