"""The only way dpd writes a file that must survive a crash.

Guarantees (reliability.md §2.3, AF1/AF2/AF5):
- ``write_atomic``: readers see the old content or the new, never a mix or an empty file;
  once it returns, the new content survives power loss. Sequence: temp file in the same
  directory (O_EXCL|O_NOFOLLOW via mkstemp), write all bytes, fsync, rename, fsync directory.
- ``append_line``: one ``write`` of a whole line to an O_APPEND file, then fsync; a torn
  tail (crash mid-write) is a line without its newline, which readers drop.
- A failed fsync is never retried (its error may already be cleared): ``DurabilityError``
  propagates, and the caller must stop writing that file.

Not trusted: the file system's rename heuristics (auto_da_alloc). Known weakness: a
directory fsync cannot be made atomic with the rename before it; a crash between them can
lose the rename, which readers then see as the old content.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


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


def write_json_atomic(path: str | os.PathLike[str], obj: Any, mode: int = 0o644) -> None:
    data = json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=False).encode() + b"\n"
    write_atomic(path, data, mode)


def write_new_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` (which must not exist) and fsync it; the caller fsyncs the directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except OSError as err:
        raise DurabilityError(err.errno, f"writing {path} failed: {err.strerror}") from err
    finally:
        os.close(fd)


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


def read_json_lines(path: str | os.PathLike[str]) -> list[Any]:
    """Every complete JSON line of an append-only file; a torn or garbled tail is dropped."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    records: list[Any] = []
    # The last piece is empty after a final newline, or a torn tail: either way, drop it.
    for chunk in raw.split(b"\n")[:-1]:
        if not chunk.strip():
            continue
        try:
            records.append(json.loads(chunk))
        except ValueError:
            continue
    return records


def _unlink_quietly(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
