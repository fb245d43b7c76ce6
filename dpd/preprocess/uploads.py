"""Uploaded files: safe names, accepted kinds, and streaming a body to disk under a limit.

Names come from clients and are never used as paths: ``safe_stem`` keeps the last path
component's letters, digits, ``-``, ``_`` and ``.``, drops leading dots (no hidden files,
which diffusion-pipe would take for media) and caps the length. Bytes go to disk as they
arrive, in ~1 MiB writes made off the event loop; the limit is checked before each write,
so an oversize upload never takes more than the limit on disk and nothing in memory beyond
one buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
ACCEPTED_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
STEM_MAX = 80
WRITE_BUFFER = 1 << 20
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
    handle: BinaryIO = await asyncio.to_thread(_open_new, path)
    size = 0
    buffer = bytearray()
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(limit)
            buffer += chunk
            if len(buffer) >= WRITE_BUFFER:
                await asyncio.to_thread(handle.write, bytes(buffer))
                buffer.clear()
        await asyncio.to_thread(_finish, handle, bytes(buffer))
    except BaseException:
        await asyncio.to_thread(_discard, handle, path)
        raise
    return size


def _open_new(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    return os.fdopen(fd, "wb")


def _finish(handle: BinaryIO, tail: bytes) -> None:
    try:
        if tail:
            handle.write(tail)
        handle.flush()
        os.fsync(handle.fileno())
    finally:
        handle.close()


def _discard(handle: BinaryIO, path: Path) -> None:
    with contextlib.suppress(OSError):
        handle.close()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
