"""Streaming an upload to disk: every byte in order, the limit, and no partial file or open
descriptor left behind when the stream fails or is cancelled."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dpd.preprocess import uploads
from dpd.preprocess.uploads import UploadTooLarge, stream_to_file


async def chunked(
    data: bytes, seed: int = 7, fail_after: int | None = None
) -> AsyncIterator[bytes]:
    """``data`` in chunks of 1 byte to 3 MiB, as a socket hands them over."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        if fail_after is not None and position >= fail_after:
            raise ConnectionResetError("client went away")
        size = rng.choice((1, 100, 65536, 300_000, 1 << 20, 3 << 20))
        yield data[position : position + size]
        position += size
        await asyncio.sleep(0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_every_byte_lands_in_order_and_writeback_covers_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    real = uploads.start_writeback

    def record(fd: int, offset: int, length: int) -> None:
        started.append((offset, length))
        real(fd, offset, length)  # the real system call too: it must accept these ranges

    monkeypatch.setattr(uploads, "start_writeback", record)
    data = os.urandom(21 << 20)
    target = tmp_path / "in" / "up.part"
    assert await stream_to_file(chunked(data), target, limit=len(data)) == len(data)
    assert target.read_bytes() == data
    assert len(started) >= 2 and started[0][0] == 0
    for (offset, length), (following, _) in itertools.pairwise(started):
        assert offset + length == following  # contiguous, each range hinted once
    assert all(length >= uploads.WRITEBACK_EVERY for _, length in started)


async def test_a_small_upload_is_one_write_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "small.part"
    assert await stream_to_file(chunked(b"abc" * 10), target, limit=100) == 30
    assert target.read_bytes() == b"abc" * 10


async def test_over_the_limit_no_partial_file_remains(tmp_path: Path) -> None:
    target = tmp_path / "big.part"
    before = open_fds()
    with pytest.raises(UploadTooLarge):
        await stream_to_file(chunked(os.urandom(5 << 20)), target, limit=(2 << 20) + 5)
    assert not target.exists() and open_fds() == before


async def test_a_broken_stream_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "cut.part"
    before = open_fds()
    with pytest.raises(ConnectionResetError):
        await stream_to_file(chunked(os.urandom(6 << 20), fail_after=4 << 20), target, 1 << 30)
    assert not target.exists() and open_fds() == before


async def test_cancelled_during_a_write_waits_for_it_then_removes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing = asyncio.Event()
    loop = asyncio.get_running_loop()
    real_write = uploads.UploadWriter.write

    def slow_write(self: uploads.UploadWriter, data: bytes) -> None:
        loop.call_soon_threadsafe(writing.set)
        time.sleep(0.3)  # still in its thread when the upload is cancelled
        real_write(self, data)

    monkeypatch.setattr(uploads.UploadWriter, "write", slow_write)
    target = tmp_path / "gone.part"
    before = open_fds()
    task = asyncio.create_task(stream_to_file(chunked(os.urandom(8 << 20)), target, 1 << 30))
    await writing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not target.exists() and open_fds() == before


def test_writeback_hint_on_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with path.open("wb") as f:
        f.write(b"x" * 100_000)
        uploads.start_writeback(f.fileno(), 0, 100_000)  # a hint: no error, no effect on data
    assert path.read_bytes() == b"x" * 100_000
