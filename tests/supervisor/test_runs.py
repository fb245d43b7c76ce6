"""A run's life cycle, fast: the real supervisor, store and follower over a fake launcher
(tests/fakes/fake_launcher.py: no process) and a clock the test moves. Each test drives one
edge of ``dpd.supervisor.run``: stops in every phase, a failed launch, a restart, hangs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dpd.config import Config, StaticGpu, TrainerConfig
from dpd.errors import Conflict
from dpd.jobs.states import Status
from dpd.spool.store import JobStore
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.gpus import StaticInventory
from dpd.supervisor.shim_records import DuplicatePrevented, ExitStatus
from dpd.supervisor.supervisor import Supervisor
from dpd.supervisor.wakeups import WatchTiming
from tests.fakes.fake_clock import FakeClock
from tests.fakes.fake_launcher import FakeLauncher
from tests.jobfiles import add_job, new_store
from tests.ports import master_port_range
from tests.waiting import wait_until

FAST = WatchTiming(period=0.002, idle_period=0.002, fallback_period=0.02)
INACTIVITY = 600.0
TERMINAL = ("completed", "failed", "stopped")
SET_UP = [  # diffusion-pipe issue 417: the last lines before the hang
    "[2025-02-12 07:01:02,020] [INFO] [logging.py:123:log_dist] [Rank 0] DeepSpeed Final "
    "Optimizer = adamw_optimi",
    "Global batch size = 32",
]


def step(n: int, seconds: float = 2.0) -> str:
    return f"steps: {n} loss: 0.4567 iter time (s): {seconds:0.3f} samples/sec: 2.000"


@dataclass
class Rig:
    store: JobStore
    data: Path
    launcher: FakeLauncher
    clock: FakeClock
    monitor: GpuMonitor
    config: Config
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    supervisor: Supervisor | None = None

    def emit(self, scope: str, task_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            self.events.append((task_id, data))

    async def start(self) -> Supervisor:
        self.supervisor = Supervisor(
            self.config, self.store, self.emit, self.monitor, self.launcher, self.clock, FAST
        )
        await self.supervisor.start()
        return self.supervisor

    @property
    def sup(self) -> Supervisor:
        assert self.supervisor is not None
        return self.supervisor

    def add(self, task_id: str) -> None:
        add_job(self.store, self.data, task_id)

    def status(self, task_id: str) -> str:
        return str(self.store.get(task_id)["status"])

    def told(self, task_id: str) -> list[str]:
        """The statuses announced for the task, in order (its first, queued, is the store's)."""
        return [data["status"] for t, data in self.events if t == task_id]

    def gpu_free(self) -> bool:
        return not self.sup.assignments() and not self.sup.running.ports.held


async def until(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait for a condition the supervisor's tasks bring about (never a fixed sleep); the
    fakes answer within a few loop turns, so look every millisecond."""
    await wait_until(condition, timeout=timeout, interval=0.001)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store, data = new_store(tmp_path)
    base = master_port_range(21)[0]
    config = Config(
        trainer=TrainerConfig(
            inactivity_timeout=INACTIVITY,
            step_timeout_factor=10,
            stop_timeout=5,
            master_port_range=[base, base + 20],
        )
    )
    monitor = GpuMonitor(StaticInventory([StaticGpu()]), 5.0)
    await monitor.poll_now()
    rig = Rig(store, data, FakeLauncher(), FakeClock(), monitor, config)
    yield rig
    if rig.supervisor is not None:
        await rig.supervisor.close(stop_jobs=False)


async def ended(rig: Rig, task_id: str, status: str | None = None) -> None:
    """Until the run has ended whole: its outcome written, announced, its GPU let go."""
    await until(lambda: rig.status(task_id) in TERMINAL and task_id not in rig.sup.running)
    assert rig.told(task_id)[-1] == rig.status(task_id)
    if status is not None:
        assert rig.status(task_id) == status, rig.store.get(task_id).get("error")


async def launched(rig: Rig, task_id: str) -> None:
    rig.add(task_id)
    await rig.sup.schedule_once()
    await until(lambda: rig.launcher.alive(task_id) and rig.status(task_id) == "running")


# --------------------------------------------------------------------------------- stops


async def test_a_stop_while_queued_never_launches(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "busy")
    rig.add("waiting")  # one GPU: it stays queued
    await rig.sup.schedule_once()
    state = await rig.sup.stop("waiting")
    assert state["status"] == "stopped" and state["stopped_at"] and state["run"] == 0
    assert rig.told("waiting") == ["stopped"]
    rig.launcher.end("busy", 1)
    await ended(rig, "busy", "failed")
    await rig.sup.schedule_once()
    assert rig.launcher.spawns == ["busy"] and rig.gpu_free()
    with pytest.raises(Conflict):
        await rig.sup.stop("waiting")


async def test_a_stop_before_the_launch_claims_the_job_launches_nothing(rig: Rig) -> None:
    await rig.start()
    rig.add("t")
    await rig.sup.schedule_once()  # placed: its run's task has not run yet
    assert "t" in rig.sup.running
    state = await rig.sup.stop("t")
    assert state["status"] == "stopped"
    assert rig.launcher.spawns == [] and rig.told("t") == ["stopped"] and rig.gpu_free()


async def test_a_stop_during_the_spawn_stops_what_was_spawned(rig: Rig) -> None:
    await rig.start()
    rig.launcher.spawn_gate = asyncio.Event()
    rig.add("t")
    await rig.sup.schedule_once()
    await until(rig.launcher.spawning.is_set)
    stopping = asyncio.create_task(rig.sup.stop("t"))
    await asyncio.sleep(0.01)
    assert not stopping.done()  # it waits for the launch it cannot cut short
    rig.launcher.spawn_gate.set()
    state = await asyncio.wait_for(stopping, 5)
    assert state["status"] == "stopped"
    assert rig.told("t") == ["running", "stopping", "stopped"]
    assert rig.launcher.runs["t"].stops == [(True, False)] and not rig.launcher.alive("t")
    assert rig.gpu_free()


async def test_stop_and_launch_racing_for_a_queued_job_end_it_once(rig: Rig) -> None:
    """Issue 14 item 4, every interleaving of the two within a few loop turns."""
    await rig.start()
    for round_ in range(40):
        task_id = f"r{round_}"
        rig.add(task_id)
        placing = asyncio.create_task(rig.sup.schedule_once())
        for _ in range(round_ % 7):
            await asyncio.sleep(0)
        state = await rig.sup.stop(task_id, force=round_ % 2 == 1)
        await placing
        assert state["status"] == "stopped", (task_id, state["status"])
        assert [s for s in rig.told(task_id) if s in TERMINAL] == ["stopped"]
        assert not rig.launcher.alive(task_id)
        await until(rig.gpu_free)  # a launch that lost lets go of the GPU as it learns so
    await launched(rig, "after")  # the GPU is free for the next job


class Race:
    """Lets a stop's and a launch's status change of one queued job both arrive at the
    store (each in its worker thread), then lets ``first`` through; ``second`` goes when the
    test says (``second_may_go``), after ``first`` is done."""

    def __init__(self, store: JobStore, first: Status, second: Status) -> None:
        self._real = store.transition
        self.first, self.second = first, second
        self.arrived = {first: threading.Event(), second: threading.Event()}
        self.first_done = threading.Event()
        self.second_may_go = threading.Event()

    def transition(self, task_id: str, expect: Any, to: Status, **fields: Any) -> Any:
        if to not in self.arrived:
            return self._real(task_id, expect, to, **fields)
        self.arrived[to].set()
        self.arrived[self.second if to is self.first else self.first].wait(5)
        if to is self.second:
            self.first_done.wait(5)
            self.second_may_go.wait(5)
        try:
            return self._real(task_id, expect, to, **fields)
        finally:
            if to is self.first:
                self.first_done.set()


async def race(rig: Rig, monkeypatch: pytest.MonkeyPatch, first: Status) -> dict[str, Any]:
    """A stop that found the job queued (no run yet) and the scheduler's launch, with their
    compare-and-sets in the order given; returns what the stop answered."""
    await rig.start()
    rig.add("t")
    second = Status.STOPPED if first is Status.RUNNING else Status.RUNNING
    gate = Race(rig.store, first, second)
    monkeypatch.setattr(rig.store, "transition", gate.transition)
    stopping = asyncio.create_task(rig.sup.stop("t"))
    await until(gate.arrived[Status.STOPPED].is_set)  # it read "queued" and writes now
    await rig.sup.schedule_once()
    await until(gate.first_done.is_set)
    if first is Status.RUNNING:
        # the launch goes on to the spawn before the stop learns that it lost. Otherwise the
        # two threads' answers reach the loop in either order, and a stop that comes first
        # rightly ends the run unspawned: running -> stopped, a different (valid) story
        await until(rig.launcher.spawning.is_set)
    gate.second_may_go.set()
    state = await asyncio.wait_for(stopping, 5)
    await until(rig.gpu_free)
    assert state["status"] == "stopped" and rig.status("t") == "stopped"
    assert [s for s in rig.told("t") if s in TERMINAL] == ["stopped"]
    assert not rig.launcher.alive("t")
    return state


async def test_a_stop_that_found_the_job_queued_loses_to_the_launch_and_stops_its_run(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await race(rig, monkeypatch, first=Status.RUNNING)
    assert rig.told("t") == ["running", "stopping", "stopped"]


async def test_a_launch_that_found_the_job_queued_loses_to_a_stop_and_lets_go(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await race(rig, monkeypatch, first=Status.STOPPED)
    assert rig.told("t") == ["stopped"] and rig.launcher.spawns == []
    assert "t" not in rig.sup.running


async def test_a_second_stop_during_a_stop_waits_for_the_same_end(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.stop_gate = asyncio.Event()
    first = asyncio.create_task(rig.sup.stop("t"))
    await until(lambda: rig.status("t") == "stopping")
    second = asyncio.create_task(rig.sup.stop("t"))
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    rig.launcher.stop_gate.set()
    assert (await first)["status"] == (await second)["status"] == "stopped"
    assert len(rig.launcher.runs["t"].stops) == 1
    assert rig.told("t") == ["running", "stopping", "stopped"]


async def stop_sent(rig: Rig, task_id: str, count: int = 1) -> None:
    """Until ``count`` stops of the task's run have reached the launcher. The status says
    ``stopping`` before the run's stop task has run at all: that is no sign of it."""
    await until(lambda: len(rig.launcher.runs[task_id].stops) >= count)


async def test_force_after_a_graceful_stop_kills_at_once(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.stop_gate = asyncio.Event()  # the graceful stop never gets anywhere
    graceful = asyncio.create_task(rig.sup.stop("t"))
    await stop_sent(rig, "t")  # held at the gate: the force must not wait for it
    state = await asyncio.wait_for(rig.sup.stop("t", force=True), 5)
    assert state["status"] == "stopped"
    assert [graceful for graceful, _ in rig.launcher.runs["t"].stops] == [True, False]
    assert (await asyncio.wait_for(graceful, 5))["status"] == "stopped"
    assert rig.gpu_free()


# ------------------------------------------------------------------- launch and restart


async def test_a_launch_that_fails_fails_the_job_and_frees_the_gpu(rig: Rig) -> None:
    await rig.start()
    rig.launcher.fail_spawn = "the shim died: no python"
    rig.add("t")
    await rig.sup.schedule_once()
    await ended(rig, "t")
    state = rig.store.get("t")
    assert state["status"] == "failed"
    assert "could not be started" in state["error"]["reason"]
    assert "no python" in state["error"]["reason"]
    assert rig.told("t") == ["running", "failed"] and rig.gpu_free()


async def test_a_trainer_that_dies_before_the_run_is_followed_fails_the_job(rig: Rig) -> None:
    """The shim started the trainer, which ended before the first look at it."""
    await rig.start()
    rig.launcher.exit_at_spawn = 1
    rig.add("t")
    await rig.sup.schedule_once()
    await ended(rig, "t")
    state = rig.store.get("t")
    assert state["status"] == "failed" and "ImportError: torch" in state["error"]["reason"]
    assert state["error"]["exit_code"] == 1 and state["progress"]["phase"] is None
    assert rig.told("t") == ["running", "failed"] and rig.gpu_free()


async def test_a_restart_during_a_launch_queues_the_job_again(rig: Rig) -> None:
    """The daemon died between "running" and the shim's start: nothing ran, so it is
    queued again and launched once."""
    await rig.start()
    await launched(rig, "t")
    await rig.sup.close(stop_jobs=False)
    rig.launcher.never_started.add("t")
    del rig.launcher.runs["t"]
    rig.launcher.spawns.clear()
    await rig.start()
    assert rig.status("t") == "queued" and rig.told("t")[-1] == "queued"
    rig.launcher.never_started.clear()
    await rig.sup.schedule_once()
    await until(lambda: rig.launcher.alive("t"))
    assert rig.launcher.spawns == ["t"] and rig.store.get("t")["run"] == 2


async def test_a_restart_adopts_a_live_run_and_records_one_that_ended_meanwhile(
    rig: Rig,
) -> None:
    rig.monitor = GpuMonitor(StaticInventory([StaticGpu(), StaticGpu()]), 5.0)
    await rig.monitor.poll_now()
    await rig.start()
    await launched(rig, "alive")
    rig.launcher.print("alive", *SET_UP)  # past caching: "ends" may build the same cache now
    await until(lambda: (rig.store.get("alive")["progress"] or {}).get("phase") == "training")
    await launched(rig, "ends")
    await rig.sup.close(stop_jobs=False)
    rig.launcher.print("ends", "TRAINING COMPLETE!")
    rig.launcher.end("ends", 0)
    await rig.start()  # a new supervisor: it knows only what is on disk
    await ended(rig, "ends", "completed")
    assert "alive" in rig.sup.running and rig.status("alive") == "running"
    assert rig.launcher.spawns == ["alive", "ends"]  # nothing launched again
    rig.launcher.print("alive", "TRAINING COMPLETE!")
    rig.launcher.end("alive", 0)
    await ended(rig, "alive", "completed")
    assert rig.gpu_free()


async def test_a_restart_during_a_stop_goes_on_stopping(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.stop_gate = asyncio.Event()
    stopping = asyncio.create_task(rig.sup.stop("t"))
    await stop_sent(rig, "t")  # the old daemon's stop is under way when it closes
    await rig.sup.close(stop_jobs=False)
    # the stop answers what the disk says; the next daemon goes on with it
    assert (await asyncio.wait_for(stopping, 5))["status"] == "stopping"
    assert rig.launcher.alive("t")  # the closed supervisor's stop was cut short
    rig.launcher.stop_gate.set()
    await rig.start()
    await ended(rig, "t", "stopped")
    assert len(rig.launcher.runs["t"].stops) == 2 and rig.gpu_free()


async def test_a_stop_cut_short_by_close_never_reaches_the_launcher(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon closes while a stop is writing ``stopping``: the closed supervisor sends
    nothing to the trainer afterwards (the next daemon finds ``stopping`` and goes on), and
    the stop answers rather than waiting for an end that no one watches any more."""
    await rig.start()
    await launched(rig, "t")
    real, writing, release = rig.store.transition, threading.Event(), threading.Event()

    def transition(task_id: str, expect: Any, to: Status, **fields: Any) -> Any:
        if to is Status.STOPPING:
            writing.set()
            release.wait(5)
        return real(task_id, expect, to, **fields)

    monkeypatch.setattr(rig.store, "transition", transition)
    stopping = asyncio.create_task(rig.sup.stop("t"))
    await until(writing.is_set)
    await rig.sup.close(stop_jobs=False)
    release.set()
    await until(lambda: stopping.done() or rig.launcher.runs["t"].stops)
    assert rig.launcher.runs["t"].stops == [] and rig.launcher.alive("t")
    assert (await asyncio.wait_for(stopping, 5))["status"] == "stopping"
    assert rig.told("t")[-1] == "stopping"
    await rig.start()  # the next daemon goes on stopping
    await ended(rig, "t", "stopped")
    assert rig.launcher.runs["t"].stops == [(True, False)] and rig.gpu_free()


# ----------------------------------------------------------------------- outcomes, hangs


async def test_a_completed_job_is_in_no_phase(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.print("t", *SET_UP, step(1), "Saving model", "TRAINING COMPLETE!")
    rig.launcher.end("t", 0)
    await ended(rig, "t", "completed")
    state = rig.store.get("t")
    assert state["progress"]["phase"] is None and state["progress"]["current_step"] == 1


async def test_sigkill_nobody_asked_for_says_out_of_memory(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.print("t", *SET_UP, step(1))
    rig.launcher.end("t", None, 9)
    await ended(rig, "t")
    state = rig.store.get("t")
    assert state["status"] == "failed"
    assert "killed by SIGKILL (out of memory?)" in state["error"]["reason"]
    assert rig.gpu_free()


async def hung(rig: Rig, task_id: str) -> dict[str, Any]:
    await ended(rig, task_id)
    state = rig.store.get(task_id)
    assert state["status"] == "failed", state["status"]
    assert rig.told(task_id)[-1] == "failed" and rig.gpu_free()
    assert not rig.launcher.alive(task_id)
    assert rig.launcher.runs[task_id].stops == [(True, False)]  # SIGTERM, then SIGKILL
    return state


async def test_silence_before_the_first_step_is_a_hang(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.print("t", *SET_UP)
    await until(lambda: rig.store.get("t")["log_offset"] > 0)
    rig.clock.advance(INACTIVITY - 1)
    await asyncio.sleep(0.05)
    assert rig.status("t") == "running"  # not yet
    rig.clock.advance(2)
    reason = (await hung(rig, "t"))["error"]["reason"]
    assert "hung" in reason and "before the first step" in reason and "training" in reason
    assert f"for {int(INACTIVITY + 1)} s" in reason and "Global batch size = 32" in reason


async def test_no_new_step_mid_training_is_a_hang_after_the_step_timeout(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.print("t", *SET_UP, step(1, 90.0), step(2, 30.0))
    await until(lambda: (rig.store.get("t")["progress"] or {}).get("current_step") == 2)
    # the limit is 10 x the slowest step (900 s), more than the inactivity timeout
    rig.clock.advance(INACTIVITY + 10)
    for _ in range(3):
        rig.launcher.print("t", "a warning that is not progress")
        await asyncio.sleep(0.02)
    assert rig.status("t") == "running"
    rig.clock.advance(900 - INACTIVITY)
    reason = (await hung(rig, "t"))["error"]["reason"]
    assert "no new step for 910 s during training" in reason
    assert "step timeout 900 s" in reason and "90.0 s" in reason
    assert "last line: a warning that is not progress" in reason


async def test_a_force_stop_during_the_daemons_own_stop_kills_at_once(rig: Rig) -> None:
    """A hung run is being stopped by the daemon (staged: SIGTERM, then SIGKILL after
    ``stop_timeout``). The user's force stop must not wait out that stage: SIGKILL now. The
    job still fails with the hang as its reason."""
    await rig.start()
    await launched(rig, "t")
    rig.launcher.stop_gate = asyncio.Event()  # the daemon's graceful stop never gets anywhere
    rig.launcher.print("t", *SET_UP)
    await until(lambda: rig.store.get("t")["log_offset"] > 0)
    rig.clock.advance(INACTIVITY + 1)
    await stop_sent(rig, "t")
    assert rig.status("t") == "running"  # a daemon-made stop shows as failed at its end
    state = await asyncio.wait_for(rig.sup.stop("t", force=True), 5)
    assert [graceful for graceful, _ in rig.launcher.runs["t"].stops] == [True, False]
    assert state["status"] == "failed" and "hung" in state["error"]["reason"]
    assert rig.gpu_free()


async def test_output_while_evaluating_counts_as_life(rig: Rig) -> None:
    await rig.start()
    await launched(rig, "t")
    rig.launcher.print("t", *SET_UP, step(1), "Running eval")
    for _ in range(4):  # a long eval, printing now and then: 4 x 500 s without a new step
        rig.clock.advance(500)
        rig.launcher.print("t", " 50%|#####     | 5/10")
        offset = rig.store.get("t")["log_offset"]
        await until(lambda offset=offset: rig.store.get("t")["log_offset"] > offset)
    assert rig.status("t") == "running"
    rig.launcher.print("t", "TRAINING COMPLETE!")
    rig.launcher.end("t", 0)
    await ended(rig, "t", "completed")


# ------------------------------------------------- fleet requeue mode (FLEET.md §9.4, §10.2)


async def test_the_daemon_fence_stops_a_training_run_with_save_quit_and_fails_it(
    rig: Rig,
) -> None:
    """The node's lease ran out: the run is stopped staged from save_quit (a checkpoint to
    resume from), not as a user's stop; it ends failed with reason ``fenced``."""
    await rig.start()
    await launched(rig, "t")
    rig.launcher.print("t", *SET_UP, step(1))
    await until(lambda: (rig.store.get("t")["progress"] or {}).get("current_step") == 1)
    assert await rig.sup.fence("t") is True
    await ended(rig, "t", "failed")
    assert rig.store.get("t")["error"]["reason"] == "fenced"
    assert rig.launcher.runs["t"].stops == [(True, True)]  # graceful, with save_quit
    assert rig.told("t") == ["running", "failed"] and rig.gpu_free()
    assert await rig.sup.fence("t") is False  # nothing of it runs any more


async def test_a_run_its_shim_fenced_fails_fenced_though_it_quit_cleanly(rig: Rig) -> None:
    """The shim stopped the trainer (the daemon was paused): save_quit made it print
    ``Manually quitting`` and exit 0, which alone would read as a user's stop."""
    await rig.start()
    await launched(rig, "t")
    run = rig.launcher.runs["t"]
    rig.launcher.print("t", *SET_UP, step(1), "Manually quitting")
    run.exit = ExitStatus(0, None, 0.0, "fenced: the lease ran out", 0, run.info.run, fenced=True)
    await ended(rig, "t", "failed")
    assert rig.store.get("t")["error"]["reason"] == "fenced"


async def test_a_held_run_lock_fails_the_job_duplicate_prevented(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await rig.start()

    async def refused(spec: Any) -> Any:
        raise DuplicatePrevented(f"job {spec.task_id}: duplicate_prevented: lock held")

    monkeypatch.setattr(rig.launcher, "spawn", refused)
    rig.add("t")
    await rig.sup.schedule_once()
    await ended(rig, "t", "failed")
    assert rig.store.get("t")["error"]["reason"] == "duplicate_prevented"
    assert rig.gpu_free()
