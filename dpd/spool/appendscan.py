"""Reading an append-only JSON-lines file (metrics.jsonl, events.jsonl) once, then only what
was appended since (blocking file I/O: run in a thread).

``AppendScan`` keeps where its last read ended and hands the complete records after it to a
fold, so whoever keeps a summary of the file (the dashboard's series and markers) pays for
the whole file once and for each append after.

What it does not trust: that the file it read is still the file at that path. It keeps the
file's (device, inode) and the last ``SAMPLE_BYTES`` before its offset; a file replaced
(another inode), cut shorter than the offset, or whose bytes before the offset changed, is
read again from the start, with the fold's state reset (``reset`` says so). Known weakness:
a file rewritten in place with the same bytes at the sampled end but others before it goes
unnoticed (these files are only appended to).

A piece after the last newline is a write in progress: it is left for the next read. Lines
are parsed a block at a time (one JSON array per block, a C-speed parse); a block holding a
garbled line is parsed line by line and the garbled line skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

SAMPLE_BYTES: Final = 64
READ_BYTES: Final = 4 << 20


@dataclass
class AppendScan:
    """Folds the records of ``path`` into whatever ``fold`` keeps; ``choose`` picks, from a
    block of whole lines, those worth parsing in file order (the rest go unparsed)."""

    path: Path
    fold: Callable[[list[Any]], None]
    reset: Callable[[], None]
    choose: Callable[[bytes], list[bytes]] | None = None
    offset: int = 0
    identity: tuple[int, int] | None = None
    sample: bytes = b""
    rereads: int = field(default=0)  # how many times the file was found replaced or rewritten

    def refresh(self) -> bool:
        """Read what was appended since the last call; True if anything was folded."""
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            if self.offset or self.identity is not None:
                self._start_over()
            return False
        with handle:
            info = os.fstat(handle.fileno())
            identity = (info.st_dev, info.st_ino)
            if not self._still_same(handle, identity, info.st_size):
                self._start_over()
            self.identity = identity
            return self._read_to(handle, info.st_size)

    def _still_same(self, handle: Any, identity: tuple[int, int], size: int) -> bool:
        if self.identity is None:
            return self.offset == 0
        if identity != self.identity or size < self.offset:
            return False
        if not self.sample:
            return True
        handle.seek(self.offset - len(self.sample))
        return bool(handle.read(len(self.sample)) == self.sample)

    def _start_over(self) -> None:
        if self.offset or self.identity is not None:
            self.rereads += 1
        self.offset, self.identity, self.sample = 0, None, b""
        self.reset()

    def _read_to(self, handle: Any, size: int) -> bool:
        folded = False
        handle.seek(self.offset)
        while self.offset < size:
            block = handle.read(min(READ_BYTES, size - self.offset))
            if not block:
                break
            cut = block.rfind(b"\n")
            if cut < 0:
                if len(block) < READ_BYTES:
                    break  # only a torn tail is left
                cut = len(block) - 1  # one line longer than a block: taken as it stands
            self.offset += cut + 1
            handle.seek(self.offset)
            choose = self.choose or all_lines
            wanted = choose(block[:cut])
            if wanted:
                self.fold(parse_lines(wanted))
                folded = True
        if self.offset:
            start = max(0, self.offset - SAMPLE_BYTES)
            handle.seek(start)
            self.sample = handle.read(self.offset - start)
        return folded


def all_lines(block: bytes) -> list[bytes]:
    return [line for line in block.split(b"\n") if line.strip()]


def parse_lines(lines: list[bytes]) -> list[Any]:
    """The records of ``lines``: parsed as one JSON array; on a garbled line, one by one."""
    try:
        parsed: list[Any] = json.loads(b"[" + b",".join(lines) + b"]")
        if len(parsed) == len(lines):
            return parsed
    except ValueError:
        pass
    found = []
    for line in lines:
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found
