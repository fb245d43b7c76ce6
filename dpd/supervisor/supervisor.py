"""The supervisor: queued jobs become running trainers, running trainers become outcomes.

Owns: the scheduling loop (wakes on a new job, a finished job, a GPU snapshot, and every
second), one follower task per running job, the master-port and GPU assignments.

A follower task sleeps until something happens: a write to train.log (inotify, shared by
all jobs), the end of the shim (a pidfd), or a slow fallback period (lost events, the
inactivity timeout). Each wake-up is one thread hop that reads what is new; its events
reach the bus in one go afterwards. Without inotify or pidfds it polls, as it used to.

Never launches a job twice: before the shim is spawned, state.json says ``running`` with
the run number; a restarted daemon that finds such a job adopts its live shim, reads its
exit status if it already ended, waits a grace period for a shim that was starting, and
otherwise marks it ``failed`` ("the shim vanished") — it never spawns it again by itself.

Errors: a launch that fails marks that job ``failed`` with the reason; an exception in a
follower is logged and the job is marked failed rather than left running forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpd.config import Config
from dpd.errors import Conflict, InsufficientResources
from dpd.events import EmitEvent
from dpd.jobs.states import ACTIVE, RESUMABLE, TERMINAL, Phase, Status
from dpd.spool import layout as names
from dpd.spool.atomic import DurabilityError
from dpd.spool.store import JobStore, utc_now
from dpd.supervisor import outputs
from dpd.supervisor.follower import JobFollower, PendingEvents
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.gpus import gpu_status
from dpd.supervisor.launcher import (
    ExitStatus,
    LaunchSpec,
    ShimInfo,
    ShimLauncher,
    build_trainer_command,
    build_trainer_env,
)
from dpd.supervisor.outcome import judge_run
from dpd.supervisor.ports import NoFreePort, PortAllocator
from dpd.supervisor.progress import ProgressTracker
from dpd.supervisor.scheduler import (
    GpuView,
    QueuedJob,
    estimate_start_times,
    plan,
    queue_positions,
)
from dpd.supervisor.shim import JobMark
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.follow import LogChanges

log = logging.getLogger("dpd.supervisor")

SCHEDULE_PERIOD = 1.0
# At least this between reads of a job's output while it prints: a chatty trainer's lines
# are read in batches (each read costs a thread hop, events, an fsync or two), so the
# daemon does not compete with the trainer for the CPU; a backlog is read without pause.
WATCH_PERIOD = 0.25
WATCH_IDLE_PERIOD = 0.25  # polling, where inotify or a pidfd is not to be had
WATCH_FALLBACK_PERIOD = 5.0  # a full look even without any event (a lost event)


@dataclass
class Running:
    task_id: str
    gpu_ids: tuple[int, ...]
    port: int
    follower: JobFollower
    pending: PendingEvents
    shim: ShimInfo | None = None
    stop_requested: str | None = None
    failure_reason: str | None = None
    exit_status: ExitStatus | None = None  # known at re-attach (ended or lost meanwhile)
    task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.time)


class Supervisor:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        emit: EmitEvent,
        monitor: GpuMonitor,
        launcher: ShimLauncher,
    ) -> None:
        self.config = config
        self.store = store
        self.emit = emit
        self.line_counts = LineCounter()  # what followers counted; the logs API reads it
        self.monitor = monitor
        self.launcher = launcher
        low, high = config.trainer.master_port_range
        self.ports = PortAllocator(low, high)
        self.running: dict[str, Running] = {}
        self._wake = asyncio.Event()
        self._waiting_for_port: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._log_changes = LogChanges()
        self._fatal: asyncio.Future[None] | None = None
        self._short_of_room = False  # said once until there is room again

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._fatal = asyncio.get_running_loop().create_future()
        for state in self.store.states(lambda s: Status(s["status"]) in ACTIVE):
            await self._reattach(state)
        self._loop_task = asyncio.create_task(self._schedule_loop(), name="scheduler")

    async def failure(self) -> None:
        """Never returns: raises the first error supervision cannot go on after, a job's
        state that could not be made durable (``DurabilityError``; reliability.md AF5). The
        daemon then stops, leaving the trainings to their shims, and exits non-zero for
        systemd to start it again, which re-reads what is on disk. Recording the job as
        failed instead would free its GPU while its trainer runs on."""
        assert self._fatal is not None, "start() first"
        await self._fatal

    def _give_up(self, err: DurabilityError) -> None:
        log.critical("%s: supervision cannot go on", err)
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(err)

    async def close(self, stop_jobs: bool) -> None:
        """Stop scheduling; leave trainings running (their shims own them) unless told."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if stop_jobs:
            await asyncio.gather(
                *(self.stop(task_id, force=False) for task_id in list(self.running)),
                return_exceptions=True,
            )
        for job in list(self.running.values()):
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(
            *(j.task for j in self.running.values() if j.task), return_exceptions=True
        )
        if self._fatal is not None and self._fatal.done():
            return  # a follower may be past what reached the disk: the restart reads again
        for job in list(self.running.values()):
            await asyncio.to_thread(job.follower.write_state)

    def wake(self) -> None:
        self._wake.set()

    # ----------------------------------------------------------- scheduling

    async def _schedule_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SCHEDULE_PERIOD):  # no task per wait, as wait_for
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.schedule_once()
            except DurabilityError as err:
                self._give_up(err)
                return
            except Exception:
                log.exception("scheduling pass failed; trying again")

    async def schedule_once(self) -> None:
        queue = self.queued_jobs()
        if not queue or not await asyncio.to_thread(self._room_to_start):
            return
        for assignment in plan(queue, self.gpu_views()):
            try:
                await self._launch(assignment.task_id, tuple(assignment.gpu_ids))
            except NoFreePort as err:
                # not the job's fault: it stays queued until a port frees (said once per job)
                if assignment.task_id not in self._waiting_for_port:
                    log.warning("%s waits for a master port: %s", assignment.task_id, err)
                    self._waiting_for_port.add(assignment.task_id)
                return
            self._waiting_for_port.discard(assignment.task_id)

    def _room_to_start(self) -> bool:
        """A new run's log and state need room on the spool's file system: while it is
        short (as for new jobs, ``JobStore.check_room``), queued jobs wait."""
        try:
            self.store.check_room()
        except InsufficientResources as err:
            if not self._short_of_room:
                log.warning("%s: queued jobs wait for room", err.message)
            self._short_of_room = True
            return False
        if self._short_of_room:
            log.info("the spool's file system has room again: starting queued jobs")
        self._short_of_room = False
        return True

    def queued_jobs(self) -> list[QueuedJob]:
        # GPUs pinned by the job's document, not state.json's gpu_ids: those record where an
        # earlier run ran and would pin a resumed job to its old GPU
        return [
            QueuedJob(
                task_id=s["task_id"],
                priority=int(s.get("priority", 0)),
                submitted_seq=int(s.get("submitted_seq", 0)),
                gpu_ids=self.store.spec(s["task_id"]).gpu_ids or None,
                required_gpus=int(s.get("required_gpus", 1)),
                min_memory_mb=self.store.spec(s["task_id"]).min_memory_mb,
                estimated_duration=None,
            )
            for s in self.store.states(lambda s: s["status"] == Status.QUEUED.value)
        ]

    def assignments(self) -> dict[int, tuple[str, str]]:
        return {
            gpu: (job.task_id, "training") for job in self.running.values() for gpu in job.gpu_ids
        }

    def gpu_views(self) -> list[GpuView]:
        assigned = self.assignments()
        own_pids = {j.shim.trainer_pid for j in self.running.values() if j.shim is not None}
        views = []
        for info in self.monitor.latest:
            task = assigned.get(info.gpu_id)
            views.append(
                GpuView(
                    gpu_id=info.gpu_id,
                    memory_total=info.memory_total,
                    memory_free=info.memory_free,
                    status=gpu_status(info, assigned, own_pids),
                    running_task=task[0] if task else None,
                    running_eta=self._eta(task[0]) if task else None,
                )
            )
        return views

    def _eta(self, task_id: str) -> float | None:
        job = self.running.get(task_id)
        if job is None:
            return None
        eta = job.follower.tracker.progress().get("eta_seconds")
        return float(eta) if eta is not None else None

    def queue_info(self) -> dict[str, dict[str, Any]]:
        """Position (1-based) and estimated start (unix time) of every queued job."""
        queue = self.queued_jobs()
        positions = queue_positions(queue)
        starts = estimate_start_times(queue, self.gpu_views(), time.time())
        return {
            job.task_id: {
                "position": positions.get(job.task_id),
                "estimated_start": starts.get(job.task_id),
            }
            for job in queue
        }

    # -------------------------------------------------------------- launch

    async def _launch(self, task_id: str, gpu_ids: tuple[int, ...]) -> None:
        state = self.store.get(task_id)
        port = self.ports.allocate(task_id)
        spec = self.store.spec(task_id)
        follower, pending = self._make_follower(task_id)
        if state.get("progress_state"):  # a resumed task continues its numbers
            follower.tracker = ProgressTracker.from_state(state["progress_state"])
        job = Running(task_id, gpu_ids, port, follower, pending)
        self.running[task_id] = job
        run = int(state.get("run", 0)) + 1
        gpu_names = {g.gpu_id: g.name for g in self.monitor.latest}
        log_start = await asyncio.to_thread(_create_log, follower.follower.path)
        await asyncio.to_thread(
            self.store.set_status,
            task_id,
            Status.RUNNING,
            run=run,
            gpu_ids=list(gpu_ids),
            gpu_id=gpu_ids[0],
            gpu_name=gpu_names.get(gpu_ids[0]),
            master_port=port,
            started_at=state.get("started_at") or utc_now(),
            run_started_at=utc_now(),
            log_offset=log_start,
            run_log_start=log_start,  # a resumed run appends: the runs before it don't count
            output_state=None,
            progress=dict(state.get("progress") or {}, phase=Phase.STARTING.value),
            error=None,
            ended_at=None,
        )
        follower.follower.seek(log_start)
        self._emit_status(task_id, Status.RUNNING, Status.QUEUED, gpu_ids=list(gpu_ids))
        resume_run = self._resume_run_name(state, spec.resume_from_checkpoint)
        launch = LaunchSpec(
            task_id=task_id,
            run=run,
            command=build_trainer_command(
                self.config.trainer.deepspeed,
                self.config.trainer.diffusion_pipe_dir,
                gpu_ids,
                port,
                self.store.layout.job_dir(task_id) / names.CONFIG_TOML,
                resume_run,
            ),
            cwd=self.config.trainer.diffusion_pipe_dir,
            env=build_trainer_env(
                os.environ,
                self.config.trainer.env,
                JobMark.of(task_id, self.store.layout.job_dir(task_id)),
            ),
            log_path=self.store.layout.job_dir(task_id) / names.TRAIN_LOG,
            job_dir=self.store.layout.job_dir(task_id),
        )
        try:
            job.shim = await self.launcher.spawn(launch)
        except Exception as err:
            log.exception("launching %s failed", task_id)
            job.failure_reason = f"the trainer could not be started: {err}"
        job.task = asyncio.create_task(self._follow(job), name=f"follow {task_id}")
        log.info("started %s on GPU %s, master port %d", task_id, gpu_ids, port)

    def _resume_run_name(self, state: dict[str, Any], requested: bool | str | None) -> str | None:
        if state.get("resume_run"):
            return str(state["resume_run"])
        if isinstance(requested, str):
            return requested
        if requested is True:
            run_dir = outputs.latest_run_dir(Path(state["output_dir"]))
            return run_dir.name if run_dir else None
        return None

    def _make_follower(self, task_id: str) -> tuple[JobFollower, PendingEvents]:
        config = self.store.spec(task_id).config
        pending = PendingEvents()
        follower = JobFollower(
            self.store,
            pending,
            task_id,
            epochs=config.get("epochs"),
            max_steps=config.get("max_steps"),
            line_counts=self.line_counts,
        )
        return follower, pending

    # -------------------------------------------------------------- follow

    async def _follow(self, job: Running) -> None:
        try:
            try:
                exit_status = await self._watch(job)
                await self._finish(job, exit_status)
            except (asyncio.CancelledError, DurabilityError):
                raise
            except Exception as err:
                log.exception("following %s failed", job.task_id)
                job.failure_reason = f"internal error while supervising: {err}"
                await self._finish(job, None)
        except DurabilityError as err:
            self._give_up(err)  # the job stays as state.json has it: a restart re-attaches

    async def _watch(self, job: Running) -> ExitStatus | None:
        """Follow the output until the shim records the end of this run."""
        inactivity = self.config.trainer.inactivity_timeout
        job_dir = self.store.layout.job_dir(job.task_id)
        wake = _Wakeups()
        output = None
        if job.shim is not None:
            output = self._log_changes.watch(job.follower.follower.path, wake.event)
        pidfd = await asyncio.to_thread(self.launcher.open_pidfd, job.shim) if job.shim else None
        if pidfd is not None:
            asyncio.get_running_loop().add_reader(pidfd, wake.shim_ended, pidfd)
        try:
            look_for_exit = True
            while True:
                wake.event.clear()
                # one thread hop per pass: with several jobs, hops were most of the daemon's CPU
                read, status, alive = await asyncio.to_thread(
                    self._observe, job, job_dir, look_for_exit
                )
                job.pending.flush(self.emit)
                if job.shim is None:
                    await self._final_read(job)
                    return job.exit_status
                if status is not None and status.run == job.shim.run:
                    await self._final_read(job)
                    return status
                if job.stop_requested is None:
                    await self._check_health(job, inactivity, alive)
                elif not alive:
                    await self._lost(job)
                watched = output is not None and pidfd is not None
                more = read and not job.follower.follower.at_eof
                due = self._health_due(job, inactivity)
                look_for_exit = await wake.wait(read, more, watched, due)
        finally:
            if pidfd is not None:
                asyncio.get_running_loop().remove_reader(pidfd)
                os.close(pidfd)
            self._log_changes.unwatch(output)

    async def _final_read(self, job: Running) -> None:
        """The writer has ended: take everything, the unterminated last line too."""
        await asyncio.to_thread(job.follower.drain)
        job.pending.flush(self.emit)

    def _observe(
        self, job: Running, job_dir: Path, look_for_exit: bool
    ) -> tuple[bool, ExitStatus | None, bool]:
        """(new output read, the recorded exit, the shim alive) — blocking, in a thread.
        Without ``look_for_exit`` the shim is known to run (its pidfd has not fired)."""
        read = job.follower.poll()
        if job.shim is None:
            return read, None, False
        if not look_for_exit:
            return read, None, True
        status = self.launcher.read_exit(job_dir)
        return read, status, status is not None or self.launcher.is_alive(job.shim)

    def _health_due(self, job: Running, inactivity: float) -> float:
        """Seconds until the inactivity timeout could strike (a wake-up is due by then)."""
        follower = job.follower
        if job.stop_requested is not None or follower.facts.phase == Phase.TRAINING.value:
            return WATCH_FALLBACK_PERIOD
        return max(0.0, inactivity - follower.silent_for()) + 0.05

    async def _check_health(self, job: Running, inactivity: float, alive: bool) -> None:
        follower = job.follower
        reason = None
        if follower.caching_failed():
            reason = "a traceback during caching: " + (follower.facts.failure.message or "")
        elif follower.facts.phase != Phase.TRAINING.value and follower.silent_for() > inactivity:
            reason = (
                f"no output for {int(follower.silent_for())} s during {follower.facts.phase} "
                f"(inactivity timeout {int(inactivity)} s)"
            )
        elif job.shim is not None and not alive:
            await self._lost(job)
            return
        if reason is not None:
            log.warning("%s: %s; stopping it", job.task_id, reason)
            job.failure_reason = reason
            job.stop_requested = "failure"
            job.stop_task = asyncio.create_task(self._kill(job))

    async def _lost(self, job: Running) -> None:
        """The shim is gone; unless it recorded an end meanwhile, the run is lost."""
        outcome = await self.launcher.reattach(self.store.layout.job_dir(job.task_id))
        if outcome.kind == "alive":
            return
        job.shim = None
        job.exit_status = outcome.exit
        if outcome.kind != "exited" and job.failure_reason is None:
            job.failure_reason = outcome.exit.reason if outcome.exit else "the run was lost"

    async def _kill(self, job: Running) -> None:
        if job.shim is not None:
            await self.launcher.stop(
                job.shim, graceful=False, run_dir=None, training=False, timeout=0
            )

    async def _finish(self, job: Running, exit_status: Any) -> None:
        follower = job.follower
        job.pending.flush(self.emit)
        facts = follower.run_facts(job.stop_requested, exit_status, job.failure_reason)
        outcome = judge_run(facts)
        previous = Status(self.store.get(job.task_id)["status"])
        await asyncio.to_thread(self._record_outcome, job, outcome.status, outcome.error)
        self._emit_status(job.task_id, outcome.status, previous, error=outcome.error)
        self.ports.release(job.task_id)
        self.running.pop(job.task_id, None)
        job.done.set()
        log.info("%s %s", job.task_id, outcome.status.value)
        await self.monitor.poll_now()  # the old trainer's pids must not make the GPU look busy
        self.wake()

    def _record_outcome(self, job: Running, status: Status, error: dict[str, Any] | None) -> None:
        """The final progress and the outcome in one state.json write (blocking: a thread)."""
        state = self.store.get(job.task_id)
        fields = {**job.follower.state_fields(), **self._final_fields(state, error, job)}
        self.store.set_status(job.task_id, status, **fields)

    def _final_fields(
        self, state: dict[str, Any], error: dict[str, Any] | None, job: Running
    ) -> dict[str, Any]:
        now = utc_now()
        run_dir = outputs.latest_run_dir(Path(state["output_dir"]))
        models = outputs.saved_models(run_dir) if run_dir else []
        checkpoint = outputs.latest_checkpoint(run_dir) if run_dir else None
        training_time = float(state.get("training_time") or 0) + (time.time() - job.started)
        return {
            "ended_at": now,
            "stopped_at": now if job.stop_requested in ("graceful", "force") else None,
            "error": error,
            "run_dir": str(run_dir) if run_dir else state.get("run_dir"),
            "checkpoints": [m.as_dict() for m in models],
            "last_model": models[-1].name if models else None,
            "last_checkpoint": checkpoint,
            "training_time": round(training_time, 1),
            "resume_run": None,
        }

    # ---------------------------------------------------------------- stop

    async def stop(self, task_id: str, force: bool = False) -> dict[str, Any]:
        state = self.store.get(task_id)
        status = Status(state["status"])
        if task_id in self.running:
            # maybe being launched right now: let the launch finish, then stop it as running
            await self._launched(task_id)
            state = self.store.get(task_id)
            status = Status(state["status"])
        if status is Status.QUEUED:
            await asyncio.to_thread(
                self.store.set_status,
                task_id,
                Status.STOPPED,
                stopped_at=utc_now(),
                ended_at=utc_now(),
            )
            self._emit_status(task_id, Status.STOPPED, status)
            return self.store.get(task_id)
        job = self.running.get(task_id)
        # An ended run stays in ``running`` while its follower finishes: it is over all the
        # same (a stop would signal a shim that has gone).
        if job is None or status in TERMINAL:
            raise Conflict(
                f"task {task_id} is {status.value}, not running",
                {"task_id": task_id, "status": status.value},
            )
        if job.stop_task is not None and not force:
            await job.done.wait()  # a stop is already under way
            return self.store.get(task_id)
        if job.stop_requested != "force":
            job.stop_requested = "force" if force else "graceful"
        if status is Status.RUNNING:
            await asyncio.to_thread(self.store.set_status, task_id, Status.STOPPING)
            self._emit_status(task_id, Status.STOPPING, status, force=force)
        if job.shim is not None:
            run_dir = job.follower.facts.run_dir or _latest_run(state)
            job.stop_task = asyncio.create_task(
                self.launcher.stop(
                    job.shim,
                    graceful=not force,
                    run_dir=Path(run_dir) if run_dir else None,
                    training=job.follower.facts.phase == Phase.TRAINING.value,
                    timeout=self.config.trainer.stop_timeout,
                )
            )
            await job.stop_task
        await job.done.wait()
        return self.store.get(task_id)

    async def _launched(self, task_id: str) -> None:
        job = self.running.get(task_id)
        while job is not None and job.task is None and not job.done.is_set():
            await asyncio.sleep(0.05)

    # -------------------------------------------------------------- resume

    async def resume(self, task_id: str) -> dict[str, Any]:
        """A stopped or failed task continues from its latest checkpoint as a new run."""
        state = self.store.get(task_id)
        status = Status(state["status"])
        if status not in RESUMABLE:
            raise Conflict(
                f"task {task_id} is {status.value}; only stopped or failed tasks can be resumed",
                {"task_id": task_id, "status": status.value},
            )
        run_dir = outputs.latest_run_dir(Path(state["output_dir"]))
        if run_dir is None or outputs.latest_checkpoint(run_dir) is None:
            raise Conflict(
                f"task {task_id} has no checkpoint to resume from",
                {"task_id": task_id, "output_dir": state["output_dir"]},
            )
        await asyncio.to_thread(outputs.remove_signal_files, run_dir)
        await asyncio.to_thread(
            self.store.set_status, task_id, Status.QUEUED, resume_run=run_dir.name, error=None
        )
        self._emit_status(task_id, Status.QUEUED, status, resume_from=run_dir.name)
        self.wake()
        return self.store.get(task_id)

    # ------------------------------------------------------------ re-attach

    async def _reattach(self, state: dict[str, Any]) -> None:
        """Pick up a job that was running when the daemon stopped; never launch it again."""
        task_id = state["task_id"]
        follower, pending = self._make_follower(task_id)
        await asyncio.to_thread(follower.restore, state)
        gpu_ids = tuple(state.get("gpu_ids") or ())
        job = Running(task_id, gpu_ids, int(state.get("master_port") or 0), follower, pending)
        if state["status"] == Status.STOPPING.value:
            job.stop_requested = "graceful"
        found = await self.launcher.reattach(self.store.layout.job_dir(task_id))
        if found.kind == "never_started":
            # nothing of it ever ran (no shim record, no marked process): safe to queue again
            await asyncio.to_thread(self.store.set_status, task_id, Status.QUEUED)
            self._emit_status(task_id, Status.QUEUED, Status(state["status"]), relaunch=True)
            log.warning("%s: dpd stopped while launching it; queued again", task_id)
            return
        if found.kind == "alive":
            job.shim = found.info
        elif found.kind == "exited":
            job.exit_status = found.exit
        else:  # lost: the shim vanished without recording an end
            job.exit_status = found.exit
            job.failure_reason = found.exit.reason if found.exit else "the run was lost"
        if job.port:
            self.ports.reserve(task_id, job.port)
        self.running[task_id] = job
        job.task = asyncio.create_task(self._follow(job), name=f"follow {task_id}")
        log.info("re-attached %s: %s", task_id, found.kind)

    # -------------------------------------------------------------- events

    def _emit_status(self, task_id: str, status: Status, previous: Status, **extra: Any) -> None:
        self.emit(
            "jobs",
            task_id,
            "status",
            {"status": status.value, "previous": previous.value, **extra},
        )


