"""The spool watcher: names reach the ingester at once, in batches of what is waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from dpd.spool.ingest import IngestResult, Outcome
from dpd.spool.layout import SpoolLayout
from dpd.spool.watcher import SpoolWatcher
from tests.waiting import wait_until


class Recorder:
    """A stand-in ingester: records each batch, answers with ``outcome(name)``."""

    def __init__(self, outcome: Callable[[str], Outcome] = lambda name: Outcome.ACCEPTED) -> None:
        self.batches: list[list[str]] = []
        self.outcome = outcome
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def __call__(self, names: Sequence[str]) -> list[IngestResult]:
        self.batches.append(list(names))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise OSError(5, "Input/output error")
        return [IngestResult(self.outcome(name), name) for name in names]

    @property
    def names(self) -> list[str]:
        return [name for batch in self.batches for name in batch]


@contextlib.asynccontextmanager
async def watching(
    layout: SpoolLayout, ingest: Recorder, **options: float
) -> AsyncIterator[SpoolWatcher]:
    watcher = SpoolWatcher(layout, ingest, **options)  # type: ignore[arg-type]
    task = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.started.wait(), 5)
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def put(layout: SpoolLayout, name: str) -> None:
    temporary = layout.incoming / f".{name}.tmp"
    temporary.write_text("{}")
    temporary.rename(layout.incoming / name)


async def test_a_lone_file_is_ingested_at_once_alone(layout: SpoolLayout) -> None:
    ingest = Recorder()
    async with watching(layout, ingest, workers=2):
        put(layout, "one.json")
        await wait_until(lambda: ingest.batches == [["one.json"]])


async def test_files_waiting_together_are_one_batch(layout: SpoolLayout) -> None:
    ingest = Recorder()
    async with watching(layout, ingest, workers=1, batch_size=4) as watcher:
        ingest.gate.clear()  # the only worker is held up by the first file...
        put(layout, "first.json")
        await wait_until(lambda: len(ingest.batches) == 1)
        for index in range(6):  # ...while six more arrive
            put(layout, f"job{index}.json")
        await wait_until(lambda: len(watcher._pending) == 7)
        ingest.gate.set()
        await wait_until(lambda: len(ingest.names) == 7)
        await watcher.drain()
    assert ingest.batches == [
        ["first.json"],
        ["job0.json", "job1.json", "job2.json", "job3.json"],
        ["job4.json", "job5.json"],
    ]


async def test_deferred_names_of_a_batch_are_tried_again(layout: SpoolLayout) -> None:
    attempts: dict[str, int] = {}

    def outcome(name: str) -> Outcome:
        attempts[name] = attempts.get(name, 0) + 1
        if name == "slow.json" and attempts[name] < 3:
            return Outcome.DEFERRED
        return Outcome.ACCEPTED

    ingest = Recorder(outcome)
    for name in ("fast.json", "slow.json"):
        put(layout, name)
    async with watching(layout, ingest, workers=1, retry_delay=0.01) as watcher:
        await wait_until(lambda: attempts.get("slow.json") == 3)
        await watcher.drain()
    assert attempts == {"fast.json": 1, "slow.json": 3}
    assert ingest.batches[0] == ["fast.json", "slow.json"]


@pytest.mark.parametrize("workers", [1, 3])
async def test_a_failed_batch_is_released_for_the_next_scan(
    layout: SpoolLayout, workers: int
) -> None:
    ingest = Recorder()
    ingest.fail_next = True
    for name in ("a.json", "b.json"):
        put(layout, name)
    async with watching(layout, ingest, workers=workers) as watcher:
        await wait_until(lambda: len(ingest.batches) == 1)
        await watcher.drain()  # nothing is left pending after the failure
        await watcher.scan()
        await wait_until(lambda: sorted(ingest.names) == ["a.json", "a.json", "b.json", "b.json"])
    assert ingest.batches[0] == ["a.json", "b.json"]
