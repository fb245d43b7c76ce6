"""JobFollower in-process, on a real JobStore: what it records when a daemon dies between
two state.json writes, and how it batches its events for the loop."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dpd.config import Config
from dpd.events.bus import EventBus
from dpd.jobs.states import Status
from dpd.spool.store import JobStore
from dpd.supervisor import follower as follower_module
from dpd.supervisor.context import RunContext
from dpd.supervisor.follower import JobFollower, PendingEvents
from dpd.supervisor.output_parser import OutputParser
from dpd.supervisor.seams import SYSTEM_CLOCK
from dpd.supervisor.wakeups import WatchTiming
from dpd.supervisor.watch import RunWatch
from dpd.trainlog import counter as counter_module
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.follow import LogChanges
from tests.jobfiles import add_job, new_store

TASK = "f"


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    store, data = new_store(tmp_path)
    add_job(store, data, TASK)
    store.transition(TASK, Status.QUEUED, Status.RUNNING)
    return store


class Daemon:
    """The follower's side of one daemon life: events go to events.jsonl as the bus would."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.pending = PendingEvents()
        self.follower = JobFollower(store, self.pending, TASK, epochs=1, max_steps=None)

    def poll(self, write_state: bool) -> None:
        if not write_state:  # as if the last state.json write were just now
            self.follower._state_written = follower_module.time.monotonic()
            self.follower._steps_written = self.follower.tracker.current_step
        else:
            self.follower._state_written = 0.0
        self.follower.poll()
        self.persist()

    def persist(self) -> None:
        recorded: list[tuple[str, dict[str, Any]]] = []
        self.pending.flush(lambda scope, task, kind, data: recorded.append((kind, data)))
        if recorded:
            self.store.append_events(TASK, recorded)


def step_line(step: int) -> str:
    return f"steps: {step} loss: 0.{step}000 iter time (s): 1.000 samples/sec: 2.667\n"


def write(store: JobStore, *lines: str) -> None:
    with (store.layout.job_dir(TASK) / "train.log").open("a") as handle:
        handle.write("".join(lines))


def metric_steps(store: JobStore) -> list[int]:
    path = store.layout.job_dir(TASK) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r["step"] for r in records if r["type"] == "step" and r["metric"] == "loss"]


def logged_steps(store: JobStore) -> list[str]:
    events = store.read_events(TASK)
    lines = [line for e in events if e["type"] == "log" for line in e["data"]["lines"]]
    return [line for line in lines if line.startswith("steps: ")]


def test_a_restart_after_reads_past_the_saved_offset_repeats_and_loses_nothing(
    store: JobStore,
) -> None:
    first = Daemon(store)
    write(store, step_line(1), step_line(2))
    first.poll(write_state=True)
    saved = store.get(TASK)["log_offset"]
    write(store, step_line(3))
    first.poll(write_state=False)
    write(store, step_line(4), "a line without a metric\n")
    first.poll(write_state=False)
    assert store.get(TASK)["log_offset"] == saved  # state.json lags: the daemon dies here

    write(store, step_line(5), step_line(6))  # the trainer goes on meanwhile
    second = Daemon(store)
    second.follower.restore(store.get(TASK))
    second.poll(write_state=False)
    second.poll(write_state=False)
    write(store, step_line(7))
    second.poll(write_state=True)

    assert metric_steps(store) == [1, 2, 3, 4, 5, 6, 7]
    assert Counter(logged_steps(store)) == Counter(step_line(s)[:-1] for s in range(1, 8))
    assert second.follower.tracker.current_step == 7
    assert (
        store.get(TASK)["log_offset"] == (store.layout.job_dir(TASK) / "train.log").stat().st_size
    )


def test_pending_events_are_handed_over_in_order_once(store: JobStore) -> None:
    pending = PendingEvents()
    follower = JobFollower(store, pending, TASK, epochs=1, max_steps=None)
    write(store, step_line(1), step_line(2))
    follower.poll()
    kinds: list[str] = []
    pending.flush(lambda scope, task, kind, data: kinds.append(kind))
    assert kinds == ["metrics", "metrics", "log", "progress"]  # a loss per step, in order
    assert len(pending) == 0
    pending.flush(lambda *event: kinds.append("again"))
    assert "again" not in kinds


