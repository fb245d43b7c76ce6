"""A level-filtered tail of a train.log that reads only lines holding a level hint
(blocking: run in a thread).

The part of the log past its line index is searched block by block from the end; below it,
only the records the index lists as holding hints of the level are read, and only from
their first hint to their last, their lines numbered from the index's newline counts. A log
whose unindexed part is longer than ``BUILD_AFTER`` gets indexed (one pass, in the calling
thread, saved beside it) when the search reaches that far.

The answer is the one ``dpd.logs.reader``'s line-by-line walk gives, times included: a line
without a logger timestamp of its own takes the one of the nearest logger line above it,
looked for no further than ``STAMP_LOOKBACK`` above the oldest line returned once ``count``
lines were found (all the way up otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

from dpd.logs.entries import (
    STAMP_PREFIX_BYTES,
    LineFilter,
    classify,
    display_text,
    entry,
    line_stamp,
)
from dpd.trainlog.hints import CLASS_PROBES, LEVEL_PROBES, HintProbes, hint_level
from dpd.trainlog.lineindex import IndexView, LineIndex
from dpd.trainlog.lines import LogLine

BLOCK: Final = 256 * 1024
# How far back a tail looks for the timestamp of lines that have none of their own.
STAMP_LOOKBACK: Final = 64 * 1024
# A search this far back from the end builds an index of the rest of the log first.
BUILD_AFTER: Final = 16 * 1024 * 1024
STAMP_WINDOW: Final = 8 * 1024  # the first look for a logger line above, growing to...
STAMP_WINDOW_MOST: Final = 4 * 1024 * 1024


def level_tail(
    handle: IO[bytes], size: int, newlines: int, count: int, keep: LineFilter, index: LineIndex
) -> list[dict[str, Any]]:
    """The last ``count`` lines of the open log (``size`` bytes, ``newlines`` "\\n") that
    pass ``keep``, which has a level above INFO; oldest first."""
    level = hint_level(keep.min_level)
    assert level is not None
    return _LevelWalk(count, keep, LEVEL_PROBES[level]).run(handle, size, newlines, index, level)


@dataclass
class _Hit:
    offset: int  # where the line starts
    number: int
    line: LogLine
    stamp: str | None  # its own logger timestamp


class _LevelWalk:
    """The last ``count`` lines that pass ``keep``, looked for only among the lines that
    hold a level hint (``probes``), newest first. Their times are found afterwards, the way
    ``_collect`` finds them: a line without its own takes the one of the nearest logger line
    above it, looked for at most STAMP_LOOKBACK bytes above the oldest line returned once
    ``count`` lines were found (all the way up otherwise)."""

    def __init__(self, count: int, keep: LineFilter, probes: HintProbes) -> None:
        self.count, self.keep, self.probes = count, keep, probes
        self.hits: list[_Hit] = []

    @property
    def done(self) -> bool:
        return len(self.hits) >= self.count

    def run(
        self, handle: IO[bytes], size: int, newlines: int, index: LineIndex, level: int
    ) -> list[dict[str, Any]]:
        """First the part of the log past the index, block by block from the end (an index
        is built when that goes on too long), then the records holding hints."""
        view = index.view(handle)
        position = size  # lines from here on were looked at; ``newlines`` "\n" lie before it
        for data, start in _line_blocks(handle, view.covered, size):
            lines = self.probes.line_starts(data, 0, len(data))
            self.take(data, start, lines, len(data), newlines)
            newlines -= data.count(b"\n")
            position = start
            if self.done:
                return self.entries(handle, view)
            if size - start >= BUILD_AFTER and start > view.covered:
                view = index.extend(handle, size)
                break
        for number in view.hinted_below(position, level):
            if self.done:
                break
            self._search_record(handle, view, number, position, level)
        return self.entries(handle, view)

    def _search_record(
        self, handle: IO[bytes], view: IndexView, number: int, position: int, level: int
    ) -> None:
        """Read a record (up to ``position``) and take the lines between the first and the
        last hint of each class it holds, looking for that class's hints only."""
        record, start = view.record(number), view.start(number)
        end = min(record.end, position)
        spans = [span for span in record.spans(level) if start + span[1] < end]
        if not spans:
            return
        handle.seek(start)
        data = handle.read(end - start)
        lines: set[int] = set()
        for hint_class, first, last in spans:
            low = data.rfind(b"\n", 0, first) + 1
            high = data.find(b"\n", min(last, len(data))) + 1 or len(data)
            lines |= CLASS_PROBES[hint_class].line_starts(data, low, high)
        if end == record.end and len(data) - max(lines, default=0) < max(lines, default=0):
            self.take(data, start, lines, len(data), record.newlines)  # nearer the end
        else:
            self.take(data, start, lines, 0, view.newlines_before(number))

    def take(self, data: bytes, base: int, lines: set[int], known: int, before: int) -> None:
        """Of the lines of ``data`` (whole lines at offset ``base``) that start at ``lines``,
        the ones to keep, newest first, until ``count`` are found. ``before`` "\\n" lie
        before ``data[known]``: lines are numbered counting from there."""
        at, above = known, before
        for start in sorted(lines, reverse=True):
            if start <= at:
                above -= data.count(b"\n", start, at)
            else:
                above += data.count(b"\n", at, start)
            at = start
            end = data.find(b"\n", start)
            raw = data[start : len(data) if end == -1 else end]
            text = display_text(raw)
            if not text.strip():
                continue
            line = classify(text)
            if not self.keep.keeps(line):
                continue
            self.hits.append(_Hit(base + start, above + 1, line, line_stamp(raw)))
            if self.done:
                return

    def entries(self, handle: IO[bytes], view: IndexView) -> list[dict[str, Any]]:
        """The lines found, oldest first, with their times."""
        hits, stamps = self.hits, [hit.stamp for hit in self.hits]
        for at in range(len(hits) - 1, -1, -1):
            if stamps[at] is not None:
                continue
            if at == len(hits) - 1:
                floor = max(0, hits[at].offset - STAMP_LOOKBACK) if self.done else 0
                stamps[at] = stamp_before(handle, hits[at].offset, floor, view)
            else:
                found = stamp_before(handle, hits[at].offset, hits[at + 1].offset, view)
                stamps[at] = stamps[at + 1] if found is None else found
        return [
            entry(hit.line, stamp, hit.number)
            for hit, stamp in zip(reversed(hits), reversed(stamps), strict=True)
        ]


