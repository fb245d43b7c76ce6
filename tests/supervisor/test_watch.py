"""What wakes a follower task: inotify on train.log (LogChanges), a pidfd on the shim
(open_shim_pidfd) and the fallback period (wakeups.Wakeups)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from dpd.supervisor import proctree
from dpd.supervisor.launcher import ShimInfo, open_shim_pidfd
from dpd.supervisor.wakeups import Wakeups, WatchTiming
from dpd.trainlog.follow import LogChanges, LogFollower

FOREVER = 3600.0  # a wait that must end by an event, never by its timeout


async def test_a_write_to_a_watched_log_sets_its_event_and_only_its(tmp_path: Path) -> None:
    changes = LogChanges()
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    events = [asyncio.Event(), asyncio.Event()]
    for log in logs:
        log.touch()
    handles = [changes.watch(log, event) for log, event in zip(logs, events, strict=True)]
    assert all(handles)
    with logs[1].open("a") as handle:
        handle.write("steps: 1\n")
    await asyncio.wait_for(events[1].wait(), FOREVER)
    # inotify delivers in order: once a second write to b is seen, a stray event for a
    # (queued with or after the first) would have been read as well
    events[1].clear()
    with logs[1].open("a") as handle:
        handle.write("steps: 2\n")
    await asyncio.wait_for(events[1].wait(), FOREVER)
    assert not events[0].is_set()
    for handle in handles:
        changes.unwatch(handle)
    assert changes._inotify is None  # closed with its last watch


async def test_many_writes_wake_once_and_the_reader_never_blocks(tmp_path: Path) -> None:
    changes = LogChanges()
    log = tmp_path / "train.log"
    log.touch()
    event = asyncio.Event()
    handle = changes.watch(log, event)
    with log.open("a") as out:
        for step in range(2000):
            out.write(f"steps: {step}\n")
            out.flush()
    await asyncio.wait_for(event.wait(), FOREVER)
    event.clear()
    changes._drain()  # nothing queued: returns at once instead of blocking the loop
    with log.open("a") as out:
        out.write("more\n")
    await asyncio.wait_for(event.wait(), FOREVER)
    changes.unwatch(handle)


async def test_a_log_that_cannot_be_watched_says_so(tmp_path: Path) -> None:
    assert LogChanges().watch(tmp_path / "missing.log", asyncio.Event()) is None


def test_the_follower_says_whether_a_read_reached_the_end(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text("one\ntwo\nthree\n")
    follower = LogFollower(log)
    assert follower.read_new(max_bytes=5) == (["one"], 4)
    assert not follower.at_eof
    assert follower.read_new() == (["two", "three"], 14)
    assert follower.at_eof


def shim_info(pid: int) -> ShimInfo:
    start = proctree.start_time(pid)
    assert start is not None
    return ShimInfo("t", 1, proctree.boot_id(), pid, start, pid, pid, start, 0.0)


async def test_a_shim_pidfd_becomes_readable_when_the_process_ends() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        pidfd = await asyncio.to_thread(lambda: open_shim_pidfd(shim_info(child.pid)))
        assert pidfd is not None
        wake = Wakeups(NO_FALLBACK)
        asyncio.get_running_loop().add_reader(pidfd, wake.shim_ended, pidfd)
        assert child.stdin is not None
        child.stdin.close()  # the process ends
        await asyncio.wait_for(wake.ended.wait(), FOREVER)
        assert wake.event.is_set()
        os.close(pidfd)
    finally:
        child.kill()
        child.wait()


def test_no_pidfd_for_a_process_that_is_not_the_recorded_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    info = shim_info(child.pid)
    child.wait()
    assert open_shim_pidfd(info) is None  # gone
    mine = shim_info(os.getpid())
    other_start = ShimInfo(**{**mine.as_dict(), "shim_start_time": mine.shim_start_time + 1})
    assert open_shim_pidfd(other_start) is None  # the pid names another process


NO_FALLBACK = WatchTiming(period=0.01, fallback_period=FOREVER)


async def test_output_wakes_a_read_without_looking_for_the_end() -> None:
    wake = Wakeups(NO_FALLBACK)
    waiting = asyncio.create_task(
        wake.wait(read=True, more=False, watched=True, health_due=FOREVER)
    )
    await asyncio.sleep(0)  # one turn of the loop, no timed wait: the task is in its wait
    assert not waiting.done()
    wake.event.set()
    assert await asyncio.wait_for(waiting, FOREVER) is False


async def test_the_end_of_the_shim_wakes_a_look_for_the_exit_status() -> None:
    wake = Wakeups(NO_FALLBACK)
    reader, writer = os.pipe()  # stands in for the pidfd: readable once the shim ended
    try:
        asyncio.get_running_loop().add_reader(reader, wake.shim_ended, reader)
        waiting = asyncio.create_task(
            wake.wait(read=False, more=False, watched=True, health_due=FOREVER)
        )
        await asyncio.sleep(0)  # one turn of the loop: the task is in its wait
        os.write(writer, b"x")
        assert await asyncio.wait_for(waiting, FOREVER) is True
    finally:
        os.close(reader)
        os.close(writer)


async def test_a_backlog_is_read_on_and_a_due_health_check_ends_the_wait() -> None:
    wake = Wakeups(NO_FALLBACK)
    assert await wake.wait(read=True, more=True, watched=True, health_due=FOREVER) is False
    assert await wake.wait(read=False, more=False, watched=True, health_due=0.01) is True


async def test_without_watches_every_pass_looks_for_the_end() -> None:
    wake = Wakeups(WatchTiming(idle_period=0.01))
    assert await wake.wait(read=False, more=False, watched=False, health_due=FOREVER) is True
