"""A persisted index of a train.log: where its lines are counted and where level hints lie,
so that a level-filtered tail reads only the parts that can hold such lines (blocking file
I/O: run in a thread).

The log is cut into records of at least ``RECORD_SPAN`` bytes, each ending just after the
first "\\n" at or past its span. The rule depends on the bytes only, so whoever builds the
index — the supervisor's follower as it reads, or a request for a log that has none — cuts
the same records. A record holds its end offset, the "\\n" before that end, where the first
and the last level hint of each class lie in it (``ERROR_HINTS``, ``WARNING_HINTS``: a line
of that level holds one), whether a line in it starts with "[" (only those can carry a logger
timestamp) and a CRC of its last ``SAMPLE_BYTES``.

The index is a cache beside the log (``train.log.idx``): appended to without fsync at the
follower's state.json cadence, and built again from the log wherever it does not match it.

What it does not trust: the index file. A header names the format, the hint tables it was
built with and the log's inode; each record carries its own CRC and must follow on from the
one before; the last record kept must match the log's bytes (its sample), else the records
are cut back, by bisection, to the last one that does. Weakness: a log rewritten in place
with equal bytes at the sampled ends but other bytes elsewhere would go unnoticed (logs are
only appended to).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, NamedTuple

from dpd.trainlog.hints import (
    CLASS_PROBES,
    ERROR_HINTS,
    ERROR_LEVEL,
    WARNING_HINTS,
    WARNING_LEVEL,
)

log = logging.getLogger("dpd.logs")

_REACH: Final = max(probes.reach for probes in CLASS_PROBES)
_FINGERPRINT: Final = zlib.crc32(b"\0".join(ERROR_HINTS) + b"\1" + b"\0".join(WARNING_HINTS))

SUFFIX: Final = ".idx"
RECORD_SPAN: Final = 256 * 1024
SAMPLE_BYTES: Final = 4096
READ_BYTES: Final = 8 * 1024 * 1024
MAGIC: Final = b"dpdlidx\n"
VERSION: Final = 1
HEADER: Final = struct.Struct("<8sIIIQI")  # magic, version, span, hints, log inode, CRC
RECORD: Final = struct.Struct("<QQIIIIIII")  # see Record, then the CRC of the fields
FAR: Final = 0xFFFFFFFF  # a span offset that does not fit: "to the end of the record"

# Record.flags
ERROR_HINTED: Final = 1
WARNING_HINTED: Final = 2
BRACKETED: Final = 4  # a line in it starts with "["


class Record(NamedTuple):
    """One record; spans are offsets from the record's start (``*_last`` 0: no such hint)."""

    end: int
    newlines: int  # "\n" in the log before ``end``
    flags: int
    error_first: int  # start of the first error hint
    error_last: int  # end of the last one
    warning_first: int
    warning_last: int
    sample: int  # CRC-32 of the record's last SAMPLE_BYTES (or of all of it, if shorter)

    def spans(self, level: int) -> list[tuple[int, int, int]]:
        """(hint class, first, last) of each class of hints a line of ``level`` may hold
        that the record holds: ERROR_LEVEL, and for WARNING_LEVEL also WARNING_LEVEL."""
        found = []
        if self.flags & ERROR_HINTED:
            found.append((ERROR_LEVEL, self.error_first, self.error_last))
        if level == WARNING_LEVEL and self.flags & WARNING_HINTED:
            found.append((WARNING_LEVEL, self.warning_first, self.warning_last))
        return found


