"""The line index a job's follower keeps: saved with state.json, resumed (not built again)
when a restarted daemon re-attaches, and carried on by the next run of the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dpd.jobs.states import Status
from dpd.logs.entries import make_filter
from dpd.logs.reader import read_tail
from dpd.spool.store import JobStore
from dpd.supervisor.follower import JobFollower, PendingEvents
from dpd.trainlog import lineindex
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.lineindex import LineIndex
from tests.jobfiles import add_job, new_store
from tests.logs.logfactory import make_hinted_log, naive_lines, naive_tail

TASK = "indexed"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> JobStore:
    monkeypatch.setattr(lineindex, "RECORD_SPAN", 2048)
    store, data = new_store(tmp_path)
    add_job(store, data, TASK)
    store.transition(TASK, Status.QUEUED, Status.RUNNING)
    return store


@pytest.fixture
def indexed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The byte ranges of the log run through an index builder, as they are."""
    ranges: list[tuple[int, int]] = []
    take = lineindex._OpenRecord.take

    def spy(self: Any, text: Any, base: int, low: int, high: int) -> None:
        ranges.append((base + low, base + high))
        take(self, text, base, low, high)

    monkeypatch.setattr(lineindex._OpenRecord, "take", spy)
    return ranges


def log_of(store: JobStore) -> Path:
    return store.layout.job_dir(TASK) / "train.log"


def follower(store: JobStore, counts: LineCounter) -> JobFollower:
    return JobFollower(store, PendingEvents(), TASK, epochs=1, max_steps=None,
                       line_counts=counts)  # fmt: skip


def append(log: Path, data: bytes) -> None:
    with log.open("ab") as handle:
        handle.write(data)


def read_all(job: JobFollower) -> None:
    while job.poll():
        pass


def a_cold_build(log: Path, tmp_path: Path) -> bytes:
    """The records a build of ``log`` in one pass writes (in another directory)."""
    copy = tmp_path / "cold" / "train.log"
    copy.parent.mkdir(exist_ok=True)
    copy.write_bytes(log.read_bytes())
    with copy.open("rb") as handle:
        view = LineIndex(copy).extend(handle, copy.stat().st_size)
    return bytes(view.packed)


def saved_end(log: Path) -> int:
    with log.open("rb") as handle:
        return LineIndex(log).view(handle).covered


def answers_match(log: Path, counts: LineCounter) -> None:
    for level in ("WARNING", "ERROR"):
        keep = make_filter(level, None)
        page = read_tail(log, 10_000, keep, None, counts)
        assert page.entries == naive_tail(log, 10_000, keep)
        assert page.total_lines == len(naive_lines(log))


def test_a_re_attached_follower_resumes_the_saved_index(
    store: JobStore, indexed: list[tuple[int, int]], tmp_path: Path
) -> None:
    log = log_of(store)
    text = make_hinted_log(tmp_path / "source.log", steps=1500).read_bytes()
    append(log, text[:300_000])
    first = follower(store, LineCounter())
    read_all(first)
    first.write_state()
    covered = saved_end(log)
    assert covered > 290_000
    append(log, text[300_000:])  # read after the last state.json write: read again
    indexed.clear()

    counts = LineCounter()  # a new daemon
    restarted = follower(store, counts)
    restarted.restore(store.get(TASK))
    read_all(restarted)
    assert indexed and min(low for low, _ in indexed) == covered  # nothing built again
    index = counts.index(log)
    with log.open("rb") as handle:
        assert bytes(index.view(handle).packed) == a_cold_build(log, tmp_path)
    answers_match(log, counts)


def test_the_next_run_carries_the_index_on_after_a_restart(
    store: JobStore, indexed: list[tuple[int, int]], tmp_path: Path
) -> None:
    log = log_of(store)
    text = make_hinted_log(tmp_path / "source.log", steps=1500).read_bytes()
    append(log, text[:400_000])
    first = follower(store, LineCounter())
    read_all(first)
    first.write_state()
    covered = saved_end(log)
    indexed.clear()

    counts = LineCounter()  # the daemon restarted; the job runs again, appending to its log
    second = follower(store, counts)
    second.follower.seek(log.stat().st_size)
    append(log, text[400_000:])
    read_all(second)
    assert min(low for low, _ in indexed) == covered  # the gap before the run, then the run
    with log.open("rb") as handle:
        assert bytes(counts.index(log).view(handle).packed) == a_cold_build(log, tmp_path)
    answers_match(log, counts)


def test_the_index_is_saved_with_state_json_and_read_by_the_logs_api(
    store: JobStore, tmp_path: Path
) -> None:
    log = log_of(store)
    append(log, make_hinted_log(tmp_path / "source.log", steps=1500).read_bytes())
    counts = LineCounter()
    job = follower(store, counts)
    read_all(job)
    job.write_state()
    with log.open("rb") as handle:
        assert saved_end(log) == counts.index(log).view(handle).covered
    assert saved_end(log) > log.stat().st_size - 4096
    answers_match(log, counts)
    answers_match(log, LineCounter())  # a process that only has the file
