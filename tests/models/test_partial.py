"""The partial file on its own: ordered writes in threads, the hash seeded from what is on
disk, verification, and failures that stop every later write."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import time
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
from tests.waiting import wait_until

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
    """Buffers of 256 KiB, each write taking at most half of a write's size (short writes,
    as the kernel may); the disk fails once a MiB is on it: nothing may be written after the
    failure (so no gap can follow it), although later buffers were received and queued."""
    step = partial_module.WRITE_SIZE // 2
    offsets: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        offsets.append(offset)
        if os.fstat(fd).st_size >= MIB:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data[:step], offset)

    monkeypatch.setattr(partial_module, "BLOCK_SIZE", PIECE)
    monkeypatch.setattr(partial_module.os, "pwrite", pwrite)
    path = tmp_path / "p"

    with pytest.raises(OSError) as caught:
        await fill(path, DATA, TransferControl(), DATA)

    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == DATA[:MIB]
    assert offsets == list(range(0, MIB + 1, step))  # in order, the last one failed


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


async def test_a_stalled_transfer_writes_out_what_it_received(tmp_path, monkeypatch):
    """Less than a buffer arrived and nothing follows: the bytes reach the disk (and the
    progress) anyway, without waiting for the buffer to fill or the transfer to end."""
    monkeypatch.setattr(partial_module, "IDLE_FLUSH", 0.05)
    control = TransferControl()
    path = tmp_path / "p"
    sink = await asyncio.to_thread(PartialFile.open, path, remote_for(DATA), control)
    try:
        sink.start()
        await sink.feed(DATA[:MIB])

        await wait_until(lambda: control.file_bytes == MIB)
        assert path.read_bytes() == DATA[:MIB]

        await sink.feed(DATA[MIB:])
        await sink.finish()
    finally:
        await sink.close()
    assert path.read_bytes() == DATA


async def test_close_writes_out_the_bytes_received_so_far(tmp_path):
    """A stop (or a failed connection) keeps every byte received: the resume starts after."""
    control = TransferControl()
    path = tmp_path / "p"
    sink = await asyncio.to_thread(PartialFile.open, path, remote_for(DATA), control)
    sink.start()
    await sink.feed(DATA[: MIB + 5])
    await sink.close()

    assert path.read_bytes() == DATA[: MIB + 5] and control.file_bytes == MIB + 5
    await fill(path, DATA, TransferControl(), DATA[MIB + 5 :])
    assert path.read_bytes() == DATA


async def test_more_bytes_than_the_file_are_a_mismatch(tmp_path):
    with pytest.raises(HashMismatch, match="more bytes than"):
        await fill(tmp_path / "p", DATA, TransferControl(), DATA + b"x")


@pytest.mark.parametrize("blocks", [1, 3])
async def test_the_receiving_waits_while_every_buffer_is_busy(tmp_path, monkeypatch, blocks):
    """Few small buffers and a slow disk: memory stays bounded and the bytes stay in order."""
    real_pwrite = os.pwrite
    written: list[int] = []

    def slow_pwrite(fd: int, data: memoryview, offset: int) -> int:
        time.sleep(0.002)
        written.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(partial_module, "BLOCK_SIZE", 64 * 1024)
    monkeypatch.setattr(partial_module, "BLOCKS", blocks)
    monkeypatch.setattr(partial_module.os, "pwrite", slow_pwrite)
    path = tmp_path / "p"

    sink = await fill(path, DATA, TransferControl(), DATA)

    assert path.read_bytes() == DATA
    assert sink._blocks == blocks and max(written) <= 64 * 1024


async def test_writes_stay_small_enough_for_the_page_cache_lists(tmp_path, monkeypatch):
    """Large writes make the kernel allocate large page-cache folios, costly on a VM that
    returns free memory to its host: every write is at most WRITE_SIZE bytes."""
    sizes: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(partial_module.os, "pwrite", pwrite)

    await fill(tmp_path / "p", DATA, TransferControl(), DATA)

    assert max(sizes) == partial_module.WRITE_SIZE and sum(sizes) == len(DATA)
