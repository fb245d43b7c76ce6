"""The last lines of a train.log, read from the end backwards (blocking: run in a thread).

A tail costs what it returns, not what the file holds: blocks are read from the end until
enough lines matched. ``total_lines`` would need a count of the whole file; ``LineCounter``
keeps one per file (device, inode) and counts only what was appended since, so only the first
answer about a large file pays for a full pass (newline counting at memory speed). The
supervisor's followers tell it what they counted (``learn``), so a live job's log never
needs that pass.

Line numbers are physical: "\\n"-ended lines, the first is 1, a last line without its "\\n"
(the trainer is writing it) counts. Blank lines are numbered but never returned.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Final

from dpd.logs.entries import (
    LEVEL_RANK,
    LineFilter,
    classify,
    display_text,
    entry,
    line_stamp,
)

BLOCK: Final = 256 * 1024
COUNT_BLOCK: Final = 8 * 1024 * 1024
# How far back a tail looks for the timestamp of lines that have none of their own.
STAMP_LOOKBACK: Final = 64 * 1024


@dataclass
class _Counted:
    device: int
    inode: int
    offset: int  # bytes counted
    newlines: int
    # where level hints lie before ``hinted_until`` (the follower's record); None: not known
    hinted: HintRanges | None = None
    hinted_until: int = 0


@dataclass
class LineCounter:
    """Newline counts of files, kept across calls and extended incrementally."""

    _known: dict[str, _Counted] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def learn(
        self,
        path: Path,
        device: int,
        inode: int,
        offset: int,
        newlines: int,
        hinted: HintRanges | None = None,
    ) -> None:
        """Take a count made elsewhere (the supervisor's follower reads every byte of a live
        log anyway): ``newlines`` in the first ``offset`` bytes of file (device, inode), and
        the ranges of them holding a level hint (the follower's list, appended to as it
        reads; only what lies before ``offset`` is used). Kept unless a count of that file
        reaching further is known already."""
        with self._lock:
            known = self._known.get(str(path))
            if (
                known is None
                or (known.device, known.inode) != (device, inode)
                or known.offset < offset
            ):
                self._known[str(path)] = _Counted(device, inode, offset, newlines, hinted, offset)
            elif known.hinted_until < offset or hinted is None:  # a tail counted further
                self._known[str(path)] = replace(known, hinted=hinted, hinted_until=offset)

    def hint_index(self, handle: IO[bytes], path: Path, min_level: str) -> HintIndex | None:
        """What is known of where hints of ``min_level`` and above lie in the open file."""
        info = os.fstat(handle.fileno())
        with self._lock:
            known = self._known.get(str(path))
        if known is None or known.hinted is None:
            return None
        if (known.device, known.inode) != (info.st_dev, info.st_ino):
            return None
        ranges = known.hinted
        if LEVEL_RANK[min_level] <= LEVEL_RANK["WARNING"]:
            return HintIndex(known.hinted_until, (ranges.error, ranges.warning))
        return HintIndex(known.hinted_until, (ranges.error,))

    def total_lines(self, handle: IO[bytes], path: Path, size: int) -> int:
        """Lines in the first ``size`` bytes of the open file ``handle``."""
        info = os.fstat(handle.fileno())
        with self._lock:
            known = self._known.get(str(path))
        if known is None or (known.device, known.inode) != (info.st_dev, info.st_ino):
            known = _Counted(info.st_dev, info.st_ino, 0, 0)
        if known.offset > size:  # truncated or rewritten: count again
            known = _Counted(info.st_dev, info.st_ino, 0, 0)
        newlines = known.newlines + count_newlines(handle, known.offset, size)
        with self._lock:
            self._known[str(path)] = _Counted(
                info.st_dev, info.st_ino, size, newlines, known.hinted, known.hinted_until
            )
        return newlines + (1 if size and not _ends_with_newline(handle, size) else 0)


@dataclass
class HintRanges:
    """Byte ranges of a log that hold a level hint, per class, sorted and disjoint: every
    occurrence of an ``ERROR_HINTS`` string lies inside an ``error`` range, of a
    ``WARNING_HINTS`` string inside a ``warning`` range. Kept by the supervisor's follower
    as it reads (appended to from its thread; a reader only looks before its offset)."""

    error: list[tuple[int, int]] = field(default_factory=list)
    warning: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class HintIndex:
    """Bytes before ``covered`` hold a wanted level hint only inside these ranges."""

    covered: int
    ranges: tuple[list[tuple[int, int]], ...]

    def clean(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) are known to hold no wanted level hint."""
        if end > self.covered:
            return False
        for ranges in self.ranges:
            index = bisect.bisect_left(ranges, (end,))  # first range starting at or after end
            if index and ranges[index - 1][1] > start:
                return False
        return True


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


def _ends_with_newline(handle: IO[bytes], size: int) -> bool:
    handle.seek(size - 1)
    return handle.read(1) == b"\n"


def backward_lines(handle: IO[bytes], end: int, block: int | None = None) -> Iterator[bytes]:
    """Physical lines ending at or before byte ``end``, last first, without their "\\n"."""
    for data, _ in backward_blocks(handle, end, block):
        yield from data.split(b"\n")[::-1]


