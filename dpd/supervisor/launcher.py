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
import fcntl
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import dpd
from dpd.errors import InternalError
from dpd.spool.atomic import write_json_atomic
from dpd.supervisor import proctree
from dpd.supervisor.shim import (
    EXIT_ALREADY_RUNNING,
    EXIT_FILE,
    LAUNCH_FILE,
    LOCK_FILE,
    SHIM_FILE,
    SHIM_LOG,
    JobMark,
)

# Inherited from systemd by the daemon; a trainer that saw them could talk to systemd as dpd.
DROPPED_ENV_NAMES = frozenset(
    {"NOTIFY_SOCKET", "CUDA_VISIBLE_DEVICES", "API_SECRET_KEY", "INVOCATION_ID", "JOURNAL_STREAM"}
)
DROPPED_ENV_PREFIXES = ("WATCHDOG_", "LISTEN_", "DPD_")
SAVE_QUIT = "save_quit"
PACKAGE_ROOT = str(Path(dpd.__file__).resolve().parent.parent)  # so the shim imports this dpd


class ShimError(InternalError):
    """A launch or stop could not be carried out as the contract requires."""


class LaunchFailed(ShimError):
    default_message = "the trainer could not be launched"


class RunAlreadyLaunched(ShimError):
    default_message = "this run of the job was already launched"


class StopFailed(ShimError):
    default_message = "processes of the job survived the stop"


def build_trainer_command(
    deepspeed: str,
    diffusion_pipe_dir: Path,
    gpu_ids: Sequence[int],
    port: int,
    config_toml: Path,
    resume_run: str | None,
) -> list[str]:
    """DESIGN §6 exactly: GPUs pinned with --include, the port given to both programs,
    resume always naming the run directory."""
    launcher = shlex.split(deepspeed)
    if not launcher:
        raise ValueError("trainer.deepspeed is empty")
    if not gpu_ids or any(gpu < 0 for gpu in gpu_ids):
        raise ValueError(f"bad GPU ids: {list(gpu_ids)}")
    if not 0 < port < 65536:
        raise ValueError(f"bad master port: {port}")
    command = [
        *launcher,
        "--include",
        "localhost:" + ",".join(str(gpu) for gpu in gpu_ids),
        f"--master_port={port}",
        str(Path(diffusion_pipe_dir) / "train.py"),
        "--deepspeed",
        "--config",
        str(config_toml),
        f"--master_port={port}",
    ]
    if resume_run is not None:
        if not resume_run or "/" in resume_run or resume_run.startswith(("-", ".")):
            raise ValueError(f"bad run directory name to resume: {resume_run!r}")
        command += ["--resume_from_checkpoint", resume_run]
    return command


def _dropped(name: str) -> bool:
    return name in DROPPED_ENV_NAMES or name.startswith(DROPPED_ENV_PREFIXES)


def build_trainer_env(
    base: Mapping[str, str], trainer_env: Mapping[str, str], mark: JobMark
) -> dict[str, str]:
    """The daemon's environment minus systemd's sockets, dpd's own settings and secrets and
    CUDA_VISIBLE_DEVICES (the GPU choice is --include), plus trainer.env, the PCI bus order
    and the job's markers, which every descendant inherits."""
    env = {name: value for name, value in base.items() if not _dropped(name)}
    env.update(
        (name, value) for name, value in trainer_env.items() if name not in DROPPED_ENV_NAMES
    )
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env.update(mark.env())
    return env