def _line_blocks(handle: IO[bytes], floor: int, end: int) -> Iterator[tuple[bytes, int]]:
    """Bytes [floor, end) from the end in blocks of whole lines: (bytes, offset of the
    first). ``floor`` is where a line starts."""
    position, carry = end, b""
    while position > floor:
        start = max(floor, position - BLOCK)
        handle.seek(start)
        data = handle.read(position - start) + carry
        position = start
        if start == floor:
            yield data, start
            return
        cut = data.find(b"\n")
        if cut == -1:
            carry = data
            continue
        carry = data[: cut + 1]
        yield data[cut + 1 :], start + cut + 1


def stamp_before(handle: IO[bytes], position: int, floor: int, view: IndexView) -> str | None:
    """The timestamp of the nearest logger line starting in [floor, position) (a line starts
    at ``position``), None if there is none. Read upwards in growing windows, passing over
    the records in which no line starts with "["."""
    window, high = STAMP_WINDOW, position
    while True:
        high = view.skip_unbracketed(high, floor)
        if high <= floor:
            return None
        low = max(floor, high - window)
        begin = max(0, low - 1)  # the byte before ``low`` says whether a line starts there
        handle.seek(begin)
        data = handle.read(high - begin + STAMP_PREFIX_BYTES)
        stamp = _last_stamp(data, low - begin, high - begin, at_start=low == 0)
        if stamp is not None:
            return stamp
        high, window = low, min(window * 4, STAMP_WINDOW_MOST)


def _last_stamp(data: bytes, low: int, high: int, at_start: bool) -> str | None:
    """The timestamp of the last logger line starting in ``data[low:high]`` (``at_start``:
    ``data`` starts the file, so a line starts at 0)."""
    end = high
    while (at := data.rfind(b"\n[", max(low - 1, 0), end)) != -1:
        stamp = line_stamp(data[at + 1 : at + 1 + STAMP_PREFIX_BYTES].split(b"\n", 1)[0])
        if stamp is not None:
            return stamp
        end = at + 1
    if at_start and low == 0 and data[:1] == b"[":
        return line_stamp(data[:STAMP_PREFIX_BYTES].split(b"\n", 1)[0])
    return None