def backward_blocks(
    handle: IO[bytes], end: int, block: int | None = None
) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines from the end: (the block's bytes, the offset of its first
    byte). Its lines are ``data.split(b"\\n")``; the last block has no final "\\n"."""
    block = block or BLOCK
    position = end
    carry = b""
    if end and _ends_with_newline(handle, end):
        position -= 1  # the final "\n" ends the last line; it does not start an empty one
    while position > 0:
        start = max(0, position - block)
        handle.seek(start)
        data = handle.read(position - start) + carry
        position = start
        cut = data.find(b"\n")
        if cut == -1:
            carry = data
            continue
        carry, whole = data[:cut], data[cut + 1 :]
        yield whole, start + cut + 1
    if end:
        yield carry, 0


@dataclass
class TailPage:
    total_lines: int
    entries: list[dict[str, Any]]


def read_tail(
    path: Path,
    count: int,
    line_filter: LineFilter,
    since: str | None = None,
    counter: LineCounter | None = None,
) -> TailPage:
    """The last ``count`` lines that pass ``line_filter`` (and are at or after ``since``,
    a local stamp), oldest first. A missing file is an empty log."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return TailPage(0, [])
    with handle:
        size = os.fstat(handle.fileno()).st_size
        total = (counter or LineCounter()).total_lines(handle, path, size)
        index = None
        if counter is not None and line_filter.min_level is not None:
            index = counter.hint_index(handle, path, line_filter.min_level)
        blocks = backward_blocks(handle, size)
        found = _collect(blocks, total, count, line_filter, since, index)
    return TailPage(total, found)


def _collect(
    blocks: Iterator[tuple[bytes, int]],
    total: int,
    count: int,
    keep: LineFilter,
    since: str | None,
    index: HintIndex | None = None,
) -> list[dict[str, Any]]:
    """Walk lines newest first. Lines without a time of their own wait in ``pending`` until
    an earlier timestamped line dates them (or, with ``since``, rules them out). A block
    that cannot hold a line of the wanted level is skipped whole (``level_hints``)."""
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, Any]] = []
    number, looked_back = total + 1, 0
    hints = level_hints(keep.min_level)
    must_read = lambda: bool(pending) or since is not None  # noqa: E731
    for raw in _lines_worth_reading(blocks, hints, must_read, index):
        if isinstance(raw, int):
            number -= raw  # a skipped block's lines
            continue
        number -= 1
        if len(results) >= count and not pending:
            break
        if len(results) + len(pending) >= count:
            looked_back += len(raw) + 1
            if since is None and looked_back > STAMP_LOOKBACK:
                break  # the time of the pending lines is too far back to look for
        stamp = line_stamp(raw)
        if stamp is not None:
            if since is not None and stamp < since:
                return _oldest_first(results)
            results.extend(entry(line, stamp, n) for n, line in pending)
            pending.clear()
        if len(results) + len(pending) >= count:
            continue
        text = display_text(raw)
        if not text.strip():
            continue
        line = classify(text)
        if not keep.keeps(line):
            continue
        if stamp is not None:
            results.append(entry(line, stamp, number))
        else:
            pending.append((number, line))
    if since is None:
        results.extend(entry(line, None, n) for n, line in pending)
    return _oldest_first(results)


def level_hints(min_level: str | None) -> tuple[bytes, ...] | None:
    """Byte strings of which a line must hold one to be classified at ``min_level`` or
    above (see dpd.supervisor.loglines): a block holding none of them has no such line.
    None when every line may qualify."""
    if min_level is None or LEVEL_RANK[min_level] <= LEVEL_RANK["INFO"]:
        return None
    if LEVEL_RANK[min_level] <= LEVEL_RANK["WARNING"]:
        return ERROR_HINTS + WARNING_HINTS
    return ERROR_HINTS


ERROR_HINTS: Final[tuple[bytes, ...]] = (
    b"ERROR", b"CRITICAL", b"Traceback", b'File "', b"out of memory", b"OutOfMemory",
    b"Error", b"Exception", b"Interrupt", b"Exit", b"error: ", b"[E", b"[F",
)  # fmt: skip
WARNING_HINTS: Final[tuple[bytes, ...]] = (b"WARNING", b"Warning", b"[W")


def _lines_worth_reading(
    blocks: Iterator[tuple[bytes, int]],
    hints: tuple[bytes, ...] | None,
    must_read: Callable[[], bool],
    index: HintIndex | None = None,
) -> Iterator[bytes | int]:
    """The lines of each block, or the number of lines of a block skipped whole. A block the
    follower already found free of hints (``index``) is skipped without being searched."""
    for block, start in blocks:
        if hints is not None and not must_read():
            if index is not None and index.clean(start, start + len(block)):
                yield block.count(b"\n") + 1
                continue
            if not any(h in block for h in hints):
                yield block.count(b"\n") + 1
                continue
        yield from block.split(b"\n")[::-1]


def _oldest_first(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results.reverse()
    return results