def shim_environment(base: Mapping[str, str]) -> dict[str, str]:
    """The shim's own environment: no systemd sockets, no marker, dpd importable."""
    env = {name: value for name, value in base.items() if not _dropped(name)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


@dataclass(frozen=True)
class LaunchSpec:
    task_id: str
    run: int
    command: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    job_dir: Path


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
    job_dir: str = ""  # where it was read from, not stored in shim.json

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def mark(self) -> JobMark:
        return JobMark.of(self.task_id, self.job_dir)

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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_shim_info(job_dir: Path) -> ShimInfo | None:
    data = _read_json(Path(job_dir) / SHIM_FILE)
    try:
        return None if data is None else ShimInfo.from_dict({**data, "job_dir": str(job_dir)})
    except (KeyError, TypeError, ValueError):
        return None


def read_exit_status(job_dir: Path) -> ExitStatus | None:
    data = _read_json(Path(job_dir) / EXIT_FILE)
    if data is None:
        return None
    return ExitStatus(
        returncode=data.get("returncode"),
        signal=data.get("signal"),
        ended_at=float(data.get("ended_at", 0.0)),
        reason=str(data.get("reason", "")),
        leftovers_killed=int(data.get("leftovers_killed", 0)),
        run=data.get("run"),
    )


def shim_lock_held(job_dir: Path) -> bool:
    """True while a shim lives for this job dir. Probing takes the lock for an instant, so a
    shim starting at that very moment would refuse: call it only when no spawn is under way."""
    try:
        fd = os.open(Path(job_dir) / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def is_alive(info: ShimInfo) -> bool:
    """The recorded shim still runs (same boot, same pid, same start time)."""
    return info.boot_id == proctree.boot_id() and proctree.is_same_process(
        info.shim_pid, info.shim_start_time
    )


def signal_group(pgid: int, mark: JobMark, signum: int) -> bool:
    """killpg only if the group still holds a process of this job: a group id whose members
    are all gone could name someone else's group after pid reuse."""
    members = proctree.group_members(pgid)
    if not any(mark.carried_by(pid) for pid in members):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
    return True


def kill_marked(mark: JobMark) -> list[int]:
    """SIGKILL every process carrying the job's markers; returns those signalled."""
    found = mark.processes()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def open_shim_pidfd(info: ShimInfo) -> int | None:
    """A pidfd of the recorded shim, readable once it has ended (so its end is noticed at
    once, without polling), or None: the shim is gone already, the pid now names another
    process, or pidfds are unavailable. The caller closes it. Blocking (/proc read)."""
    try:
        pidfd = os.pidfd_open(info.shim_pid)
    except OSError:
        return None
    # checked after opening: the pidfd pins the process, whatever happens to the pid
    if not is_alive(info):
        os.close(pidfd)
        return None
    return pidfd


def _job_alive(info: ShimInfo) -> bool:
    return is_alive(info) or bool(info.mark.processes())


def _touch(path: Path) -> None:
    path.touch(exist_ok=True)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _lost_status(run: int | None, reason: str, killed: int = 0) -> ExitStatus:
    return ExitStatus(None, None, time.time(), reason, killed, run)


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
        _unlink_quietly(job_dir / SHIM_FILE)
        _unlink_quietly(job_dir / EXIT_FILE)
        launch = {
            "task_id": spec.task_id,
            "run": spec.run,
            "command": list(spec.command),
            "cwd": str(spec.cwd),
            "env": dict(spec.env),
            "log_path": str(spec.log_path),
            "orphan_grace": self.orphan_grace,
            "term_grace": self.shim_term_grace,
        }
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
                raise LaunchFailed(f"job {spec.task_id}: {status.reason}")
            # A dead shim may have written its records just before ending: look once more.
            shim_alive = await asyncio.to_thread(proctree.is_same_process, shim_pid, shim_start)
            if not shim_alive and (await asyncio.to_thread(read_shim_info, job_dir) is None):
                log_tail = await asyncio.to_thread(_tail, job_dir / SHIM_LOG)
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
        if info.boot_id != proctree.boot_id():
            reason = "the machine rebooted while the job ran; its processes are gone"
        else:
            reason = "the job's shim vanished without recording how the trainer ended"
        killed = await self._sweep(info.mark)
        return Reattach("lost", info, _lost_status(info.run, reason, len(killed)))

    async def _reattach_unstarted(self, job_dir: Path) -> Reattach:
        launch = await asyncio.to_thread(_read_json, job_dir / LAUNCH_FILE) or {}
        if await asyncio.to_thread(shim_lock_held, job_dir):
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                await asyncio.sleep(self.poll_interval)
                if await asyncio.to_thread(read_shim_info, job_dir) is not None:
                    return await self.reattach(job_dir)
        await self._sweep(JobMark.of(str(launch.get("task_id", job_dir.name)), job_dir))
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
            loop.add_reader(pidfd, _resolve, gone)
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
        return _lost_status(info.run, "the job's shim ended without recording an exit status")

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
        try:
            if graceful and training and save_quit is not None:
                await asyncio.to_thread(_touch, save_quit)
                if await self._wait_job_gone(info, timeout):
                    return await self._final_status(info)
            if graceful:
                await asyncio.to_thread(signal_group, info.trainer_pgid, info.mark, signal.SIGTERM)
                if await self._wait_job_gone(info, self.term_timeout):
                    return await self._final_status(info)
            await self._kill_everything(info)
            return await self._final_status(info)
        finally:
            if save_quit is not None:
                # A stale save_quit would end a resumed run after its first step.
                await asyncio.to_thread(_unlink_quietly, save_quit)

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
        while await asyncio.to_thread(_job_alive, info):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(self.poll_interval)
        return True

    def is_alive(self, info: ShimInfo) -> bool:
        return is_alive(info)

    def open_pidfd(self, info: ShimInfo) -> int | None:
        """See ``open_shim_pidfd`` (blocking: call it in a thread)."""
        return open_shim_pidfd(info)
