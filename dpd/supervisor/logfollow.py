"""Reading train.log from a byte offset, one complete line at a time.

Guarantees: a line is returned once — the offset moves only past complete lines (ended by
"\\n" or "\\r"), so a reader restarted at a saved offset neither loses nor repeats one. A run
of tqdm "\\r" redraws comes back as its last state, not as thousands of lines. A file that
does not exist yet reads as empty; one that grows while read is read up to what was there.

Blocking file I/O: call it from a thread (``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

from pathlib import Path


class LogFollower:
    """Tails one log file by offset; ``offset`` is public so state.json can carry it."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def read_new(self, max_bytes: int = 1 << 20, final: bool = False) -> tuple[list[str], int]:
        """Complete lines since the offset (at most ``max_bytes`` read) and the new offset.

        ``final`` (the writer has exited) also takes an unterminated last line.
        """
        start = self.offset
        back = 1 if start > 0 else 0  # one byte back: a "\\r\\n" split across reads is one end
        try:
            with self.path.open("rb") as handle:
                handle.seek(start - back)
                data = handle.read(max_bytes + back)
        except FileNotFoundError:
            return [], start
        at_eof = len(data) < max_bytes + back
        if back:
            previous, data = data[:1], data[1:]
            if previous == b"\r" and data[:1] == b"\n":
                data, start = data[1:], start + 1
        end = _complete_end(data, at_eof, final)
        self.offset = start + end
        if end == 0:
            return [], self.offset
        return split_lines(data[:end].decode("utf-8", errors="replace")), self.offset


def _complete_end(data: bytes, at_eof: bool, final: bool) -> int:
    """Bytes up to and including the last line end. Everything when the writer has exited
    and the end of the file was reached, or when one line fills the whole read (it would
    otherwise never end)."""
    if final and at_eof:
        return len(data)
    end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    if end == 0 and not at_eof:
        return len(data)
    return end


def split_lines(text: str) -> list[str]:
    """Lines of ``text`` (ends with a line end, or is the writer's final words): "\\r\\n" and
    "\\n" end a line; "\\r" inside a line means it was redrawn, so only its last non-blank
    state counts."""
    pieces = text.split("\n")
    if pieces[-1] == "":
        pieces.pop()
    lines: list[str] = []
    for piece in pieces:
        if "\r" not in piece:
            lines.append(piece)
            continue
        states = [state for state in piece.split("\r") if state.strip()]
        if states:
            lines.append(states[-1])
    return lines