class _OpenRecord:
    """The record being built: what the bytes fed since its start hold."""

    def __init__(self, start: int, newlines: int) -> None:
        self.start = start
        self.newlines = newlines  # "\n" before the end of what was fed
        self.bracketed = False
        self.spans: list[tuple[int, int] | None] = [None, None]
        self.tail: bytes | bytearray = b""  # the last SAMPLE_BYTES fed

    def take(self, text: bytes | bytearray, base: int, low: int, high: int) -> None:
        """Count ``text[low:high]`` in (``text[0]`` lies at offset ``base``; what precedes
        ``low`` in ``text`` was taken before and belongs to this record)."""
        self.newlines += text.count(b"\n", low, high)
        if not self.bracketed:
            self.bracketed = (low == 0 and text[:1] == b"[") or text.find(
                b"\n[", max(low - 1, 0), high
            ) != -1
        for number, probes in enumerate(CLASS_PROBES):
            found = probes.span(text, max(low - probes.reach, 0), low, high)
            if found is not None:
                first, last = (base + at - self.start for at in found)
                known = self.spans[number]
                self.spans[number] = (first if known is None else known[0], last)
        if high - low >= SAMPLE_BYTES:
            self.tail = text[high - SAMPLE_BYTES : high]
        else:
            self.tail = (self.tail + text[low:high])[-SAMPLE_BYTES:]

    def close(self, end: int) -> Record:
        flags = BRACKETED if self.bracketed else 0
        spans: list[tuple[int, int]] = []
        for hinted, span in zip((ERROR_HINTED, WARNING_HINTED), self.spans, strict=True):
            if span is not None:
                flags |= hinted
            first, last = span or (0, 0)
            spans.append((first, last) if last < FAR else (0, FAR))
        (error_first, error_last), (warning_first, warning_last) = spans
        sample = zlib.crc32(self.tail)
        return Record(
            end, self.newlines, flags, error_first, error_last, warning_first, warning_last, sample
        )


def pack(record: Record) -> bytes:
    fields = RECORD.pack(*record, 0)[:-4]
    return fields + struct.pack("<I", zlib.crc32(fields))


@dataclass(frozen=True)
class IndexView:
    """The records an index held when it was last checked against its log (the first
    ``count``; later appends do not change them)."""

    packed: bytearray
    ends: array[int]
    hinted: tuple[array[int], array[int]]  # record numbers per level (ERROR_LEVEL, ...)
    count: int
    hinted_counts: tuple[int, int]

    @property
    def covered(self) -> int:
        return self.ends[self.count - 1] if self.count else 0

    def record(self, number: int) -> Record:
        return Record(*RECORD.unpack_from(self.packed, number * RECORD.size)[:-1])

    def start(self, number: int) -> int:
        return self.ends[number - 1] if number else 0

    def newlines_before(self, number: int) -> int:
        """The "\\n" before record ``number`` starts."""
        return self.record(number - 1).newlines if number else 0

    def counted_below(self, offset: int) -> tuple[int, int]:
        """(the last record end at or before ``offset``, the "\\n" before it)."""
        number = bisect_right(self.ends, offset, 0, self.count)
        return self.start(number), self.newlines_before(number)

    def hinted_below(self, position: int, level: int) -> Iterator[int]:
        """Numbers of the records starting before ``position`` that hold hints of
        ``level``, newest first."""
        last = bisect_left(self.ends, position, 0, self.count)  # the first ending at or past
        numbers = self.hinted[level]
        for at in range(bisect_right(numbers, last, 0, self.hinted_counts[level]) - 1, -1, -1):
            yield numbers[at]

    def skip_unbracketed(self, high: int, floor: int) -> int:
        """``high`` lowered past the records in which no line starts with "[" (no line
        there can carry a logger timestamp), not below ``floor``."""
        while high > floor:
            number = bisect_right(self.ends, high - 1, 0, self.count)
            if number >= self.count or self.record(number).flags & BRACKETED:
                return high
            high = self.start(number)
        return high


