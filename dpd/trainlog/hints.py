"""Which bytes a line of a level must hold, and a fast way to look for them — pure.

A line classified WARNING or above (``dpd.trainlog.lines``) holds one of the hint strings
of its level; text that holds none of them has no such line. The logs API uses this to pass
over what cannot match: a tail's blocks, and the line index's records
(``dpd.trainlog.lineindex``), which note where hints lie.
"""

from __future__ import annotations

import re
from typing import Final

from dpd.trainlog.lines import LEVEL_RANK

ERROR_HINTS: Final[tuple[bytes, ...]] = (
    b"ERROR", b"CRITICAL", b"Traceback", b'File "', b"out of memory", b"OutOfMemory",
    b"Error", b"Exception", b"Interrupt", b"Exit", b"error: ", b"[E", b"[F",
)  # fmt: skip
WARNING_HINTS: Final[tuple[bytes, ...]] = (b"WARNING", b"Warning", b"[W")


class HintProbes:
    """Regular expressions that together find every occurrence of ``hints``, one per anchor
    byte (a hint's first capital letter, else its first byte) with the rest of each hint
    matched after it and the part before by a look-behind. The regex engine scans for a
    single leading byte at memchr-like speed, so this costs about half of one ``in`` per
    hint on text where "[" and lowercase letters are everywhere."""

    def __init__(self, hints: tuple[bytes, ...]) -> None:
        groups: dict[bytes, list[bytes]] = {}
        for hint in hints:
            at = next((i for i, byte in enumerate(hint) if 65 <= byte <= 90), 0)
            behind = b"(?<=" + re.escape(hint[: at + 1]) + b")" if at else b""
            groups.setdefault(hint[at : at + 1], []).append(behind + re.escape(hint[at + 1 :]))
        self.patterns = tuple(
            re.compile(re.escape(anchor) + b"(?:" + b"|".join(rests) + b")")
            for anchor, rests in groups.items()
        )
        self.reach = max(map(len, hints)) - 1  # how far before a position a hint may start

    def found_in(self, data: bytes) -> bool:
        return any(pattern.search(data) for pattern in self.patterns)

    def line_starts(self, data: bytes, low: int, high: int) -> set[int]:
        """Starts of the lines of ``data[low:high]`` (whole lines) that hold a hint."""
        starts: set[int] = set()
        for pattern in self.patterns:
            at = low
            while (found := pattern.search(data, at, high)) is not None:
                newline = data.rfind(b"\n", low, found.start())
                starts.add(low if newline == -1 else newline + 1)
                at = data.find(b"\n", found.end(), high) + 1
                if at == 0:
                    break
        return starts

    def span(
        self, text: bytes | bytearray, begin: int, low: int, high: int
    ) -> tuple[int, int] | None:
        """(start of the first, end of the last) match in ``text[begin:high]`` that ends past
        ``low``: bytes before ``low`` were looked at already, those from ``begin`` on may hold
        the start of a hint cut in two there."""
        first = last = -1
        for pattern in self.patterns:
            at = begin
            while (found := pattern.search(text, at, high)) is not None and found.end() <= low:
                at = found.end()
            if found is None:
                continue
            first = found.start() if first == -1 else min(first, found.start())
            last = max(last, _last_end(pattern, text, found.end(), high))
        return None if first == -1 else (first, last)


def _last_end(pattern: re.Pattern[bytes], text: bytes | bytearray, known: int, high: int) -> int:
    """The end of the last match in ``text[:high]``, one ending at ``known`` being found: the
    end is searched in growing windows, so a block full of hints costs no step per match."""
    window = 4096
    while True:
        low = max(known, high - window)
        ends = [found.end() for found in pattern.finditer(text, low, high)]
        if ends or low == known:
            return max(ends, default=known)
        window *= 8


ERROR_LEVEL: Final = 0  # the hints of ERROR and CRITICAL lines
WARNING_LEVEL: Final = 1  # the hints of WARNING lines and above
LEVEL_HINTS: Final = (ERROR_HINTS, ERROR_HINTS + WARNING_HINTS)  # per level
LEVEL_PROBES: Final = tuple(HintProbes(hints) for hints in LEVEL_HINTS)
# per hint class, what the index records (a class's own hints only)
CLASS_PROBES: Final = (HintProbes(ERROR_HINTS), HintProbes(WARNING_HINTS))


def hint_level(min_level: str | None) -> int | None:
    """Which hints (ERROR_LEVEL, WARNING_LEVEL) a line must hold to be classified at
    ``min_level`` or above; None when every line may qualify."""
    if min_level is None or LEVEL_RANK[min_level] <= LEVEL_RANK["INFO"]:
        return None
    return WARNING_LEVEL if LEVEL_RANK[min_level] <= LEVEL_RANK["WARNING"] else ERROR_LEVEL


def level_hints(min_level: str | None) -> tuple[bytes, ...] | None:
    """The byte strings of which a line must hold one to be classified at ``min_level`` or
    above; None when every line may qualify."""
    level = hint_level(min_level)
    return None if level is None else LEVEL_HINTS[level]
