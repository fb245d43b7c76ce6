"""How many lines a train.log holds, counted once and extended as it grows (blocking file
I/O: run in a thread).

``LineCounter`` keeps one count per file (device, inode) and counts only what was appended
since, so only the first answer about a large file pays for a full pass (newline counting
at memory speed). The supervisor's followers tell it what they counted (``learn``), so a
live job's log never needs that pass, and a log with a line index
(``dpd.trainlog.lineindex``) needs it only past what the index covers.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from dpd.trainlog.lineindex import LineIndex

COUNT_BLOCK: Final = 8 * 1024 * 1024


@dataclass
class _Counted:
    device: int
    inode: int
    offset: int  # bytes counted
    newlines: int


@dataclass
class LineCounter:
    """Newline counts of files, kept across calls and extended incrementally, and the line
    index of each file asked about (one object per file, shared with its follower)."""

    _known: dict[str, _Counted] = field(default_factory=dict)
    _indexes: dict[str, LineIndex] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def learn(self, path: Path, device: int, inode: int, offset: int, newlines: int) -> None:
        """Take a count made elsewhere (the supervisor's follower reads every byte of a live
        log anyway): ``newlines`` in the first ``offset`` bytes of file (device, inode). Kept
        unless a count of that file reaching further is known already."""
        with self._lock:
            known = self._known.get(str(path))
            if (
                known is None
                or (known.device, known.inode) != (device, inode)
                or known.offset < offset
            ):
                self._known[str(path)] = _Counted(device, inode, offset, newlines)

    def index(self, path: Path) -> LineIndex:
        """The line index of ``path`` (made on first ask; reads nothing yet)."""
        with self._lock:
            index = self._indexes.get(str(path))
            if index is None:
                index = self._indexes[str(path)] = LineIndex(path)
            return index

    def newlines(self, handle: IO[bytes], path: Path, size: int) -> int:
        """The newlines in the first ``size`` bytes of the open file ``handle``."""
        info = os.fstat(handle.fileno())
        with self._lock:
            known = self._known.get(str(path))
        if known is None or (known.device, known.inode) != (info.st_dev, info.st_ino):
            known = _Counted(info.st_dev, info.st_ino, 0, 0)
        if known.offset > size:  # truncated or rewritten: count again
            known = _Counted(info.st_dev, info.st_ino, 0, 0)
        if known.offset < size:
            view = self.index(path).view(handle)
            if known.offset < view.covered <= size:
                indexed = view.newlines_before(view.count)
                known = _Counted(info.st_dev, info.st_ino, view.covered, indexed)
        newlines = known.newlines + count_newlines(handle, known.offset, size)
        with self._lock:
            self._known[str(path)] = _Counted(info.st_dev, info.st_ino, size, newlines)
        return newlines

    def total_lines(self, handle: IO[bytes], path: Path, size: int) -> int:
        """Lines in the first ``size`` bytes of the open file ``handle``."""
        newlines = self.newlines(handle, path, size)
        return newlines + (1 if size and not ends_with_newline(handle, size) else 0)

    def newlines_before(self, handle: IO[bytes], path: Path, offset: int) -> int:
        """The newlines before byte ``offset``: counted from the last index record ending
        there (near the start, where a count costs less than a look at the index, from 0)."""
        start = newlines = 0
        if offset > COUNT_BLOCK:
            start, newlines = self.index(path).view(handle).counted_below(offset)
        return newlines + count_newlines(handle, start, offset)


def count_newlines(handle: IO[bytes], start: int, end: int) -> int:
    handle.seek(start)
    count, left = 0, end - start
    while left > 0:
        block = handle.read(min(COUNT_BLOCK, left))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def ends_with_newline(handle: IO[bytes], size: int) -> bool:
    handle.seek(size - 1)
    return handle.read(1) == b"\n"