class LineIndex:
    """The index of one log, shared by the follower that reads it and the requests that read
    it: all state changes hold the lock. Nothing is read before the first use (the object is
    made on the event loop)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.path = log_path.with_name(log_path.name + SUFFIX)
        self._lock = threading.RLock()
        self._loaded = False
        self._write_failed = False
        self._reset(None)

    def _reset(self, identity: tuple[int, int] | None) -> None:
        self._identity = identity  # (device, inode) of the log the records describe
        self._packed = bytearray()
        self._ends: array[int] = array("Q")
        self._hinted: tuple[array[int], array[int]] = (array("Q"), array("Q"))
        self._open = _OpenRecord(0, 0)
        self._carry = b""  # the last bytes fed into the open record: a hint may go on after
        self._fed = 0  # the offset up to which the log was fed in
        self._saved = 0  # records the file holds (after a header of ours)
        self._on_disk = False

    # ------------------------------------------------------------------ reading

    def view(self, handle: IO[bytes]) -> IndexView:
        """The records, checked against the open log: its identity, its size, the sample of
        the last record. What does not match is dropped (and built again when asked)."""
        with self._lock:
            info = os.fstat(handle.fileno())
            self._attach(handle, (info.st_dev, info.st_ino))
            if info.st_size < self._fed or not self._matches(handle, len(self._ends) - 1):
                self._reset(self._identity)
                self._load(handle)
            return self._view()

    def _view(self) -> IndexView:
        counts = (len(self._hinted[0]), len(self._hinted[1]))
        return IndexView(self._packed, self._ends, self._hinted, len(self._ends), counts)

    def extend(self, handle: IO[bytes], size: int) -> IndexView:
        """Index the log up to ``size`` (a pass over what is not yet), save it, and return the
        records."""
        self.view(handle)
        with self._lock:
            if size > self._fed:
                self._read_in(handle, size)
            self.save()
            return self._view()

    # ------------------------------------------------------------------ building

    def follow(
        self, handle: IO[bytes], identity: tuple[int, int], data: bytes, position: int
    ) -> None:
        """Take ``data``, read from the open log at ``position`` by its follower. Bytes
        indexed already are passed over; a gap before them is read from the log."""
        with self._lock:
            self._attach(handle, identity)
            if position + len(data) <= self._fed:
                return
            if position > self._fed:
                self._read_in(handle, position)
            if position < self._fed:
                data = data[self._fed - position :]
            self._feed(data)

    def _attach(self, handle: IO[bytes], identity: tuple[int, int]) -> None:
        """First use, or another file under the log's name: start from what is saved."""
        if not self._loaded or identity != self._identity:
            self._reset(identity)
            self._load(handle)
            self._loaded = True

    def _read_in(self, handle: IO[bytes], end: int) -> None:
        """Feed the log from ``_fed`` to ``end``, read into one reused buffer after the
        carry (a fresh object per read would cost more in page faults than the search)."""
        buffer = bytearray(min(READ_BYTES, end - self._fed) + _REACH)
        while self._fed < end:
            carry = len(self._carry)
            buffer[:carry] = self._carry
            with memoryview(buffer) as view:
                room = view[carry : carry + min(READ_BYTES, end - self._fed)]
                got = os.preadv(handle.fileno(), [room], self._fed)
            if not got:
                return
            self._take(buffer, carry, carry + got)

    def _feed(self, data: bytes) -> None:
        self._take(self._carry + data, len(self._carry), len(self._carry) + len(data))

    def _take(self, text: bytes | bytearray, at: int, length: int) -> None:
        """The next bytes of the log, ``text[at:length]`` at ``_fed`` (the carry before
        them): close every record whose span they complete."""
        base = self._fed - at
        while at < length:
            goal = max(at, self._open.start + RECORD_SPAN - 1 - base)
            cut = text.find(b"\n", goal, length)
            stop = length if cut == -1 else cut + 1
            self._open.take(text, base, at, stop)
            at = stop
            if cut != -1:
                record = self._open.close(base + stop)
                self._append(record, pack(record))
                self._open = _OpenRecord(record.end, record.newlines)
        self._fed = base + length
        self._carry = bytes(text[max(self._open.start - base, length - _REACH, 0) : length])

    def _append(self, record: Record, packed: bytes | memoryview) -> None:
        number = len(self._ends)
        self._packed += packed
        self._ends.append(record.end)
        if record.flags & ERROR_HINTED:
            self._hinted[ERROR_LEVEL].append(number)
        if record.flags & (ERROR_HINTED | WARNING_HINTED):
            self._hinted[WARNING_LEVEL].append(number)

    # ------------------------------------------------------------------ the file

    def save(self) -> None:
        """Write the records not yet in the file (no fsync: a lost write is rebuilt). A
        failed write is logged once and not tried again: the index then lives in memory."""
        with self._lock:
            count = len(self._ends)
            if self._write_failed or self._identity is None or count == self._saved:
                return
            try:
                self._write(count)
            except OSError as err:
                self._write_failed = True
                log.warning("cannot write %s (%s); its log is indexed in memory", self.path, err)

    def _write(self, count: int) -> None:
        fd, fresh = self._open_file()
        try:
            if fresh:
                assert self._identity is not None
                fields = HEADER.pack(
                    MAGIC, VERSION, RECORD_SPAN, _FINGERPRINT, self._identity[1], 0
                )
                os.write(fd, fields[:-4] + struct.pack("<I", zlib.crc32(fields[:-4])))
            at = HEADER.size + self._saved * RECORD.size
            os.pwrite(fd, self._packed[self._saved * RECORD.size : count * RECORD.size], at)
            os.ftruncate(fd, HEADER.size + count * RECORD.size)
        finally:
            os.close(fd)
        self._on_disk, self._saved = True, count

    def _open_file(self) -> tuple[int, bool]:
        """The index file to write, and whether it is new (then it needs a header)."""
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        if self._on_disk:
            try:
                return os.open(self.path, flags), False
            except FileNotFoundError:
                pass
        self._on_disk, self._saved = False, 0
        return os.open(self.path, flags | os.O_CREAT | os.O_TRUNC, 0o640), True

    def _load(self, handle: IO[bytes]) -> None:
        """Take the saved records that match the log (the state is reset)."""
        try:
            saved = self.path.read_bytes()
        except OSError:
            return
        info = os.fstat(handle.fileno())
        if not _header_matches(saved, info.st_ino):
            return
        records = list(_sound_records(saved, info.st_size))
        starts = [0] + [record.end for record, _ in records]
        keep = _matching_prefix(
            len(records), lambda n: _sample_matches(handle, starts[n], records[n][0])
        )
        for record, packed in records[:keep]:
            self._append(record, packed)
        if keep:
            last = records[keep - 1][0]
            self._open = _OpenRecord(last.end, last.newlines)
        self._fed = self._open.start
        self._on_disk, self._saved = True, keep
        if len(saved) > HEADER.size + keep * RECORD.size:
            with contextlib.suppress(OSError):  # what does not match goes (else at the next save)
                os.truncate(self.path, HEADER.size + keep * RECORD.size)

    def _matches(self, handle: IO[bytes], number: int) -> bool:
        if number < 0:
            return True
        view = self._view()
        return _sample_matches(handle, view.start(number), view.record(number))


