"""A partial model file being appended to: the one place where a download's bytes reach the
disk, and where they are checked.

Guarantees: bytes land in the order they were received, each written once by one writer
thread, and nothing after a failed write (so no gap can hide in the file). The file is good
only when ``finish`` has seen its size and digest match the hub's metadata and its fsync
succeed; the caller then renames it into place. Nothing on the wire or already on disk is
trusted: every byte received is hashed as it is written, and resuming re-reads the partial
file once to seed the hash (SHA-256 for LFS files, whose ETag is their SHA-256; the git blob
SHA-1 for small files, whose ETag is that).

Threads, so the event loop never waits on the disk: one writes, one hashes, one runs
``fdatasync`` every ``SYNC_EVERY`` bytes so that the final fsync has little left and the
kernel does not hold gigabytes dirty. Each is a single-thread executor, so its jobs run in
the order they were given; write, hashlib (on buffers over 2 KiB) and fdatasync release the
GIL. Memory: at most ``MAX_QUEUED`` bytes received but not yet written and hashed; ``feed``
waits beyond that (and with it the reading of the socket, so TCP slows the sender down).

Failures: an OSError from a write or a background fdatasync is raised by the next ``feed``
or by ``finish``; a failed fdatasync is never retried (the file is not trusted, PostgreSQL's
lesson). ``close`` always waits for every job before closing the file descriptor.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

MAX_QUEUED: Final = 32 * 1024 * 1024
SYNC_EVERY: Final = 64 * 1024 * 1024
_HASH_READ: Final = 8 * 1024 * 1024
_IOV_MAX: Final = min(os.sysconf("SC_IOV_MAX"), 1024)
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
    """Shared between the event loop and the writer thread of one download."""

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


class PartialFile:
    """``open`` and ``restart`` block (call them in a thread); ``start``, ``feed``,
    ``finish`` and ``close`` belong to the event loop."""

    def __init__(self, path: Path, remote: RemoteFile, control: TransferControl, fd: int) -> None:
        self.path = path
        self.remote = remote
        self._control = control
        self._fd = fd
        self.size = os.fstat(fd).st_size  # bytes written or queued so far
        self._digest = _new_hash(remote)
        self._workers: tuple[_Worker, ...] = ()
        self._syncer: ThreadPoolExecutor | None = None
        self._sync: Future[None] | None = None
        self._unsynced = 0
        self._failure: OSError | None = None  # a failed fdatasync: nothing more is written
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    def open(cls, path: Path, remote: RemoteFile, control: TransferControl) -> PartialFile:
        """Open (or create) the partial file for appending; one longer than the file is junk."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
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
        self._workers = (
            _Worker("dpd-download-write", self._write, self._progressed),
            _Worker(
                "dpd-download-hash",
                self._hash,
                self._progressed,
                functools.partial(self._seed, self.size),
            ),
        )

    async def feed(self, data: bytes) -> None:
        """Queue ``data`` for writing and hashing; waits while too much is queued."""
        self.size += len(data)
        for worker in self._workers:
            worker.put(data)
        await self._wait_until(MAX_QUEUED)

    async def finish(self) -> None:
        """Wait for every write and hash, then check size and digest and fsync the file."""
        await self._wait_until(0)
        await asyncio.to_thread(self._verify_and_sync)

    async def close(self) -> None:
        """Let the threads finish what they were given (their errors are ``feed``'s and
        ``finish``'s), then close the file descriptor."""
        await asyncio.to_thread(self._shutdown)

    # ------------------------------------------------------------- the event loop's side

    async def _wait_until(self, limit: int) -> None:
        """Until at most ``limit`` bytes wait for a thread; raises a thread's failure."""
        assert self._loop is not None
        while True:
            for worker in self._workers:
                if worker.error is not None:
                    raise worker.error
            if max(worker.backlog for worker in self._workers) <= limit:
                return
            self._waiter = self._loop.create_future()
            # a thread that progresses from now on sees the waiter; check once more for one
            # that progressed just before
            if max(worker.backlog for worker in self._workers) <= limit:
                continue
            await self._waiter

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ------------------------------------------------------------- the threads' side

    def _progressed(self) -> None:
        if self._waiter is not None and not self._waiter.done() and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake)

    def _seed(self, size: int) -> None:
        remaining = size
        with open(self.path, "rb") as reader:
            while remaining > 0:
                block = reader.read(min(_HASH_READ, remaining))
                if not block:
                    raise OSError(f"{self.path} is shorter than expected")
                self._digest.update(block)
                remaining -= len(block)

    def _hash(self, batch: list[bytes]) -> None:
        for data in batch:
            self._digest.update(data)

    def _write(self, batch: list[bytes]) -> None:
        if self._failure is not None:
            raise self._failure
        written = _write_all(self._fd, batch)
        self._control.file_bytes += written
        self._unsynced += written
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
        for worker in self._workers:
            worker.close()
        if self._syncer is not None:
            self._syncer.shutdown(wait=True)
        os.close(self._fd)


class _Worker:
    """One thread applying ``action`` to the buffers given to ``put``, in order. What arrives
    while it works waits for the next batch: a producer faster than the thread costs one
    wake-up per batch, not one per buffer. After a failure the thread only counts what it is
    given (``error`` tells), so a writer never leaves a gap before later bytes."""

    def __init__(
        self,
        name: str,
        action: Callable[[list[bytes]], None],
        progressed: Callable[[], None],
        first: Callable[[], None] | None = None,
    ) -> None:
        self._action = action
        self._progressed = progressed
        self._first = first
        self._ready = threading.Condition()
        self._pending: list[bytes] = []
        self._closing = False
        self._given = 0  # only the event loop changes it
        self._done = 0  # only the thread changes it
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        return self._given - self._done

    def put(self, data: bytes) -> None:
        self._given += len(data)
        with self._ready:
            self._pending.append(data)
            self._ready.notify()

    def close(self) -> None:
        """Blocks until the thread has handled everything given and ended."""
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join()

    def _run(self) -> None:
        self._apply(self._first)
        while True:
            with self._ready:
                while not self._pending and not self._closing:
                    self._ready.wait()
                batch, self._pending = self._pending, []
            if not batch:
                return
            self._apply(self._action, batch)
            self._done += sum(len(data) for data in batch)
            self._progressed()

    def _apply(self, action: Callable[..., None] | None, *args: Any) -> None:
        if action is None or self.error is not None:
            return
        try:
            action(*args)
        except BaseException as err:  # handed to the event loop by PartialFile._wait_until
            self.error = err


def _write_all(fd: int, batch: list[bytes]) -> int:
    """Append every buffer, in order, with as few system calls as the kernel allows."""
    total = 0
    for first in range(0, len(batch), _IOV_MAX):
        group = [memoryview(data) for data in batch[first : first + _IOV_MAX]]
        while group:
            written = os.writev(fd, group)
            total += written
            while group and written >= len(group[0]):
                written -= len(group[0])
                group.pop(0)
            if group and written:
                group[0] = group[0][written:]
    return total


def _new_hash(remote: RemoteFile) -> Any:
    if remote.is_lfs:
        return hashlib.sha256()
    # A git blob id: SHA-1 over a header naming the size, then the content.
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % remote.size)
    return digest
