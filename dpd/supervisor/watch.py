"""A run's eyes: its train.log read through the follower, and its shim's end looked for,
until the shim records how the run ended. The run (``dpd.supervisor.run``) decides what
what is seen means; this module only sees.

A pass sleeps until something happens: a write to train.log (inotify, shared by all jobs),
the end of the shim (a pidfd), or time passing (a health check due, the fallback period
for a lost event). Each pass is one thread hop that reads what is new; its events reach
the bus in one go afterwards. Without inotify or pidfds (or with the fake launcher) it polls.

At the start of a run the dataset is listed in a thread for a steps-per-epoch estimate
(``dpd.supervisor.dataset_listing``), so progress has a total and an ETA before the trainer
reveals its steps per epoch. The first read waits for it at most ``ESTIMATE_HEAD_START``
seconds (the output waits in train.log meanwhile); a slower listing is taken when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from dpd.jobs.epoch_estimate import EpochEstimate
from dpd.supervisor import health
from dpd.supervisor.context import RunContext
from dpd.supervisor.dataset_listing import estimate_for_spec
from dpd.supervisor.follower import JobFollower
from dpd.supervisor.pending import PendingEvents
from dpd.supervisor.shim_records import ExitStatus, ShimInfo
from dpd.supervisor.wakeups import Wakeups

if TYPE_CHECKING:
    from dpd.supervisor.run import JobRun

log = logging.getLogger("dpd.supervisor")

ESTIMATE_HEAD_START: Final = 5.0  # seconds the first read waits for the dataset listing


class RunWatch:
    def __init__(self, ctx: RunContext, task_id: str) -> None:
        self.ctx = ctx
        self.task_id = task_id
        self.spec = ctx.store.spec(task_id)
        config = self.spec.config
        self.pending = PendingEvents()
        self.follower = JobFollower(
            ctx.store,
            self.pending,
            task_id,
            epochs=config.get("epochs"),
            max_steps=config.get("max_steps"),
            line_counts=ctx.line_counts,
            clock=ctx.clock,
            hold_state=True,
        )
        self.wakeups = Wakeups(ctx.timing)
        trainer = ctx.config.trainer
        self.rule = health.HangRule(trainer.inactivity_timeout, trainer.step_timeout_factor)
        self._estimate: asyncio.Future[EpochEstimate | None] | None = None

    async def until_end(self, run: JobRun) -> ExitStatus | None:
        """Follow the output until the shim records the end of this run (or is gone)."""
        job_dir = self.ctx.store.layout.job_dir(self.task_id)
        wake = self.wakeups
        output = None
        if run.shim is not None:
            output = self.ctx.log_changes.watch(self.follower.follower.path, wake.event)
        launcher = self.ctx.launcher
        pidfd = await asyncio.to_thread(launcher.open_pidfd, run.shim) if run.shim else None
        if pidfd is not None:
            asyncio.get_running_loop().add_reader(pidfd, wake.shim_ended, pidfd)
        try:
            if run.shim is not None:
                await self._start_estimate(run.gpu_ids)
            look_for_exit = True
            while True:
                wake.event.clear()
                self._take_estimate()
                # one thread hop per pass: with several jobs, hops were most of the daemon's CPU
                shim = run.shim
                read, status, alive = await asyncio.to_thread(
                    self._observe, shim, job_dir, look_for_exit
                )
                await self.flush()
                if run.shim is None:
                    await self.final_read()
                    return run.exit_status
                if status is not None and status.run == run.shim.run:
                    await self.final_read()
                    return status
                await run.check_health(alive)
                watched = output is not None and pidfd is not None
                more = read and not self.follower.follower.at_eof
                look_for_exit = await wake.wait(read, more, watched, self.health_due(run.healthy))
        finally:
            if self._estimate is not None:
                self._estimate.cancel()  # the listing thread is bounded; its answer is dropped
                self._estimate = None
            if pidfd is not None:
                asyncio.get_running_loop().remove_reader(pidfd)
                os.close(pidfd)
            self.ctx.log_changes.unwatch(output)

    async def _start_estimate(self, gpu_ids: tuple[int, ...]) -> None:
        """List the dataset in a thread, unless the trainer's own steps per epoch are
        known; wait for it up to ``ESTIMATE_HEAD_START``."""
        tracker = self.follower.tracker
        if tracker.steps_per_epoch and not tracker.steps_per_epoch_estimated:
            return
        stages = int(self.spec.config.get("pipeline_stages", 1) or 1)
        data_parallel = max(1, len(gpu_ids) // stages)
        self._estimate = asyncio.ensure_future(
            asyncio.to_thread(estimate_for_spec, self.spec, data_parallel)
        )
        await asyncio.wait({self._estimate}, timeout=ESTIMATE_HEAD_START)

    def _take_estimate(self) -> None:
        """Hand a finished estimate to the tracker (between reads: no thread holds it)."""
        future = self._estimate
        if future is None or not future.done():
            return
        self._estimate = None
        try:
            estimate = future.result()
        except Exception:  # an estimate must never stop the follower
            log.exception("estimating the steps per epoch of %s failed", self.task_id)
            return
        if estimate is None:
            return
        how = "exact" if estimate.exact else "estimate: " + "; ".join(estimate.reasons)
        log.info(
            "%s: %d steps per epoch from the dataset (%s)%s",
            self.task_id,
            estimate.steps_per_epoch,
            how,
            f"; the trainer will stop: {estimate.error}" if estimate.error else "",
        )
        self.follower.tracker.estimate_steps_per_epoch(estimate.steps_per_epoch)

    async def final_read(self) -> None:
        """The writer has ended: take everything, the unterminated last line too."""
        await asyncio.to_thread(self.follower.drain)
        await self.flush()

    async def flush(self) -> None:
        """Hand the pass's events to the bus; then, if a state.json write is due, write it
        once they are in events.jsonl: its log_offset must never pass a line whose log event
        a daemon killed now would lose (the restart reads on from that offset)."""
        self.pending.flush(self.ctx.emit)
        fields = self.follower.take_held_state()
        if fields is None:
            return
        await self.ctx.events_recorded()
        await asyncio.to_thread(self.ctx.store.update_state, self.task_id, fields)

    def _observe(
        self, shim: ShimInfo | None, job_dir: Path, look_for_exit: bool
    ) -> tuple[bool, ExitStatus | None, bool]:
        """(new output read, the recorded exit, the shim alive) — blocking, in a thread.
        Without ``look_for_exit`` the shim is known to run (its pidfd has not fired)."""
        read = self.follower.poll()
        if shim is None:
            return read, None, False
        if not look_for_exit:
            return read, None, True
        status = self.ctx.launcher.read_exit(job_dir)
        return read, status, status is not None or self.ctx.launcher.is_alive(shim)

    def trouble(self) -> str | None:
        """Why the run must be ended now, if it must: a traceback during caching (the real
        trainer then hangs forever) or a hang (``dpd.supervisor.health``)."""
        facts = self.follower.facts
        if self.follower.caching_failed():
            return "a traceback during caching: " + (facts.failure.message or "")
        hang = health.hang(self.rule, facts.activity, facts.phase, self.ctx.clock.monotonic())
        return hang.reason() if hang is not None else None

    def health_due(self, checked: bool) -> float:
        """Seconds until a hang could be declared (a wake-up is due by then)."""
        if not checked:
            return self.ctx.timing.fallback_period
        now = self.ctx.clock.monotonic()
        return health.due_in(self.rule, self.follower.facts.activity, now) + 0.05