def _sample_matches(handle: IO[bytes], start: int, record: Record) -> bool:
    """Whether the log's bytes at the end of ``record`` (from ``start``) are those indexed."""
    begin = max(start, record.end - SAMPLE_BYTES)
    handle.seek(begin)
    return zlib.crc32(handle.read(record.end - begin)) == record.sample


def _header_matches(saved: bytes, inode: int) -> bool:
    if len(saved) < HEADER.size:
        return False
    magic, version, span, hints, saved_inode, crc = HEADER.unpack_from(saved)
    return (magic, version, span, hints, saved_inode) == (
        MAGIC, VERSION, RECORD_SPAN, _FINGERPRINT, inode
    ) and crc == zlib.crc32(saved[: HEADER.size - 4])  # fmt: skip


def _sound_records(saved: bytes, size: int) -> Iterator[tuple[Record, memoryview]]:
    """The records of a saved index (each with its bytes) up to the first that is torn,
    corrupt, out of order, or past the end of the log."""
    end = newlines = 0
    whole = (len(saved) - HEADER.size) // RECORD.size * RECORD.size
    body = memoryview(saved)[HEADER.size : HEADER.size + whole]
    for at, (*fields, crc) in zip(
        range(0, whole, RECORD.size), RECORD.iter_unpack(body), strict=True
    ):
        record = Record(*fields)
        length = record.end - end
        if (
            crc != zlib.crc32(body[at : at + RECORD.size - 4])
            or length < RECORD_SPAN
            or record.end > size
            or not 0 <= record.newlines - newlines <= length
            or max(record.error_last, record.warning_last) > min(length, FAR)
        ):
            return
        yield record, body[at : at + RECORD.size]
        end, newlines = record.end, record.newlines


def _matching_prefix(count: int, matches: Callable[[int], bool]) -> int:
    """How many records, from the first, match the log: the last is checked, then a
    bisection finds where a rewritten log stops matching."""
    if count == 0 or matches(count - 1):
        return count
    low, high = 0, count - 1  # records before low match; the one at high does not
    while low < high:
        middle = (low + high) // 2
        if matches(middle):
            low = middle + 1
        else:
            high = middle
    return low
