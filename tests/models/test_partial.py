"""The partial file on its own: ordered writes in threads, the hash seeded from what is on
disk, verification, and failures that stop every later write."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path

import pytest

from dpd.models import partial as partial_module
from dpd.models.partial import (
    HashMismatch,
    PartialFile,
    RemoteFile,
    TransferControl,
    TransferStopped,
)
from tests.models.conftest import MIB, pseudo_random

DATA = pseudo_random(3 * MIB + 5, 7)
PIECE = 256 * 1024


def remote_for(data: bytes, lfs: bool = True) -> RemoteFile:
    if lfs:
        etag = hashlib.sha256(data).hexdigest()
    else:
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return RemoteFile("org/repo", "file.bin", "c" * 40, len(data), etag)


async def fill(path: Path, data: bytes, control: TransferControl, fed: bytes) -> PartialFile:
    """Open ``path`` for ``data``, feed ``fed`` in pieces and finish (closing in any case)."""
    sink = await asyncio.to_thread(PartialFile.open, path, remote_for(data), control)
    try:
        sink.start()
        for start in range(0, len(fed), PIECE):
            await sink.feed(fed[start : start + PIECE])
        await sink.finish()
    finally:
        await sink.close()
    return sink


@pytest.mark.parametrize("lfs", [True, False])
async def test_pieces_are_written_in_order_and_verified(tmp_path, lfs):
    control = TransferControl()
    path = tmp_path / "p"
    sink = await asyncio.to_thread(PartialFile.open, path, remote_for(DATA, lfs), control)
    sink.start()
    for start in range(0, len(DATA), 100_000):
        await sink.feed(DATA[start : start + 100_000])
    await sink.finish()
    await sink.close()

    assert path.read_bytes() == DATA
    assert control.file_bytes == len(DATA)


async def test_resuming_hashes_what_the_file_already_holds(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(DATA[:MIB])
    control = TransferControl()

    sink = await fill(path, DATA, control, DATA[MIB:])

    assert sink.size == len(DATA) and path.read_bytes() == DATA


async def test_a_corrupt_partial_file_is_caught_at_the_end(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(b"x" + DATA[1:MIB])

    with pytest.raises(HashMismatch, match="expected"):
        await fill(path, DATA, TransferControl(), DATA[MIB:])


async def test_too_few_bytes_are_a_mismatch(tmp_path):
    with pytest.raises(HashMismatch):
        await fill(tmp_path / "p", DATA, TransferControl(), DATA[:-1])


async def test_a_partial_file_longer_than_the_file_starts_over(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(DATA + b"junk")
    control = TransferControl()

    sink = await asyncio.to_thread(PartialFile.open, path, remote_for(DATA), control)
    await sink.close()

    assert sink.size == 0 and control.file_bytes == 0 and path.stat().st_size == 0


async def test_restart_empties_the_file_and_the_hash(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(DATA[:MIB])
    sink = await asyncio.to_thread(PartialFile.open, path, remote_for(DATA), TransferControl())
    await asyncio.to_thread(sink.restart)
    sink.start()
    for start in range(0, len(DATA), PIECE):
        await sink.feed(DATA[start : start + PIECE])
    await sink.finish()
    await sink.close()

    assert path.read_bytes() == DATA


async def test_a_failed_write_stops_every_later_write(tmp_path, monkeypatch):
    """The fake writes one buffer per call (short writes, as the kernel may) and fails once a
    MiB is on disk: nothing may be written after the failure, so no gap can follow it."""
    calls: list[int] = []
    real_writev = os.writev

    def writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(sum(len(b) for b in buffers))
        if os.fstat(fd).st_size >= MIB:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, buffers[:1])

    monkeypatch.setattr(partial_module.os, "writev", writev)
    path = tmp_path / "p"

    with pytest.raises(OSError) as caught:
        await fill(path, DATA, TransferControl(), DATA)

    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == DATA[:MIB]
    assert len(calls) == MIB // PIECE + 1  # the failing call was the last one


async def test_a_failed_write_back_is_not_retried_and_fails_the_file(tmp_path, monkeypatch):
    synced: list[int] = []

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(partial_module, "SYNC_EVERY", MIB)
    monkeypatch.setattr(partial_module.os, "fdatasync", fdatasync)

    with pytest.raises(OSError) as caught:
        await fill(tmp_path / "p", DATA, TransferControl(), DATA)

    assert caught.value.errno == errno.EIO
    assert len(synced) == 1


def test_stop_calls_the_interrupts_registered_at_that_time():
    control = TransferControl()
    called: list[str] = []
    with control.interrupts(lambda: called.append("first")):
        control.stop("cancel")
    with control.interrupts(lambda: called.append("late")):  # already stopped: at once
        pass
    control.stop("again")  # none registered any more

    assert called == ["first", "late"]
    with pytest.raises(TransferStopped, match="again"):
        control.check()
