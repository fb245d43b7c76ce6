"""One live run of a job, from its launch (or its adoption after a daemon restart) to its
recorded outcome: the whole life cycle in one place.

A ``JobRun`` owns its phase, its stop reason, its GPUs and port (held in the registry until
it ends), its shim and its follower. One lock serialises what changes the run: the launch,
a stop, a health verdict, the outcome and the recovery after a restart; every status change
is one compare-and-set (``JobStore.transition``) announced as it is made. The edges:

    (queued)  --launch-->           running        a lost race with a stop: nothing launched
    launching --stop noted-->       the launch never spawns, or stops what it spawned
    running   --stop-->             stopping       save_quit / SIGTERM / SIGKILL (staged)
    running   --hung, fatal-->      (failing)      the daemon stops it; the status stays running
    stopping  --force-->            stopping       SIGKILL now, beside the graceful stop
    (failing) --force-->            (failing)      SIGKILL now; the failure stays the outcome
    running|stopping --ended-->     completed | failed | stopped   (``outcome.judge_run``)
    (restart) running  --never started--> queued;  stopping --never started--> stopped
    (closing) any      --let go-->        nothing more reaches the launcher; the status on
                                          disk is the next daemon's to go on with

Never launches a run twice: before the shim is spawned, state.json says ``running`` with the
run number; a restarted daemon adopts a live shim, reads an exit it recorded, or fails a run
whose shim vanished ("the shim vanished") — it never spawns one by itself.

Errors: a launch that fails fails the job with the reason; an exception while following is
logged and fails the job rather than leaving it running; a state that cannot be made durable
(``DurabilityError``) is handed to ``give_up`` and the run left as the disk has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpd.crashpoints import crash_point
from dpd.errors import Conflict
from dpd.jobs.record import RunRecovery
from dpd.jobs.states import ACTIVE, Phase, Status
from dpd.spool.atomic import DurabilityError
from dpd.spool.store import utc_now
from dpd.supervisor import runfiles
from dpd.supervisor.context import RunContext
from dpd.supervisor.outcome import DUPLICATE_PREVENTED, FENCED, StopReason, judge_run
from dpd.supervisor.progress import ProgressTracker
from dpd.supervisor.shim_records import DuplicatePrevented, ExitStatus, ShimInfo
from dpd.supervisor.watch import RunWatch

if TYPE_CHECKING:
    pass

log = logging.getLogger("dpd.supervisor")


class RunPhase(Enum):
    LAUNCHING = "launching"  # registered; no shim yet (state.json may still say queued)
    RUNNING = "running"  # the shim runs, or its launch failed and the end is being read
    STOPPING = "stopping"  # a stop (the user's or the daemon's) is under way
    ENDED = "ended"  # the outcome is recorded, or the launch lost to a stop; resources freed


class JobRun:
    def __init__(self, ctx: RunContext, task_id: str, gpu_ids: tuple[int, ...], port: int) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.gpu_ids = gpu_ids
        self.port = port
        self.phase = RunPhase.LAUNCHING
        self.stop_reason: StopReason | None = None
        self._forced = False  # a force stop joined the daemon's own stop
        self.failure_reason: str | None = None
        self.shim: ShimInfo | None = None
        self.exit_status: ExitStatus | None = None  # known at re-attach (ended or lost)
        self.task: asyncio.Task[None] | None = None  # launch or recovery, then following
        self.done = asyncio.Event()  # the outcome is recorded and the resources freed
        self.settled = asyncio.Event()  # done, or the supervisor let go of the run (closing)
        self._let_go = False
        self.started = ctx.clock.wall()
        self._lock = asyncio.Lock()
        self._stops: list[asyncio.Task[None]] = []
        self.watch = RunWatch(ctx, task_id)
        self.follower = self.watch.follower

    # ---------------------------------------------------------------- launch

    def start(self, state: dict[str, Any] | None = None) -> None:
        """Start the run's task: launch a queued run (its ``state``), then follow it to the
        outcome; without a state, follow a recovered run (``recover``)."""
        body = self._launch(state) if state is not None else self._follow()
        self.task = asyncio.create_task(self._guarded(body), name=self.task_id)

    async def _launch(self, state: dict[str, Any]) -> None:
        async with self._lock:
            if self.stop_reason is not None:
                # edge: queued -> stopped (stopped before its launch began)
                with contextlib.suppress(Conflict):  # it left queued otherwise: not ours
                    await _move(self.ctx, self.task_id, Status.QUEUED, Status.STOPPED,
                                stopped_at=utc_now(), ended_at=utc_now())  # fmt: skip
                return await self._end()
            if not await self._claim(state):
                return await self._end()  # a stop came first: nothing was launched
            if self.stop_reason is None:
                await self._spawn(state)
                crash_point("spawn_t5")  # FL6: spawned; a fleet record not yet running
            # edge: launching -> running
            self.phase = RunPhase.RUNNING
            if self.stop_reason is not None and self.shim is not None:
                await self._begin_stop()  # a stop came during the spawn
        await self._follow()

    async def _claim(self, state: dict[str, Any]) -> bool:
        """edge: queued -> running. False if the job left ``queued`` meanwhile (a stop)."""
        saved = RunRecovery.from_state(state)
        if saved.progress_state:  # a resumed task continues its numbers
            self.follower.tracker = ProgressTracker.from_state(
                saved.progress_state, saved.progress, saved.metrics
            )
        log_start = await asyncio.to_thread(runfiles.create_log, self.follower.follower.path)
        names = {g.gpu_id: g.name for g in self.ctx.monitor.latest}
        try:
            await _move(
                self.ctx,
                self.task_id,
                Status.QUEUED,
                Status.RUNNING,
                announce={"gpu_ids": list(self.gpu_ids)},
                run=int(state.get("run", 0)) + 1,
                gpu_ids=list(self.gpu_ids),
                gpu_id=self.gpu_ids[0],
                gpu_name=names.get(self.gpu_ids[0]),
                master_port=self.port,
                started_at=state.get("started_at") or utc_now(),
                run_started_at=utc_now(),
                log_offset=log_start,
                run_log_start=log_start,  # a resumed run appends: the runs before don't count
                output_state=None,
                progress=dict(state.get("progress") or {}, phase=Phase.STARTING.value),
                error=None,
                ended_at=None,
            )
        except Conflict as lost:
            log.info("%s was not launched: %s", self.task_id, lost.message)
            return False
        self.follower.follower.seek(log_start)
        return True

    async def _spawn(self, state: dict[str, Any]) -> None:
        run = int(state.get("run", 0)) + 1
        try:
            spec = runfiles.launch_spec(
                self.ctx.config, self.ctx.store, state, run, self.gpu_ids, self.port
            )
            self.shim = await self.ctx.launcher.spawn(spec)
        except DuplicatePrevented as err:  # fleet run lock held elsewhere (FLEET.md §10.2)
            log.error("%s not started: %s", self.task_id, err)
            self.failure_reason = DUPLICATE_PREVENTED
            return
        except Exception as err:
            log.exception("launching %s failed", self.task_id)
            self.failure_reason = f"the trainer could not be started: {err}"
            return
        log.info("started %s on GPU %s, master port %d", self.task_id, self.gpu_ids, self.port)

    # ------------------------------------------------------------------ stop

    async def stop(self, force: bool) -> None:
        """Stop the run and return once its outcome is recorded. ``Conflict`` if it ended."""
        reason = StopReason.FORCE if force else StopReason.GRACEFUL
        if self.phase is RunPhase.LAUNCHING:
            # edge: launching -> stop noted: the launch never spawns, or stops what it spawned
            if self.stop_reason is not StopReason.FORCE:
                self.stop_reason = reason
            await self.settled.wait()
            return
        async with self._lock:
            if self.phase is RunPhase.ENDED:
                raise Conflict(f"task {self.task_id} has ended", {"task_id": self.task_id})
            if self.phase is RunPhase.RUNNING:
                self.stop_reason = reason
                await self._begin_stop()
            elif force and self.stop_reason is StopReason.GRACEFUL:
                # edge: stopping -> stopping (force after graceful): SIGKILL now
                self.stop_reason = StopReason.FORCE
                self._send_stop(graceful=False)
            elif force and self.stop_reason is StopReason.FAILURE and not self._forced:
                # edge: (failing) -> (failing), force: SIGKILL now; the failure stays the
                # outcome (the user did not stop a healthy run)
                self._forced = True
                self._send_stop(graceful=False)
        await self.settled.wait()

    async def _begin_stop(self) -> None:
        """(lock held) edge: running -> stopping. A stop the daemon makes (a hang, a fatal
        error) leaves the status ``running`` until the outcome says ``failed``."""
        reason = self.stop_reason
        assert reason is not None
        if reason.by_user:
            await _move(
                self.ctx,
                self.task_id,
                Status.RUNNING,
                Status.STOPPING,
                announce={"force": reason is StopReason.FORCE},
            )
        self.phase = RunPhase.STOPPING
        graceful = reason is not StopReason.FORCE and not self.follower.caching_failed()
        self._send_stop(graceful)

    def _send_stop(self, graceful: bool) -> None:
        """Stop the shim in a task of its own (a force joins a graceful stop under way). Not
        once the supervisor has let go of the run (``cancel``): a stop that was writing
        ``stopping`` as the daemon closed leaves it to the next daemon, which finds the job
        ``stopping`` and goes on; nothing of a closed supervisor reaches the launcher."""
        if not self._let_go:
            self._stops.append(asyncio.create_task(self._stop_shim(graceful)))

    async def _stop_shim(self, graceful: bool) -> None:
        """Staged: save_quit (a user's stop while training), SIGTERM, then SIGKILL."""
        if self.shim is None:
            return
        facts = self.follower.facts
        state = self.ctx.store.get(self.task_id)
        run_dir = facts.run_dir or await asyncio.to_thread(runfiles.latest_run, state)
        try:
            await self.ctx.launcher.stop(
                self.shim,
                graceful=graceful,
                run_dir=Path(run_dir) if run_dir else None,
                training=facts.phase == Phase.TRAINING.value and self.stop_reason is not None
                and self.stop_reason.saves,
                timeout=self.ctx.config.trainer.stop_timeout,
            )  # fmt: skip
        except Exception:
            log.exception("stopping %s failed", self.task_id)
        self.watch.wakeups.event.set()

    # ---------------------------------------------------------------- follow

    async def _guarded(self, body: Any) -> None:
        try:
            try:
                await body
            except (asyncio.CancelledError, DurabilityError):
                raise
            except Exception as err:
                log.exception("supervising %s failed", self.task_id)
                self.failure_reason = f"internal error while supervising: {err}"
                if self.phase is not RunPhase.ENDED:
                    await self._finish(None)
        except DurabilityError as err:
            self.ctx.give_up(err)  # the job stays as state.json has it: a restart re-attaches

    async def _follow(self) -> None:
        await self._finish(await self.watch.until_end(self))

    @property
    def healthy(self) -> bool:
        """Health checks apply (no stop under way)."""
        return self.phase is RunPhase.RUNNING

    async def check_health(self, alive: bool) -> None:
        """A pass of the watch saw the run: end it if it hangs; notice a vanished shim."""
        reason = self.watch.trouble() if self.phase is RunPhase.RUNNING else None
        if reason is not None:
            await self.stop_failing(reason, StopReason.FAILURE)
        elif self.shim is not None and not alive:
            await self._lost()

    async def stop_failing(self, reason: str, why: StopReason) -> None:
        """The daemon's own stop of a running run, staged like a user's: it hangs or hit a
        fatal error (FAILURE), or, in fleet requeue mode, this node's lease ran out (FENCED,
        FLEET.md §9.4; ``reason`` is then ``fenced``). The run ends ``failed`` with
        ``reason``. A run not running is left as it is (a stop came first; a launching
        run's shim fences it itself)."""
        async with self._lock:
            if self.phase is not RunPhase.RUNNING:
                return
            log.warning("%s: %s; stopping it", self.task_id, reason)
            # edge: running -> (failing); the staged stop runs
            self.failure_reason = reason
            self.stop_reason = why
            await self._begin_stop()

    async def _lost(self) -> None:
        """The shim is gone; unless it recorded an end meanwhile, the run is lost."""
        found = await self.ctx.launcher.reattach(self.ctx.store.layout.job_dir(self.task_id))
        if found.kind == "alive":
            return
        self.shim = None
        self.exit_status = found.exit
        if found.kind != "exited" and self.failure_reason is None:
            self.failure_reason = found.exit.reason if found.exit else "the run was lost"

    # --------------------------------------------------------------- outcome

    async def _finish(self, exit_status: ExitStatus | None) -> None:
        if exit_status is not None and exit_status.fenced and self.failure_reason is None:
            self.failure_reason = FENCED  # its shim stopped it: the lease ran out (§9.4)
        await self.watch.flush()
        await self.ctx.events_recorded()  # the outcome's log_offset passes the last lines
        async with self._lock:
            facts = self.follower.run_facts(self.stop_reason, exit_status, self.failure_reason)
            outcome = judge_run(facts)
            fields = await asyncio.to_thread(self._outcome_fields, outcome.error)
            try:
                # edge: running|stopping -> completed|failed|stopped (the run ended)
                await _move(self.ctx, self.task_id, ACTIVE, outcome.status,
                            announce={"error": outcome.error}, **fields)  # fmt: skip
            except Conflict:
                log.exception("%s: its outcome could not be recorded", self.task_id)
            self.phase = RunPhase.ENDED  # nothing of the run is written after its outcome
            log.info("%s %s", self.task_id, outcome.status.value)
        await self._end()

    def _outcome_fields(self, error: dict[str, Any] | None) -> dict[str, Any]:
        """The final progress and the outcome, for one state.json write (blocking)."""
        followed = self.follower.state_fields()
        state = {**self.ctx.store.get(self.task_id), **followed}
        stopped = self.stop_reason is not None and self.stop_reason.by_user
        run_seconds = self.ctx.clock.wall() - self.started
        return {**followed, **runfiles.final_fields(state, error, stopped, run_seconds, utc_now())}

    async def _end(self) -> None:
        """edge: -> ended. The GPUs and the port are free from here."""
        self.phase = RunPhase.ENDED
        for stop in self._stops:
            if not stop.done():
                stop.cancel()
        self.ctx.registry.remove(self)
        self.done.set()
        self.settled.set()
        await self.ctx.monitor.poll_now()  # the old trainer's pids must not make it look busy
        self.ctx.wake()

    # ------------------------------------------------------------ re-attach

    async def recover(self, state: dict[str, Any]) -> bool:
        """After a daemon restart: adopt the run's shim, or read how it ended. False when
        nothing of it ever ran (the daemon stopped during its launch): it is settled here
        and needs no following. Never launches anything."""
        async with self._lock:
            await asyncio.to_thread(self.follower.restore, RunRecovery.from_state(state))
            stopping = state["status"] == Status.STOPPING.value
            found = await self.ctx.launcher.reattach(self.ctx.store.layout.job_dir(self.task_id))
            if found.kind == "never_started":
                if stopping:
                    # edge: stopping -> stopped (restart; nothing of the run ever ran)
                    await _move(self.ctx, self.task_id, Status.STOPPING, Status.STOPPED,
                                stopped_at=utc_now(), ended_at=utc_now())  # fmt: skip
                else:
                    # edge: running -> queued (restart; nothing ran: safe to queue again)
                    await _move(self.ctx, self.task_id, Status.RUNNING, Status.QUEUED,
                                announce={"relaunch": True})  # fmt: skip
                    log.warning("%s: dpd stopped while launching it; queued again", self.task_id)
                self.phase = RunPhase.ENDED
                return False
            # edge: (restart) -> running | stopping, as state.json says
            self.phase = RunPhase.STOPPING if stopping else RunPhase.RUNNING
            self.stop_reason = StopReason.GRACEFUL if stopping else None
            if found.kind == "alive":
                self.shim = found.info
                if stopping:  # the stop the old daemon began goes on
                    self._send_stop(graceful=True)
            else:  # exited meanwhile, or lost: the shim vanished without recording an end
                self.exit_status = found.exit
                if found.kind == "lost":
                    self.failure_reason = found.exit.reason if found.exit else "the run was lost"
            log.info("re-attached %s: %s", self.task_id, found.kind)
            return True

    async def cancel(self) -> None:
        """The daemon is closing: stop watching (the shim owns the trainer and goes on).
        From here the run starts nothing (``_send_stop``); a stop waiting for its end
        answers now with what the disk says."""
        self._let_go = True
        self.settled.set()
        tasks = [t for t in (self.task, *self._stops) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _move(
    ctx: RunContext,
    task_id: str,
    expect: Status | frozenset[Status],
    to: Status,
    announce: Any = None,
    **fields: Any,
) -> None:
    """One status change of the run: the store's compare-and-set, then its event."""
    event = await asyncio.to_thread(
        ctx.store.transition, task_id, expect, to, announce=announce, **fields
    )
    runfiles.announce(ctx.emit, event)
