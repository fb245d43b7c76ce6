"""A partial model file being appended to: the one place where a download's bytes reach the
disk, and where they are checked.

Guarantees: bytes land in the order they were received, each written once by one writer
thread, and nothing after a failed write (so no gap can hide in the file). The file is good
only when ``finish`` has seen its size and digest match the hub's metadata and its fsync
succeed; the caller then renames it into place. Nothing on the wire or already on disk is
trusted: every byte received is hashed, and resuming re-reads the partial file once to seed
the hash (SHA-256 for LFS files, whose ETag is their SHA-256; the git blob SHA-1 for small
files, whose ETag is that).

Bytes are received into at most ``BLOCKS`` reused buffers of ``BLOCK_SIZE`` bytes: the
socket reads straight into them (``body.py``), ``feed`` copies bytes in. A full buffer goes
to two threads at once, so the event loop never waits on the disk: one hashes it, one
writes it (``WRITE_SIZE`` bytes a call) and starts its write-back; the buffer is reused
when both are done. A third
thread runs ``fdatasync`` every ``SYNC_EVERY`` bytes, so that the disk works while the
network does and the final fsync has little left. hashlib, pwrite, sync_file_range and
fdatasync release the GIL. When every buffer is busy the receiving waits (and with it the
socket, so TCP slows the sender down): memory stays at ``BLOCKS * BLOCK_SIZE``. A transfer
that stalls for ``IDLE_FLUSH`` seconds writes out what it received without a full buffer.

O_DIRECT was measured and rejected: it spares the page cache, but each write waits for the
device and the journal commits of the fdatasyncs stall the size-extending writes, so on the
bench's disk a durable file took longer (360-480 MiB/s in bench/bench_download.py, against
720-860 through the page cache).

Failures: an OSError from a write or a background fdatasync is raised by the next ``feed``
or ``space`` or by ``finish``; a failed fdatasync is never retried (the file is not trusted,
PostgreSQL's lesson). ``close`` writes out what was received, unless a write failed, and
waits for every job before closing the file descriptor.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import mmap
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dpd.spool.atomic import start_writeback

BLOCK_SIZE: Final = 4 * 1024 * 1024  # one receive buffer, one hash update, one write-back
BLOCKS: Final = 8
# Each write asks the kernel for page-cache folios as large as itself. Up to 32 KiB they
# come from the per-CPU lists of recently freed pages; larger ones are carved out of big
# free blocks, which a VM that returns free memory to its host (the bench's does) must
# fault back in: a GiB in 32 KiB writes cost 0.45 s of system CPU there, in 256 KiB writes
# 0.25-1.1 s, in 4 MiB writes 1.0-1.4 s. (curl writes 16 KiB at a time.)
WRITE_SIZE: Final = 32 * 1024
SYNC_EVERY: Final = 64 * 1024 * 1024
IDLE_FLUSH: Final = 0.5  # seconds without a byte: what was received is written out
_HASH_READ: Final = 8 * 1024 * 1024
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")


class TransferStopped(Exception):
    """The transfer was asked to stop (cancel or daemon shutdown); the partial file stays."""


class HashMismatch(Exception):
    """The bytes received do not match the hub's size or hash: never installed."""


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    path: str  # inside the repository
    revision: str  # the commit the metadata came from: downloads pin it
    size: int
    etag: str  # SHA-256 (LFS) or git blob SHA-1

    @property
    def is_lfs(self) -> bool:
        return bool(_SHA256.match(self.etag))


@dataclass
class TransferControl:
    """Shared between the event loop and the threads of one download."""

    file_bytes: int = 0  # bytes of the current file on disk so far (the writer counts)
    transferred: int = 0  # bytes received by this process (for speed: resumes do not count)
    reason: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _interrupts: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, reason: str) -> None:
        """Ask the transfer to stop; an open connection is closed now, not at its next read."""
        self.reason = reason
        self._stop.set()
        for interrupt in list(self._interrupts):
            interrupt()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def check(self) -> None:
        if self._stop.is_set():
            raise TransferStopped(self.reason)

    @contextmanager
    def interrupts(self, callback: Callable[[], None]) -> Iterator[None]:
        """While the block runs, ``stop`` also calls ``callback`` (e.g. closing a response)."""
        self._interrupts.append(callback)
        try:
            if self.stopped:
                callback()
            yield
        finally:
            self._interrupts.remove(callback)