def _latest_run(state: dict[str, Any]) -> str | None:
    run_dir = outputs.latest_run_dir(Path(state["output_dir"]))
    return str(run_dir) if run_dir else None


def _create_log(path: Path) -> int:
    """train.log's size, creating it empty if need be: it exists before the trainer starts,
    so it can be watched from the first byte (the shim appends to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class _Wakeups:
    """Why a follower task wakes: its log changed (inotify), its shim ended (a pidfd), or
    time passed. One event for all of them, so waiting costs no task of its own."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.ended = asyncio.Event()
        self._last_pass = 0.0

    def shim_ended(self, pidfd: int) -> None:
        """The pidfd is readable: the shim has ended (level-triggered, so say it once)."""
        asyncio.get_running_loop().remove_reader(pidfd)
        self.ended.set()
        self.event.set()

    async def wait(self, read: bool, more: bool, watched: bool, health_due: float) -> bool:
        """Sleep until the next pass is due; True when that pass must look for the run's
        end (the shim ended, a fallback pass, or polling). ``more``: the last read stopped
        short of the end of the log; ``watched``: the log has an inotify watch and the shim
        a pidfd, so nothing needs polling; ``health_due``: seconds until a health check is
        due at the latest."""
        if not watched:
            await asyncio.sleep(WATCH_PERIOD if read else WATCH_IDLE_PERIOD)
            return True
        if more and not self.ended.is_set():  # a backlog: no write may come to say so
            await asyncio.sleep(0)
            self._last_pass = time.monotonic()
            return False
        timed_out = not await _wait_event(self.event, min(WATCH_FALLBACK_PERIOD, health_due))
        if not timed_out and not self.ended.is_set():
            # output: read it in a batch, at most one per WATCH_PERIOD, unless the run ends
            await _wait_event(self.ended, self._last_pass + WATCH_PERIOD - time.monotonic())
        self._last_pass = time.monotonic()
        return timed_out or self.ended.is_set()


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    """True if ``event`` is set within ``timeout`` seconds (no task, unlike wait_for)."""
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
