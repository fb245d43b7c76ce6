"""The supervisor: queued jobs become runs; requests reach the run that owns the job.

Owns: the scheduling loop (wakes on a new job, a finished job, a GPU snapshot, and every
second), the registry of live runs (``registry.RunRegistry``: their GPUs and master ports)
and the status changes of jobs that have no live run (a stop while queued, a resume).
Placement is ``scheduler.plan`` (pure); each run's life cycle, from launch or re-attach to
its outcome, is ``run.JobRun``.

A stop and a launch may race for a queued job: both are a compare-and-set on its status
(``JobStore.transition``), so exactly one wins; the loser changes nothing and lets go of
what it held (the launch its GPU and port; the stop goes to the run that won).

Errors: a scheduling pass that fails is logged and tried again a second later; a state
that cannot be made durable (``DurabilityError``) ends supervision (``failure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dpd.config import Config
from dpd.errors import Conflict, InsufficientResources
from dpd.events import EmitEvent
from dpd.jobs.dataset_cache import cache_keys
from dpd.jobs.states import ACTIVE, RESUMABLE, Status
from dpd.spool.atomic import DurabilityError
from dpd.spool.store import JobStore, utc_now
from dpd.supervisor import outputs, runfiles
from dpd.supervisor.context import RunContext, no_events_pending
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.gpus import gpu_status
from dpd.supervisor.outcome import FENCED, StopReason
from dpd.supervisor.ports import NoFreePort, PortAllocator
from dpd.supervisor.registry import RunRegistry
from dpd.supervisor.run import JobRun, RunPhase
from dpd.supervisor.scheduler import (
    GpuView,
    QueuedJob,
    estimate_start_times,
    plan,
    queue_positions,
)
from dpd.supervisor.seams import SYSTEM_CLOCK, Clock, Launcher
from dpd.supervisor.wakeups import WatchTiming
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.follow import LogChanges

log = logging.getLogger("dpd.supervisor")

SCHEDULE_PERIOD = 1.0
DEFAULT_TIMING = WatchTiming()


class Supervisor:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        emit: EmitEvent,
        monitor: GpuMonitor,
        launcher: Launcher,
        clock: Clock = SYSTEM_CLOCK,
        timing: WatchTiming = DEFAULT_TIMING,
        events_recorded: Callable[[], Awaitable[None]] = no_events_pending,
    ) -> None:
        self.config = config
        self.store = store
        self.emit = emit
        self.line_counts = LineCounter()  # what followers counted; the logs API reads it
        self.monitor = monitor
        low, high = config.trainer.master_port_range
        self.running = RunRegistry(PortAllocator(low, high))
        self.ctx = RunContext(
            config, store, emit, launcher, monitor, clock, timing, LogChanges(),
            self.line_counts, self.running, self.wake, self._give_up, events_recorded,
        )  # fmt: skip
        self._wake = asyncio.Event()
        self._waiting_for_port: set[str] = set()
        self._waiting_for_cache: dict[str, str] = {}  # task -> the run it was told to wait on
        self._loop_task: asyncio.Task[None] | None = None
        self._fatal: asyncio.Future[None] | None = None
        self._short_of_room = False  # said once until there is room again
        # fleet mode (FLEET.md §9.2): the fleet agent places jobs and calls launch_claimed
        self.fleet_mode = config.fleet.enabled
        self.on_wake: Callable[[], None] | None = None  # the fleet agent's wake

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Re-attach the runs the last daemon left, then start scheduling."""
        self._fatal = asyncio.get_running_loop().create_future()
        for state in self.store.states(lambda s: Status(s["status"]) in ACTIVE):
            gpu_ids = tuple(state.get("gpu_ids") or ())
            run = JobRun(self.ctx, state["task_id"], gpu_ids, int(state.get("master_port") or 0))
            if await run.recover(state):
                self.running.add(run)
                run.start()
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
                *(self.stop(task_id, force=False) for task_id in self.running),
                return_exceptions=True,
            )
        runs = self.running.runs()
        await asyncio.gather(*(run.cancel() for run in runs), return_exceptions=True)
        if self._fatal is not None and self._fatal.done():
            return  # a follower may be past what reached the disk: the restart reads again
        for run in runs:
            run.watch.pending.flush(self.emit)
        await self.ctx.events_recorded()  # the saved offsets must not pass unwritten lines
        for run in runs:
            if run.phase is not RunPhase.ENDED:
                await asyncio.to_thread(run.follower.write_state)

    def wake(self) -> None:
        self._wake.set()
        if self.on_wake is not None:
            self.on_wake()

    # ----------------------------------------------------------- scheduling

    async def _schedule_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SCHEDULE_PERIOD):  # no task per wait, as wait_for
                    await self._wake.wait()
            self._wake.clear()
            if self.fleet_mode:
                continue  # the fleet agent places jobs (launch_claimed)
            try:
                await self.schedule_once()
            except DurabilityError as err:
                self._give_up(err)
                return
            except Exception:
                log.exception("scheduling pass failed; trying again")

    async def schedule_once(self) -> None:
        """Place what can start now; each placed job's run launches in its own task."""
        queue = self.queued_jobs()
        if not queue or not await asyncio.to_thread(self._room_to_start):
            return
        caching = self.building_caches()
        self._tell_cache_waits(queue, caching)
        for assignment in plan(queue, self.gpu_views(), frozenset(caching)):
            task_id = assignment.task_id
            try:
                port = self.running.ports.allocate(task_id)
            except NoFreePort as err:
                # not the job's fault: it stays queued until a port frees (said once per job)
                if task_id not in self._waiting_for_port:
                    log.warning("%s waits for a master port: %s", task_id, err)
                    self._waiting_for_port.add(task_id)
                return
            self._waiting_for_port.discard(task_id)
            state = self.store.get(task_id)
            if state["status"] != Status.QUEUED.value or task_id in self.running:
                self.running.ports.release(task_id)
                continue  # stopped since the queue was read
            run = JobRun(self.ctx, task_id, tuple(assignment.gpu_ids), port)
            self.running.add(run)  # before any await: no later pass places it again
            run.start(state)

    def launch_claimed(self, task_id: str, gpu_ids: tuple[int, ...]) -> bool:
        """Fleet mode: launch a job this node claimed and fenced (T3 passed) on the GPUs of
        its claim. False (nothing launched) if it is no longer queued here or already has a
        run; ``NoFreePort`` if no master port is free."""
        state = self.store.get(task_id)
        if state["status"] != Status.QUEUED.value or task_id in self.running:
            return False
        port = self.running.ports.allocate(task_id)
        run = JobRun(self.ctx, task_id, tuple(gpu_ids), port)
        self.running.add(run)
        run.start(state)
        return True

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
        """Queued jobs without a run (one being launched is placed already). GPUs pinned by
        the job's document, not state.json's gpu_ids: those record where an earlier run
        ran and would pin a resumed job to its old GPU."""
        states = self.store.states(lambda s: s["status"] == Status.QUEUED.value)
        jobs = []
        for s in states:
            if s["task_id"] in self.running:
                continue
            spec = self.store.spec(s["task_id"])
            jobs.append(
                QueuedJob(
                    task_id=s["task_id"],
                    priority=int(s.get("priority", 0)),
                    submitted_seq=int(s.get("submitted_seq", 0)),
                    gpu_ids=spec.gpu_ids or None,
                    required_gpus=int(s.get("required_gpus", 1)),
                    min_memory_mb=spec.min_memory_mb,
                    estimated_duration=None,
                    cache_keys=cache_keys(spec.model_type, spec.dataset),
                )
            )
        return jobs

    def assignments(self) -> dict[int, tuple[str, str]]:
        return self.running.assignments()

    def gpu_views(self) -> list[GpuView]:
        assigned = self.running.assignments()
        own_pids = self.running.trainer_pids()
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
                    running_eta=self.running.eta(task[0]) if task else None,
                )
            )
        return views

    def queue_info(self) -> dict[str, dict[str, Any]]:
        """Position (1-based), estimated start (unix time) and, for a job held back by a
        dataset cache another run is building (scheduler rule 6), what it waits for."""
        queue = self.queued_jobs()
        positions = queue_positions(queue)
        starts = estimate_start_times(queue, self.gpu_views(), self.ctx.clock.wall())
        caching = self.building_caches()
        return {
            job.task_id: {
                "position": positions.get(job.task_id),
                "estimated_start": starts.get(job.task_id),
                "waiting_for": _cache_wait(job, caching),
            }
            for job in queue
        }

    def building_caches(self) -> dict[str, str]:
        """Dataset caches live runs may be writing, and the task writing each (rule 6)."""

        def keys_of(task_id: str) -> frozenset[str]:
            spec = self.store.spec(task_id)
            return cache_keys(spec.model_type, spec.dataset)

        return self.running.building_caches(keys_of)

    def _tell_cache_waits(self, queue: list[QueuedJob], caching: dict[str, str]) -> None:
        """Log once per job and holder that a queued job waits for another run's caching."""
        waits = {job.task_id: _cache_wait(job, caching) for job in queue}
        for task_id, wait in waits.items():
            told = self._waiting_for_cache.get(task_id)
            if wait is not None and told != wait["task_id"]:
                log.info(
                    "%s waits: %s is building its dataset cache %s",
                    task_id, wait["task_id"], wait["cache"],
                )  # fmt: skip
        self._waiting_for_cache = {t: w["task_id"] for t, w in waits.items() if w is not None}

    # ------------------------------------------------------- stop and resume

    async def fence(self, task_id: str) -> bool:
        """Fleet requeue mode: stop a run because this node's lease ran out (FLEET.md §9.4);
        it ends ``failed`` (``fenced``). False when no run of it is running here."""
        run = self.running.get(task_id)
        if run is None:
            return False
        await run.stop_failing(FENCED, StopReason.FENCED)
        return True

    async def stop(self, task_id: str, force: bool = False) -> dict[str, Any]:
        """Stop a job: its run stops it, or (queued, no run) it is stopped here. A launch
        racing this stop for a queued job loses or wins whole; then the run is stopped."""
        for _ in range(3):
            run = self.running.get(task_id)
            if run is not None:
                with contextlib.suppress(Conflict):  # it ended meanwhile: say what it became
                    await run.stop(force)
                    return self.store.get(task_id)
            status = Status(self.store.get(task_id)["status"])
            if status is not Status.QUEUED:
                if task_id in self.running:
                    continue  # placed between our two looks
                raise Conflict(
                    f"task {task_id} is {status.value}, not running",
                    {"task_id": task_id, "status": status.value},
                )
            try:
                # edge: queued -> stopped (stop while queued)
                await self._move(task_id, Status.QUEUED, Status.STOPPED,
                                 stopped_at=utc_now(), ended_at=utc_now())  # fmt: skip
                return self.store.get(task_id)
            except Conflict:
                continue  # a launch won the race: stop its run
        status = Status(self.store.get(task_id)["status"])
        raise Conflict(
            f"task {task_id} is {status.value}, not running",
            {"task_id": task_id, "status": status.value},
        )

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
        # edge: stopped|failed -> queued (resume: a new run of the task)
        await self._move(task_id, RESUMABLE, Status.QUEUED, announce={"resume_from": run_dir.name},
                         resume_run=run_dir.name, error=None)  # fmt: skip
        self.wake()
        return self.store.get(task_id)

    async def _move(
        self,
        task_id: str,
        expect: Status | frozenset[Status],
        to: Status,
        announce: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        event = await asyncio.to_thread(
            self.store.transition, task_id, expect, to, announce=announce, **fields
        )
        runfiles.announce(self.emit, event)


def _cache_wait(job: QueuedJob, caching: dict[str, str]) -> dict[str, str] | None:
    """What a queued job waits for under scheduler rule 6, if anything: the first dataset
    cache of its that a live run is building, and that run."""
    for key in sorted(job.cache_keys):
        if key in caching:
            return {"reason": "dataset_cache", "cache": key, "task_id": caching[key]}
    return None
