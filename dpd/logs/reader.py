"""The last lines of a train.log, read from the end backwards (blocking: run in a thread).

A tail costs what it returns, not what the file holds: blocks are read from the end until
enough lines matched. ``total_lines`` would need a count of the whole file; ``LineCounter``
keeps one per file (device, inode) and counts only what was appended since, so only the first
answer about a large file pays for a full pass (newline counting at memory speed). The
supervisor's followers tell it what they counted (``learn``), so a live job's log never
needs that pass, and a log with a line index (``dpd.trainlog.lineindex``) needs it only past
what the index covers.

A tail filtered by level (without ``since``) looks only at lines holding a level hint
(``dpd.logs.leveltail``): past the line index by searching each block, below it in the
records whose hints the index lists. A log without an index gets one when such a tail
searches far enough, built once in the calling thread and saved beside it.

Line numbers are physical: "\\n"-ended lines, the first is 1, a last line without its "\\n"
(the trainer is writing it) counts. Blank lines are numbered but never returned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from dpd.logs.entries import LineFilter, classify, display_text, entry, line_stamp
from dpd.logs.leveltail import STAMP_LOOKBACK, level_tail
from dpd.trainlog.counter import LineCounter, ends_with_newline
from dpd.trainlog.hints import LEVEL_PROBES, HintProbes, hint_level

BLOCK: Final = 256 * 1024


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
    if end and ends_with_newline(handle, end):
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
    counter = counter or LineCounter()
    with handle:
        size = os.fstat(handle.fileno()).st_size
        newlines = counter.newlines(handle, path, size)
        total = newlines + (1 if size and not ends_with_newline(handle, size) else 0)
        level = hint_level(line_filter.min_level)
        if level is not None and since is None:
            found = level_tail(handle, size, newlines, count, line_filter, counter.index(path))
        else:
            blocks = backward_blocks(handle, size)
            found = _collect(blocks, total, count, line_filter, since)
    return TailPage(total, found)


def _collect(
    blocks: Iterator[tuple[bytes, int]],
    total: int,
    count: int,
    keep: LineFilter,
    since: str | None,
) -> list[dict[str, Any]]:
    """Walk lines newest first. Lines without a time of their own wait in ``pending`` until
    an earlier timestamped line dates them (or, with ``since``, rules them out). A block
    that cannot hold a line of the wanted level is skipped whole (``dpd.trainlog.hints``)."""
    results: list[dict[str, Any]] = []
    pending: list[tuple[int, Any]] = []
    number, looked_back = total + 1, 0
    level = hint_level(keep.min_level)
    probes = None if level is None else LEVEL_PROBES[level]
    must_read = lambda: bool(pending) or since is not None  # noqa: E731
    for raw in _lines_worth_reading(blocks, probes, must_read):
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


def _lines_worth_reading(
    blocks: Iterator[tuple[bytes, int]],
    probes: HintProbes | None,
    must_read: Callable[[], bool],
) -> Iterator[bytes | int]:
    """The lines of each block, or the number of lines of a block skipped whole."""
    for block, _ in blocks:
        if probes is not None and not must_read() and not probes.found_in(block):
            yield block.count(b"\n") + 1
            continue
        yield from block.split(b"\n")[::-1]


def _oldest_first(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results.reverse()
    return results
