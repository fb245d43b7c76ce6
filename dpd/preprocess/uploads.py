"""Uploaded files: safe names, accepted kinds, and streaming a body to disk under a limit.

Names come from clients and are never used as paths: ``safe_stem`` keeps the last path
component's letters, digits, ``-``, ``_`` and ``.``, drops leading dots (no hidden files,
which diffusion-pipe would take for media) and caps the length. Bytes go to disk as they
arrive, in ~1 MiB writes made off the event loop; the limit is checked before each write,
so an oversize upload never takes more than the limit on disk and nothing in memory beyond
two buffers: while the loop gathers the next ~1 MiB, a thread writes the previous one (one
write in flight; the socket absorbs a slow disk). Every few MiB the kernel is asked
to start writing back what is already written (``sync_file_range``), so the one ``fsync``
at the end, which the 202 waits for, has little left to flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

from dpd.spool.atomic import start_writeback

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
ACCEPTED_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
STEM_MAX = 80
WRITE_BUFFER = 1 << 20  # bytes per write(2)
WRITEBACK_EVERY = 8 << 20  # start writeback of the file's dirty pages this often
DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class UploadRejected(Exception):
    """The upload's name or kind is not acceptable; the message says why."""


class UploadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"upload exceeds the limit of {limit // (1 << 20)} MB")


def split_name(filename: str) -> tuple[str, str]:
    """(safe stem, lower-case extension) of a client's file name; ``UploadRejected`` when
    the extension is not accepted. Directories, traversal and leading dots are dropped."""
    # Some clients percent-encode the name in Content-Disposition ("..%2Fx.mp4").
    base = re.split(r"[\\/]", urllib.parse.unquote(filename or ""))[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    extension = f".{ext.lower()}"
    if extension not in ACCEPTED_EXTENSIONS:
        accepted = ", ".join(sorted(e.lstrip(".") for e in ACCEPTED_EXTENSIONS))
        raise UploadRejected(
            f"file type {extension if ext else '(none)'} not accepted; accepted: {accepted}"
        )
    return safe_stem(stem), extension


def safe_stem(stem: str) -> str:
    cleaned = _UNSAFE.sub("_", stem).lstrip("._-")
    cleaned = cleaned.replace("..", "_")[:STEM_MAX].rstrip(".")
    return cleaned or "upload"


def is_image_name(extension: str) -> bool:
    return extension in IMAGE_EXTENSIONS


def check_dataset_name(name: str) -> str:
    """A dataset is one directory under preprocessed_root: one safe path component."""
    if not DATASET_RE.match(name) or ".." in name:
        raise UploadRejected(
            f"dataset name {name!r} must match {DATASET_RE.pattern} (one directory name)"
        )
    return name


async def stream_to_file(chunks: AsyncIterator[bytes], path: Path, limit: int) -> int:
    """Write every chunk to a new file at ``path`` and fsync it; returns the size.
    ``UploadTooLarge`` past ``limit`` bytes, and then the partial file is gone."""
    writer = await asyncio.to_thread(UploadWriter, path)
    size = 0
    pending: list[bytes] = []
    pending_size = 0
    in_flight: asyncio.Future[None] | None = None
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(limit)
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_BUFFER:
                data = pending[0] if len(pending) == 1 else b"".join(pending)
                pending.clear()
                pending_size = 0
                if in_flight is not None:
                    await in_flight
                in_flight = asyncio.ensure_future(asyncio.to_thread(writer.write, data))
        if in_flight is not None:
            await in_flight
        await asyncio.to_thread(writer.finish, b"".join(pending))
    except BaseException:
        # The writer's lock makes discard wait for a write still running in its thread.
        await asyncio.to_thread(writer.discard)
        if in_flight is not None:
            in_flight.cancel()
            await asyncio.gather(in_flight, return_exceptions=True)
        raise
    return size


class UploadWriter:
    """One upload file, written by one thread at a time; ``discard`` may race a write."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.path = path
        self.fd = os.open(path, flags, 0o640)
        self.written = 0
        self._flushed = 0  # bytes whose writeback has been started
        self._lock = threading.Lock()
        self._closed = False

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            _write_all(self.fd, data)
            self.written += len(data)
            if self.written - self._flushed >= WRITEBACK_EVERY:
                start_writeback(self.fd, self._flushed, self.written - self._flushed)
                self._flushed = self.written

    def finish(self, tail: bytes) -> None:
        """The last bytes, then fsync: the file is durable when this returns."""
        with self._lock:
            try:
                if tail:
                    _write_all(self.fd, tail)
                    self.written += len(tail)
                os.fsync(self.fd)
            finally:
                self._close()

    def discard(self) -> None:
        with self._lock:
            self._close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
