"""Keyword search over a train.log, streamed in large blocks (blocking: run in a thread).

The keyword is found with ``bytes.find`` over whole blocks, so the cost per byte is memchr's,
not Python's; only lines that contain it are decoded and classified. Every match is counted
(``total_matches``) while only the first ``limit`` are returned, in file order. Past the
limit a frequent keyword would cost a Python step per line: there (without a level or type
filter) one regex pass per block counts the lines that hold it, and only lines with tqdm
redraws are looked at one by one; line numbers, needed only for results, stop being counted.

A time range becomes a byte range first: the log's DeepSpeed logger lines carry rising
timestamps, so the first line at or after a time is found by bisecting the file
(``time_offset``), and lines without a timestamp belong to the logger line before them
(``dpd.logs.entries``). Lines are numbered from the start of the range on: the newlines
before it are taken from the log's line index where it has one (``LineCounter``), so a range
late in a big log costs no count from the start. Weakness: timestamps from several
processes may interleave slightly out of order; a bisection then places the boundary at one
of the candidate lines.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from dpd.logs.entries import (
    STAMP_PREFIX_BYTES,
    LineFilter,
    classify,
    display_text,
    line_stamp,
    matched_text,
    search_hit,
)
from dpd.logs.leveltail import STAMP_LOOKBACK
from dpd.trainlog.counter import LineCounter

BLOCK: Final = 8 * 1024 * 1024
STAMP_BLOCK: Final = 64 * 1024
BISECT_WINDOW: Final = 256 * 1024


@dataclass(frozen=True)
class SearchQuery:
    keyword: str
    line_filter: LineFilter = field(default_factory=LineFilter)
    start: str | None = None  # local stamps, as dpd.logs.entries.parse_time gives them
    end: str | None = None
    limit: int = 100
    ignore_case: bool = False


@dataclass
class SearchPage:
    total_matches: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    bytes_scanned: int = 0


def search_log(path: Path, query: SearchQuery, counter: LineCounter | None = None) -> SearchPage:
    """Every line containing the keyword within the time range and filters."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return SearchPage()
    with handle:
        size = os.fstat(handle.fileno()).st_size
        start = time_offset(handle, size, query.start, strict=False) if query.start else 0
        end = time_offset(handle, size, query.end, strict=True) if query.end else size
        if start >= end:
            return SearchPage()
        before = (counter or LineCounter()).newlines_before(handle, path, start) if start else 0
        scan = _Scan(query, first_line=before + 1)
        scan.run(handle, start, end)
    return scan.page


def search_lines(lines: Iterable[str], query: SearchQuery) -> SearchPage:
    """The same search over a log's lines in order from its first (a log read back from
    its events, not its file): line numbers count from 1, a line without a timestamp has
    the one of the logger line before it."""
    page = SearchPage()
    last_stamp: str | None = None
    for number, raw in enumerate(lines, start=1):
        text = display_text(raw.encode())
        line = classify(text)
        stamp = line.timestamp or last_stamp
        last_stamp = stamp
        if query.start is not None and (stamp is None or stamp < query.start):
            continue
        if query.end is not None and stamp is not None and stamp > query.end:
            continue
        matched = matched_text(text, query.keyword, query.ignore_case)
        if matched is None or not query.line_filter.keeps(line):
            continue
        page.total_matches += 1
        if len(page.results) < query.limit:
            page.results.append(search_hit(line, stamp, number, matched))
    return page


