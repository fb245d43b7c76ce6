"""The only way dpd writes a file that must survive a crash.

Guarantees (reliability.md §2.3, AF1/AF2/AF5):
- ``write_atomic``: readers see the old content or the new, never a mix or an empty file;
  once it returns, the new content survives power loss. Sequence: temp file in the same
  directory (O_EXCL|O_NOFOLLOW via mkstemp), write all bytes, fsync, rename, fsync directory.
- ``append_line``: one ``write`` of a whole line to an O_APPEND file, then fsync; a torn
  tail (crash mid-write) is a line without its newline, which readers drop.
- ``create_file`` + ``fsync_all``: many new files written first and fsynced later, each
  through the descriptor that wrote it (so a write-back error reaches that fsync). Their
  write-back is started as soon as they are written, and the fsyncs run side by side in a
  few threads: waiting together they share one journal commit and one device cache flush,
  where one after the other each pays a flush of its own (milliseconds on a busy disk).
- A failed fsync is never retried (its error may already be cleared): ``DurabilityError``
  propagates, and the caller must stop writing that file.

Not trusted: the file system's rename heuristics (auto_da_alloc). Known weakness: a
directory fsync cannot be made atomic with the rename before it; a crash between them can
lose the rename, which readers then see as the old content.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final


class DurabilityError(OSError):
    """fsync or rename failed: the data is not known to be on disk."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as err:
        raise DurabilityError(
            err.errno, f"fsync of directory {path} failed: {err.strerror}"
        ) from err
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        except OSError as err:
            raise DurabilityError(err.errno, f"writing {path} failed: {err.strerror}") from err
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def json_bytes(obj: Any) -> bytes:
    """One line of JSON: no indent, since json's C encoder only runs without one (an
    indented state.json cost the supervisor and ingestion about 4x the CPU to encode)."""
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def write_json_atomic(path: str | os.PathLike[str], obj: Any, mode: int = 0o644) -> None:
    data = json_bytes(obj)
    write_atomic(path, data, mode)


def write_new_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (which must not exist) and fsync it; the caller fsyncs the directory."""
    fd = create_file(path, data, mode)
    try:
        fsync_all([fd])
    finally:
        os.close(fd)


def create_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> int:
    """Create ``path`` (which must not exist), write ``data`` and start its write-back.
    Returns the open descriptor, for ``fsync_all``; the caller closes it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
    except OSError as err:
        os.close(fd)
        raise DurabilityError(err.errno, f"writing {path} failed: {err.strerror}") from err
    start_writeback(fd)
    return fd


def open_directory(path: str | os.PathLike[str]) -> int:
    """A descriptor of directory ``path`` to fsync (``fsync_all``); the caller closes it."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


# fsyncs in flight at once: enough to share commits, few enough not to crowd the machine.
SYNC_THREADS: Final = 8
_sync_pool: ThreadPoolExecutor | None = None
_sync_pool_lock = threading.Lock()


def fsync_all(fds: Sequence[int]) -> None:
    """fsync every descriptor (files or directories), several at a time; returns once all
    are done. ``DurabilityError`` if any failed (none is retried). Closes nothing."""
    # One descriptor is synced here: a thread hand-off would only add latency. Otherwise
    # each thread takes a share: handing every descriptor to the pool on its own cost more
    # CPU (under the GIL) than the fsyncs, whose later ones find their commit already done.
    if len(fds) < 2:
        errors = _fsync_errors(fds)
    else:
        shares = [fds[start::SYNC_THREADS] for start in range(min(SYNC_THREADS, len(fds)))]
        errors = [err for found in _pool().map(_fsync_errors, shares) for err in found]
    if errors:
        failed = errors[0]
        raise DurabilityError(failed.errno, f"fsync failed: {failed.strerror}") from failed


def _fsync_errors(fds: Sequence[int]) -> list[OSError]:
    errors = []
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as err:
            errors.append(err)
    return errors


def _pool() -> ThreadPoolExecutor:
    global _sync_pool
    with _sync_pool_lock:
        if _sync_pool is None:
            _sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="dpd-fsync")
        return _sync_pool


_SYNC_FILE_RANGE_WRITE: Final = 2


def _find_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _find_sync_file_range()


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now (sync_file_range WRITE;
    length 0: to the end), without waiting. Only a hint that makes a later fsync cheaper:
    it guarantees nothing, its result is ignored, and a write-back error still reaches the
    fsync of ``fd``."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def append_line(path: str | os.PathLike[str], line: bytes, sync: bool = True) -> None:
    """Append one line (a newline is added) in a single write; fsync unless told not to."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _write_all(fd, line + b"\n")
        if sync:
            os.fsync(fd)
    except OSError as err:
        raise DurabilityError(err.errno, f"appending to {path} failed: {err.strerror}") from err
    finally:
        os.close(fd)


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
