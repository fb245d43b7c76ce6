"""The GPU monitor: polls on its interval in a thread, survives a failing or hanging
inventory, tells listeners, and stops on cancel."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from dpd.config import StaticGpu
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.gpus import GpuInfo, NvmlInventory, StaticInventory
from tests.fakes import fake_nvml
from tests.fakes.fake_nvml import FakeGpu, FakeMachine
from tests.waiting import wait_until

TIMEOUT = 5.0


class ScriptedInventory:
    """A static inventory whose snapshot can be made to fail or hang, counting its calls
    and the threads they ran on."""

    backend = "static"

    def __init__(self) -> None:
        self.inner = StaticInventory([StaticGpu("A", 1000), StaticGpu("B", 2000)])
        self.calls = 0
        self.threads: set[int] = set()
        self.fail: Exception | None = None
        self.release = threading.Event()
        self.release.set()
        self.closed = False

    def snapshot(self) -> list[GpuInfo]:
        self.calls += 1
        self.threads.add(threading.get_ident())
        self.release.wait(TIMEOUT)
        if self.fail is not None:
            raise self.fail
        return self.inner.snapshot()

    def close(self) -> None:
        self.closed = True


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_polls_every_interval_off_the_loop_and_notifies() -> None:
    inventory = ScriptedInventory()
    seen: list[list[GpuInfo]] = []
    monitor = GpuMonitor(inventory, 0.05, on_snapshot=[seen.append])
    task = asyncio.create_task(monitor.run())
    await wait_until(lambda: monitor.polls >= 4)
    await stop(task)
    assert threading.get_ident() not in inventory.threads
    assert [g.name for g in monitor.latest] == ["A", "B"]
    assert monitor.updated_at is not None and abs(monitor.updated_at - time.time()) < TIMEOUT
    assert len(seen) == monitor.polls and seen[-1] == monitor.latest


async def test_interval_is_respected_and_set_interval_applies_at_once() -> None:
    inventory = ScriptedInventory()
    monitor = GpuMonitor(inventory, 3600)
    task = asyncio.create_task(monitor.run())
    await wait_until(lambda: monitor.polls == 1)
    await asyncio.sleep(0.2)  # a stretch of silence IS the check: no second poll in it
    assert monitor.polls == 1  # an hour between polls
    monitor.set_interval(0.02)
    await wait_until(lambda: monitor.polls >= 5)
    await stop(task)


async def test_exception_in_snapshot_marks_every_gpu_unknown_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inventory = ScriptedInventory()
    monitor = GpuMonitor(inventory, 0.02)
    await monitor.poll_now()
    inventory.fail = RuntimeError("driver exploded")
    task = asyncio.create_task(monitor.run())
    with caplog.at_level(logging.WARNING, "dpd.gpus"):
        await wait_until(lambda: monitor.polls >= 6)
    assert [g.gpu_id for g in monitor.latest] == [0, 1]
    assert all("driver exploded" in (g.error or "") for g in monitor.latest)
    assert all(g.memory_free == 0 for g in monitor.latest)
    assert caplog.text.count("driver exploded") == 1  # logged once, not every poll
    inventory.fail = None
    await wait_until(lambda: all(g.error is None for g in monitor.latest))
    assert not task.done()
    await stop(task)


async def test_a_hanging_snapshot_is_given_up_and_not_piled_up() -> None:
    inventory = ScriptedInventory()
    monitor = GpuMonitor(inventory, 0.02, snapshot_timeout=0.1)
    await monitor.poll_now()
    inventory.release.clear()
    task = asyncio.create_task(monitor.run())
    await wait_until(lambda: monitor.polls >= 4)
    assert all("no answer" in (g.error or "") for g in monitor.latest)
    assert inventory.calls == 2  # the hung call is waited on again, not repeated
    inventory.release.set()
    await wait_until(lambda: all(g.error is None for g in monitor.latest))
    await stop(task)


async def test_a_failing_listener_does_not_stop_the_others() -> None:
    seen: list[int] = []

    def broken(snapshot: list[GpuInfo]) -> None:
        raise ValueError("listener bug")

    monitor = GpuMonitor(ScriptedInventory(), 1.0, on_snapshot=[broken])
    monitor.add_listener(lambda s: seen.append(len(s)))
    assert len(await monitor.poll_now()) == 2
    assert seen == [2]


async def test_cancel_stops_the_loop_and_close_releases_the_inventory() -> None:
    inventory = ScriptedInventory()
    monitor = GpuMonitor(inventory, 0.01)
    task = asyncio.create_task(monitor.run())
    await wait_until(lambda: monitor.polls >= 2)
    await stop(task)
    calls = inventory.calls
    await asyncio.sleep(0.1)  # a stretch of silence IS the check: no poll after the cancel
    assert inventory.calls == calls
    await monitor.close()
    assert inventory.closed


async def test_monitor_over_nvml_reports_a_lost_gpu_and_its_return() -> None:
    machine = FakeMachine(gpus=[FakeGpu(), FakeGpu()])
    inventory = NvmlInventory(fake_nvml.module(machine))
    inventory.start()
    monitor = GpuMonitor(inventory, 0.02)
    task = asyncio.create_task(monitor.run())
    await wait_until(lambda: len(monitor.latest) == 2)
    machine.gpus[0].lost = True
    await wait_until(lambda: monitor.latest[0].error is not None)
    assert monitor.latest[1].error is None
    machine.gpus[0].lost = False
    await wait_until(lambda: monitor.latest[0].error is None)
    await stop(task)
    await monitor.close()
    assert machine.refcount == 0