class _Scan:
    """One pass over [start, end): complete lines only, block by block, read into one
    reused buffer (a fresh 8 MiB object per block costs more in page faults than the
    search itself)."""

    def __init__(self, query: SearchQuery, first_line: int) -> None:
        self.query = query
        self.needle = (query.keyword.lower() if query.ignore_case else query.keyword).encode()
        # One match per line that holds the keyword: the rest of the line goes with the
        # first hit, and the empty group makes findall list one shared b"" per line.
        self.line_hits = re.compile(re.escape(self.needle) + rb"()[^\n]*")
        self.line_number = first_line  # number of the line at the start of the next block
        self.page = SearchPage()
        self.last_stamp: str | None = None  # of the last logger line before the next block

    def run(self, handle: io.BufferedReader, start: int, end: int) -> None:
        self.last_stamp = _stamp_before(handle, start)
        handle.seek(start)
        buffer = bytearray(min(BLOCK, max(1, end - start)))
        position, filled = start, 0  # filled: bytes of buffer holding data (a carry first)
        while True:
            got = _read_into(handle, buffer, filled, end - position)
            position += got
            filled += got
            final = position >= end or not got
            cut = filled if final else buffer.rfind(b"\n", 0, filled) + 1
            if cut == 0 and not final:  # a line longer than the buffer: make room for it
                buffer.extend(bytes(len(buffer)))
                continue
            self._block(buffer, cut)
            self.page.bytes_scanned += cut
            if final:
                return
            buffer[: filled - cut] = buffer[cut:filled]  # the carry: a line not ended yet
            filled -= cut

    def _full(self) -> bool:
        return len(self.page.results) >= self.query.limit

    def _block(self, block: bytearray, end: int) -> None:
        """The lines in ``block[:end]``. Until ``limit`` results are in, each hit is looked
        at (line number, stamp, entry); after that only counted, and line numbers and stamps
        are no longer followed."""
        haystack = block.lower() if self.query.ignore_case else block
        needle, counted, at = self.needle, 0, 0
        while not self._full() and (hit := haystack.find(needle, at, end)) != -1:
            line_start = haystack.rfind(b"\n", 0, hit) + 1
            line_end = haystack.find(b"\n", hit, end)
            line_end = end if line_end == -1 else line_end
            self.line_number += haystack.count(b"\n", counted, line_start)
            counted, at = line_start, line_end + 1
            self._match(block, line_start, line_end, end)
        if not self._full():
            self.line_number += haystack.count(b"\n", counted, end)
            self.last_stamp = _stamp_in(block, end + 1, end) or self.last_stamp
        elif at < end:
            if self.query.line_filter.keeps_everything:
                self._count_rest(block, haystack, at, end)
            else:
                self._filter_rest(block, haystack, at, end)

    def _count_rest(self, block: bytearray, haystack: bytearray, at: int, end: int) -> None:
        """Count the lines of [at, end) holding the keyword without looking at each in
        Python. A line with a "\\r" (tqdm redraws) shows only its last state: each is
        checked alone and uncounted when the keyword sits only in overdrawn states."""
        found = len(self.line_hits.findall(haystack, at, end))
        redraw = haystack.find(b"\r", at, end)
        while redraw != -1:
            line_start = haystack.rfind(b"\n", at, redraw) + 1 or at
            line_end = haystack.find(b"\n", redraw, end)
            line_end = end if line_end == -1 else line_end
            if haystack.find(self.needle, line_start, line_end) != -1 and not self._visible(
                block, line_start, line_end
            ):
                found -= 1
            redraw = haystack.find(b"\r", line_end, end)
        self.page.total_matches += found

    def _filter_rest(self, block: bytearray, haystack: bytearray, at: int, end: int) -> None:
        """Count the lines of [at, end) holding the keyword that pass the filter: each is
        classified, but no line numbers are kept."""
        while (hit := haystack.find(self.needle, at, end)) != -1:
            line_start = haystack.rfind(b"\n", 0, hit) + 1
            line_end = haystack.find(b"\n", hit, end)
            line_end = end if line_end == -1 else line_end
            at = line_end + 1
            self._match(block, line_start, line_end, end)

    def _visible(self, block: bytearray, line_start: int, line_end: int) -> bool:
        text = display_text(bytes(block[line_start:line_end]))
        return matched_text(text, self.query.keyword, self.query.ignore_case) is not None

    def _match(self, block: bytearray, line_start: int, line_end: int, stop: int) -> None:
        """Look at one line holding the keyword; ``stop`` ends the block's data."""
        raw = bytes(block[line_start:line_end])
        query, page = self.query, self.page
        text = display_text(raw)
        matched = matched_text(text, query.keyword, query.ignore_case)
        if matched is None:  # only an overdrawn tqdm state held the keyword
            return
        line = classify(text)
        if not query.line_filter.keeps(line):
            return
        page.total_matches += 1
        if len(page.results) < query.limit:
            stamp = line.timestamp or _stamp_in(block, line_start, stop) or self.last_stamp
            page.results.append(search_hit(line, stamp, self.line_number, matched))