def test_the_final_drain_reads_past_the_per_read_limit(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follower_module, "READ_BYTES", 64)
    daemon = Daemon(store)
    write(store, *(step_line(s) for s in range(1, 9)), "TRAINING COMPLETE!")  # no newline
    assert daemon.follower.drain()
    daemon.persist()
    assert metric_steps(store) == list(range(1, 9))
    assert daemon.follower.facts.completed
    assert daemon.follower.follower.at_eof


def test_state_json_waits_for_two_new_steps_or_three_seconds_while_training(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(follower_module.time, "monotonic", lambda: clock[0])
    daemon = Daemon(store)
    follower = daemon.follower
    follower.facts.phase = "training"
    write(store, step_line(1))
    follower.poll()  # the first write: nothing was written yet, and the phase is new
    assert store.get(TASK)["progress"]["current_step"] == 1
    clock[0] += 1.5
    write(store, step_line(2))
    follower.poll()  # one new step only
    assert store.get(TASK)["progress"]["current_step"] == 1
    clock[0] += 0.5
    write(store, step_line(3))
    follower.poll()  # two new steps, a second after the last write
    assert store.get(TASK)["progress"]["current_step"] == 3
    clock[0] += 0.5
    write(store, step_line(4), step_line(5))
    follower.poll()  # two new steps, but within a second of the last write
    assert store.get(TASK)["progress"]["current_step"] == 3
    clock[0] += 2.6
    write(store, "a line\n")
    follower.poll()  # three seconds: written whatever the steps
    assert store.get(TASK)["progress"]["current_step"] == 5
    assert store.get(TASK)["log_offset"] == follower.follower.offset


def test_a_phase_change_is_written_at_once(store: JobStore) -> None:
    daemon = Daemon(store)
    follower = daemon.follower
    write(store, "hello\n")
    follower.poll()
    assert follower.facts.phase == store.get(TASK)["progress"]["phase"]
    follower.facts.phase = "caching"  # as the parser would set it
    write(store, "more\n")
    follower.poll()
    assert store.get(TASK)["progress"]["phase"] == "caching"


def test_the_logs_api_learns_line_counts_from_the_follower_live_and_after_a_restart(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tail of a live job's log must not count the whole file: the follower read every
    byte already and tells the shared LineCounter, also after re-attaching."""
    log = store.layout.job_dir(TASK) / "train.log"
    counted: list[tuple[int, int]] = []
    real_count = counter_module.count_newlines

    def spy(handle: Any, start: int, end: int) -> int:
        counted.append((start, end))
        return real_count(handle, start, end)

    monkeypatch.setattr(counter_module, "count_newlines", spy)
    counts = LineCounter()
    follower = JobFollower(store, PendingEvents(), TASK, epochs=1, max_steps=None,
                           line_counts=counts)  # fmt: skip
    write(store, "starting\n", "\n", "progress\r", "progress 2\r\n", step_line(1), step_line(2))
    follower.poll()
    follower.write_state()
    size = log.stat().st_size
    with log.open("rb") as handle:
        assert counts.total_lines(handle, log, size) == 5
    assert counted == [(size, size)]  # nothing left to count

    write(store, step_line(3))  # after the last state write: re-read after the restart
    restarted_counts = LineCounter()
    restarted = JobFollower(store, PendingEvents(), TASK, epochs=1, max_steps=None,
                            line_counts=restarted_counts)  # fmt: skip
    restarted.restore(store.get(TASK))
    restarted.poll()
    counted.clear()
    size = log.stat().st_size
    with log.open("rb") as handle:
        assert restarted_counts.total_lines(handle, log, size) == 6
    assert counted == [(size, size)]


def test_a_restart_takes_the_saved_parser_state_and_reads_nothing_again(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Daemon(store)
    write(store, "caching latents: 1%\n", "Global batch size = 1\n", step_line(1), step_line(2))
    first.poll(write_state=True)
    fed: list[str] = []
    feed = OutputParser.feed

    def counting(parser: OutputParser, line: str, now: float) -> list[Any]:
        fed.append(line)
        return feed(parser, line, now)

    monkeypatch.setattr(OutputParser, "feed", counting)
    second = Daemon(store)
    second.follower.restore(store.get(TASK))
    assert fed == []
    assert second.follower.parser.to_state() == first.follower.parser.to_state()
    assert second.follower.facts.to_state() == first.follower.facts.to_state()
    assert second.follower.facts.phase == first.follower.facts.phase == "training"
    assert second.follower.follower.newlines == 4
    write(store, step_line(3))
    second.poll(write_state=True)
    assert fed == [step_line(3)[:-1]]
    assert metric_steps(store) == [1, 2, 3]


def test_without_a_saved_parser_state_only_the_current_run_is_replayed(store: JobStore) -> None:
    """A resumed run appends to train.log: what the runs before it printed (a traceback, a
    manual quit) must not decide this one."""
    write(
        store,
        "Traceback (most recent call last):\n",
        '  File "train.py", line 1, in <module>\n',
        "torch.OutOfMemoryError: CUDA out of memory.\n",
        "Manually quitting\n",
    )
    run_start = (store.layout.job_dir(TASK) / "train.log").stat().st_size
    write(store, "caching latents: 5%\n")
    size = (store.layout.job_dir(TASK) / "train.log").stat().st_size
    state = dict(store.get(TASK), log_offset=size, run_log_start=run_start, output_state=None)
    follower = Daemon(store).follower
    follower.restore(state)
    assert follower.facts.phase == "caching"
    assert follower.facts.failure is None and not follower.facts.manual_quit
    assert not follower.caching_failed()


def test_the_phase_is_saved_once_in_progress_and_restored_from_there(store: JobStore) -> None:
    first = Daemon(store)
    write(store, "caching latents: 1%\n", "Global batch size = 1\n", step_line(1))
    first.poll(write_state=True)
    saved = store.get(TASK)
    assert saved["progress"]["phase"] == "training"
    assert "phase" not in saved["output_state"]["facts"]
    second = Daemon(store)
    second.follower.restore(saved)
    assert second.follower.facts.phase == "training"


def watch_on_a_bus(store: JobStore, bus: EventBus) -> RunWatch:
    """The daemon's RunWatch over ``bus`` (its launcher, monitor and registry unused)."""
    ctx = RunContext(
        Config(), store, bus.emit, None, None, SYSTEM_CLOCK, WatchTiming(), LogChanges(),  # type: ignore[arg-type]
        LineCounter(), None, lambda: None, lambda error: None, bus.recorded,  # type: ignore[arg-type]
    )  # fmt: skip
    return RunWatch(ctx, TASK)


async def test_the_saved_log_offset_waits_until_its_log_events_are_on_disk(
    store: JobStore,
) -> None:
    bus = EventBus(store, "node")
    watch = watch_on_a_bus(store, bus)
    write(store, step_line(1), step_line(2), step_line(3))
    assert await asyncio.to_thread(watch.follower.poll)  # the first read: state.json is due
    before = store.get(TASK).get("log_offset")
    saving = asyncio.ensure_future(watch.flush())
    for _ in range(20):  # the bus is not running: nothing reaches events.jsonl
        await asyncio.sleep(0)
    assert not saving.done()
    assert store.get(TASK).get("log_offset") == before
    assert await asyncio.to_thread(logged_steps, store) == []
    saving.cancel()  # the daemon is killed here: its log events and the offset die together

    def restart() -> None:
        write(store, step_line(4))  # the trainer went on; the next daemon reads from the offset
        restarted = Daemon(store)
        restarted.follower.restore(store.get(TASK))
        restarted.poll(write_state=False)  # up to where metrics.jsonl stands
        restarted.poll(write_state=True)

    await asyncio.to_thread(restart)
    assert await asyncio.to_thread(logged_steps, store) == [step_line(s)[:-1] for s in range(1, 5)]
    assert metric_steps(store) == [1, 2, 3, 4]


async def test_the_saved_log_offset_is_written_once_the_bus_has_recorded_the_lines(
    store: JobStore,
) -> None:
    bus = EventBus(store, "node")
    recording = asyncio.ensure_future(bus.run())
    try:
        watch = watch_on_a_bus(store, bus)
        write(store, step_line(1), step_line(2))
        assert await asyncio.to_thread(watch.follower.poll)
        await watch.flush()
        size = (store.layout.job_dir(TASK) / "train.log").stat().st_size
        assert store.get(TASK)["log_offset"] == size
        logged = await asyncio.to_thread(logged_steps, store)
        assert logged == [step_line(1)[:-1], step_line(2)[:-1]]
    finally:
        recording.cancel()