class _Block:
    """A buffer filled by the event loop, then read by the writer and the hasher at the
    same time, then filled again. Anonymous memory: given back to the system when the
    download ends, and no larger than the file."""

    __slots__ = ("length", "offset", "users", "view")

    def __init__(self, size: int) -> None:
        self.view = memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE))
        self.offset = 0  # of its first byte in the file
        self.length = 0
        self.users = 0  # threads not done with it


class PartialFile:
    """``open`` and ``restart`` block (call them in a thread); the other methods belong to
    the event loop."""

    def __init__(self, path: Path, remote: RemoteFile, control: TransferControl, fd: int) -> None:
        self.path = path
        self.remote = remote
        self._control = control
        self._fd = fd
        self.size = os.fstat(fd).st_size  # bytes received: on disk, queued or in a buffer
        self._digest = _new_hash(remote)
        self._lanes: tuple[_Lane, ...] = ()
        self._filling: _Block | None = None
        self._free: list[_Block] = []
        self._blocks = 0
        self._syncer: ThreadPoolExecutor | None = None
        self._sync: Future[None] | None = None
        self._unsynced = 0
        self._failure: OSError | None = None  # a failed fdatasync: nothing more is written
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    @classmethod
    def open(cls, path: Path, remote: RemoteFile, control: TransferControl) -> PartialFile:
        """Open (or create) the partial file; one longer than the file is junk."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        partial = cls(path, remote, control, fd)
        if partial.size > remote.size:
            partial.restart()
        control.file_bytes = partial.size
        return partial

    def restart(self) -> None:
        """Empty the file (the server ignored Range, or the file is junk); before ``start``."""
        os.ftruncate(self._fd, 0)
        self.size = 0
        self._control.file_bytes = 0

    def start(self) -> None:
        """Start the threads; the hasher first reads back what the file already holds."""
        self._loop = asyncio.get_running_loop()
        self._syncer = ThreadPoolExecutor(1, thread_name_prefix="dpd-download-sync")
        self._lanes = (
            _Lane("dpd-download-write", self._write, self._handed_back),
            _Lane(
                "dpd-download-hash",
                self._hash,
                self._handed_back,
                functools.partial(self._seed, self.size),
            ),
        )
        self._flush_if_idle(-1)

    # ------------------------------------------------------------- the event loop's side

    def buffer(self) -> memoryview | None:
        """Where the next bytes received go (``received`` tells how many did); None while
        every buffer is busy (``space`` waits for one)."""
        block = self._filling
        if block is None:
            if self._free:
                block = self._free.pop()
            elif self._blocks < BLOCKS:
                size = min(BLOCK_SIZE, max(self.remote.size - self.size, 1))
                block, self._blocks = _Block(size), self._blocks + 1
            else:
                return None
            block.offset, block.length = self.size, 0
            self._filling = block
        return block.view[block.length :]

    def received(self, count: int) -> None:
        """``count`` bytes were put at the start of the last ``buffer()``."""
        block = self._filling
        assert block is not None
        block.length += count
        self.size += count
        self._control.transferred += count
        if block.length == len(block.view) or self.size >= self.remote.size:
            self._submit()

    @property
    def has_room(self) -> bool:
        """Whether ``buffer()`` has room now."""
        return self._filling is not None or bool(self._free) or self._blocks < BLOCKS

    async def space(self) -> None:
        """Until ``buffer()`` has room; raises a thread's failure."""
        while True:
            self._raise_failure()
            if self.has_room:
                return
            await self._wait()

    def check_room(self, count: int) -> None:
        """Raises HashMismatch if ``count`` more bytes would not fit the file."""
        if self.size + count > self.remote.size:
            raise HashMismatch(
                f"{self.remote.repo}/{self.remote.path}: more bytes than {self.remote.size}"
            )

    async def feed(self, data: bytes) -> None:
        """Copy ``data`` into the buffers; waits while every buffer is busy."""
        self.check_room(len(data))
        source = memoryview(data)
        while source:
            target = self.buffer()
            if target is None:
                await self.space()
                continue
            count = min(len(target), len(source))
            target[:count] = source[:count]
            self.received(count)
            source = source[count:]
        self._raise_failure()

    async def finish(self) -> None:
        """Wait for every write and hash, then check size and digest and fsync the file."""
        self._stop_idle_flush()
        self._submit()
        while self._blocks - len(self._free):
            self._raise_failure()
            await self._wait()
        self._raise_failure()
        await asyncio.to_thread(self._verify_and_sync)

    async def close(self) -> None:
        """Write out what was received (a resume starts after it), let the threads finish
        what they were given (their errors are ``finish``'s), then close the descriptor."""
        self._stop_idle_flush()
        if self._lanes and self.failure is None:
            self._submit()
        await asyncio.to_thread(self._shutdown)

    def _submit(self) -> None:
        block, self._filling = self._filling, None
        if block is None:
            return
        if not block.length:
            self._free.append(block)
            return
        block.users = len(self._lanes)
        for lane in self._lanes:
            lane.put(block)

    def _flush_if_idle(self, size: int) -> None:
        """A stalled transfer's bytes go to disk (and count as done) without a full buffer."""
        if size == self.size:
            self._submit()
        assert self._loop is not None
        self._idle = self._loop.call_later(IDLE_FLUSH, self._flush_if_idle, self.size)

    def _stop_idle_flush(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _release(self, block: _Block) -> None:
        block.users -= 1
        if block.users == 0:
            self._free.append(block)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        assert self._loop is not None
        self._waiter = self._loop.create_future()
        await self._waiter

    @property
    def failure(self) -> BaseException | None:
        """A thread's failure (``feed``, ``space`` and ``finish`` raise it)."""
        return next((lane.error for lane in self._lanes if lane.error is not None), None)

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    # ------------------------------------------------------------- the threads' side

    def _handed_back(self, block: _Block) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._release, block)

    def _seed(self, size: int) -> None:
        remaining = size
        with open(self.path, "rb") as reader:
            while remaining > 0:
                data = reader.read(min(_HASH_READ, remaining))
                if not data:
                    raise OSError(f"{self.path} is shorter than expected")
                self._digest.update(data)
                remaining -= len(data)

    def _hash(self, block: _Block) -> None:
        self._digest.update(block.view[: block.length])

    def _write(self, block: _Block) -> None:
        if self._failure is not None:
            raise self._failure
        view, offset = block.view[: block.length], block.offset
        while view:
            written = os.pwrite(self._fd, view[:WRITE_SIZE], offset)
            if written <= 0:  # a regular file takes a byte or fails: never loop on nothing
                raise OSError(errno.EIO, f"{self.path} took no bytes")
            view, offset = view[written:], offset + written
        self._control.file_bytes = offset
        start_writeback(self._fd, block.offset, block.length)
        self._unsynced += block.length
        idle = self._sync is None or self._sync.done()  # done: its failure is visible
        if self._unsynced >= SYNC_EVERY and idle and self._failure is None:
            assert self._syncer is not None
            self._unsynced = 0
            self._sync = self._syncer.submit(self._write_back)

    def _write_back(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as err:
            self._failure = err  # never retried: the file is not trusted

    def _verify_and_sync(self) -> None:
        if self._sync is not None:
            self._sync.result()
        if self._failure is not None:
            raise self._failure
        size = os.fstat(self._fd).st_size
        digest = self._digest.hexdigest()
        if size != self.remote.size or digest != self.remote.etag:
            raise HashMismatch(
                f"{self.remote.repo}/{self.remote.path}: got {size} bytes with hash "
                f"{digest}, expected {self.remote.size} bytes with hash {self.remote.etag}"
            )
        os.fsync(self._fd)

    def _shutdown(self) -> None:
        for lane in self._lanes:
            lane.close()
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
        os.close(self._fd)


class _Lane:
    """One thread applying ``action`` to the blocks given to ``put``, in order, and handing
    each back. After a failure it only hands them back (``error`` tells), so a writer never
    leaves a gap before later bytes."""

    def __init__(
        self,
        name: str,
        action: Callable[[_Block], None],
        handed_back: Callable[[_Block], None],
        first: Callable[[], None] | None = None,
    ) -> None:
        self._action = action
        self._handed_back = handed_back
        self._first = first
        self._queue: queue.SimpleQueue[_Block | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, block: _Block) -> None:
        self._queue.put(block)

    def close(self) -> None:
        """Blocks until the thread has handled everything given and ended."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        self._apply(self._first)
        while (block := self._queue.get()) is not None:
            self._apply(self._action, block)
            self._handed_back(block)

    def _apply(self, action: Callable[..., None] | None, *args: Any) -> None:
        if action is None or self.error is not None:
            return
        try:
            action(*args)
        except BaseException as err:  # raised on the event loop by PartialFile
            self.error = err


def _new_hash(remote: RemoteFile) -> Any:
    if remote.is_lfs:
        return hashlib.sha256()
    # A git blob id: SHA-1 over a header naming the size, then the content.
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % remote.size)
    return digest