def _read_into(handle: io.BufferedReader, buffer: bytearray, filled: int, left: int) -> int:
    """Append up to ``left`` bytes of the file to ``buffer[:filled]``, as room allows."""
    room = min(len(buffer) - filled, left)
    if room <= 0:
        return 0
    with memoryview(buffer) as view:
        return handle.readinto(view[filled : filled + room])


def _stamp_in(block: bytes | bytearray, before: int, stop: int) -> str | None:
    """The timestamp of the nearest logger line above ``before`` within ``block[:stop]``,
    looking back at most STAMP_LOOKBACK bytes; None if there is none there."""
    floor = max(0, before - STAMP_LOOKBACK)
    end = before - 1
    while end > floor:
        start = block.rfind(b"\n", floor, end) + 1
        if start == 0 and floor > 0:
            return None
        stamp = line_stamp(bytes(block[start : min(start + STAMP_PREFIX_BYTES, stop)]))
        if stamp is not None:
            return stamp
        end = start - 1
    return None


def _stamp_before(handle: IO[bytes], offset: int) -> str | None:
    if offset == 0:
        return None
    begin = max(0, offset - STAMP_LOOKBACK)
    handle.seek(begin)
    data = handle.read(offset - begin)
    return _stamp_in(data, len(data) + 1, len(data))


# ------------------------------------------------------------------ time -> byte offset


def time_offset(handle: IO[bytes], size: int, when: str, strict: bool) -> int:
    """Start of the first logger line stamped at or after ``when`` (after it when
    ``strict``), or ``size`` if none: a bisection over the stamped lines."""

    def late(stamp: str) -> bool:
        return stamp > when if strict else stamp >= when

    low, end, answer = 0, size, size
    while end - low > BISECT_WINDOW:
        middle = (low + end) // 2
        found = next(stamped_lines(handle, middle, end), None)
        if found is None:
            end = middle  # no logger line in [middle, end): the answer lies below, or is it
            continue
        offset, stamp = found
        if late(stamp):
            answer = end = offset
        else:
            low = offset + 1
    for offset, stamp in stamped_lines(handle, low, end):
        if late(stamp):
            return offset
    return answer


def stamped_lines(handle: IO[bytes], begin: int, end: int) -> Iterator[tuple[int, str]]:
    """(offset, local stamp) of every logger line starting in [begin, end), in order."""
    if begin == 0:
        handle.seek(0)
        stamp = line_stamp(handle.read(STAMP_PREFIX_BYTES).split(b"\n", 1)[0])
        if stamp is not None and end > 0:
            yield 0, stamp
        begin = 1
    base = begin - 1  # one byte early: a line starting at ``begin`` follows a "\n" there
    while base < end:
        handle.seek(base)
        data = handle.read(STAMP_BLOCK + STAMP_PREFIX_BYTES)
        if not data:
            return
        at = data.find(b"\n[")
        while at != -1 and at < STAMP_BLOCK:
            if base + at + 1 >= end:
                return
            stamp = line_stamp(data[at + 1 : at + 1 + STAMP_PREFIX_BYTES].split(b"\n", 1)[0])
            if stamp is not None:
                yield base + at + 1, stamp
            at = data.find(b"\n[", at + 1)
        base += STAMP_BLOCK
