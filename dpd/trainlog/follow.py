"""Reading train.log from a byte offset, one complete line at a time.

Guarantees: a line is returned once — the offset moves only past complete lines (ended by
"\\n" or "\\r"), so a reader restarted at a saved offset neither loses nor repeats one. A run
of tqdm "\\r" redraws comes back as its last state, not as thousands of lines. A file that
does not exist yet reads as empty; one that grows while read is read up to what was there.

Blocking file I/O: call it from a thread (``asyncio.to_thread``), never on the event loop.

``LogChanges`` says *when* to read: one inotify instance for every followed train.log, whose
``IN_MODIFY`` wakes that job's watcher, so an idle or slow trainer costs the daemon nothing
between its writes. Events are hints only: the watcher still reads from its offset (an
event never carries data), and reads now and then without one (a lost event, a queue
overflow, a file replaced under its watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from asyncinotify import Inotify, Mask, Watch

from dpd.trainlog.counter import LineCounter
from dpd.trainlog.lineindex import LineIndex

log = logging.getLogger("dpd.supervisor")

EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (+ name)
READ_SIZE = 64 * 1024


class LogFollower:
    """Tails one log file by offset; ``offset`` is public so state.json can carry it. Every
    byte it passes goes into ``index`` too, the log's line index, when it has one."""

    def __init__(
        self,
        path: Path,
        offset: int = 0,
        newlines: int | None = None,
        index: LineIndex | None = None,
    ) -> None:
        self.path = path
        self.offset = offset
        # "\n" bytes before ``offset`` (None: not known), for the logs API's line numbers
        self.newlines = 0 if offset == 0 else newlines
        self.index = index
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file read
        self.at_eof = True  # the last read reached the end of the file (nothing left)

    def seek(self, offset: int) -> None:
        """Continue from ``offset`` (a new run appends to the log): the count is lost (the
        index fills what it lacks from the file at the next read)."""
        self.offset = offset
        self.newlines = 0 if offset == 0 else None

    def read_new(self, max_bytes: int = 1 << 20, final: bool = False) -> tuple[list[str], int]:
        """Complete lines since the offset (at most ``max_bytes`` read) and the new offset.

        ``final`` (the writer has exited) also takes an unterminated last line.
        """
        start = self.offset
        back = 1 if start > 0 else 0  # one byte back: a "\\r\\n" split across reads is one end
        try:
            with self.path.open("rb") as handle:
                info = os.fstat(handle.fileno())
                handle.seek(start - back)
                data = handle.read(max_bytes + back)
                at_eof = self.at_eof = len(data) < max_bytes + back
                complete = self._advance(data, back, (info.st_dev, info.st_ino), at_eof, final)
                if self.index is not None and self.offset > start:
                    passed = data[back : back + self.offset - start]
                    self.index.follow(handle, (info.st_dev, info.st_ino), passed, start)
        except FileNotFoundError:
            self.at_eof = True
            return [], start
        if not complete:
            return [], self.offset
        return split_lines(complete.decode("utf-8", errors="replace")), self.offset

    def _advance(
        self, data: bytes, back: int, identity: tuple[int, int], at_eof: bool, final: bool
    ) -> bytes:
        """Move the offset past the complete lines of ``data`` (read from ``back`` bytes
        before the offset) and return them."""
        if self.identity != identity:
            if self.identity is not None:
                self.newlines = None  # another file under the same name
            self.identity = identity
        start, skipped = self.offset, 0
        if back:
            previous, data = data[:1], data[1:]
            if previous == b"\r" and data[:1] == b"\n":
                data, start, skipped = data[1:], start + 1, 1
        end = _complete_end(data, at_eof, final)
        self.offset = start + end
        if self.newlines is not None:
            self.newlines += skipped + data.count(b"\n", 0, end)
        return data[:end]

    def tell(self, counts: LineCounter) -> bool:
        """Give ``counts`` what this follower knows of the file (its newlines before the
        offset); False when it knows nothing (it did not read from 0)."""
        if self.newlines is None or self.identity is None:
            return False
        device, inode = self.identity
        counts.learn(self.path, device, inode, self.offset, self.newlines)
        return True


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


class LogChanges:
    """One inotify instance shared by all followed logs: ``watch`` a path with an
    ``asyncio.Event`` to set after each write to it. Lives on the loop that first watches."""

    def __init__(self) -> None:
        self._inotify: Inotify | None = None
        self._watchers: dict[int, set[asyncio.Event]] = {}

    def watch(self, path: Path, changed: asyncio.Event) -> LogWatch | None:
        """Set ``changed`` after each write to ``path`` (which must exist) from now on;
        None when inotify cannot watch it (the caller then polls)."""
        try:
            inotify = self._open()
            watch = inotify.add_watch(path, Mask.MODIFY)
        except OSError as err:
            log.warning("cannot watch %s (%s); polling it instead", path, err)
            return None
        handle = LogWatch(watch, changed)
        self._watchers.setdefault(watch.wd, set()).add(changed)
        return handle

    def unwatch(self, handle: LogWatch | None) -> None:
        if handle is None or self._inotify is None:
            return
        wd = handle.watch.wd
        watchers = self._watchers.get(wd, set())
        watchers.discard(handle.changed)
        if not watchers:
            self._watchers.pop(wd, None)
            # fails harmlessly if the kernel dropped the watch already (file deleted)
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(handle.watch)
        if not self._watchers:
            # also drops asyncinotify's record of removed watches, which it prunes only
            # when it parses the IN_IGNORED events itself (_drain reads them raw)
            self.close()

    def close(self) -> None:
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
        self._watchers.clear()

    def _open(self) -> Inotify:
        if self._inotify is None:
            inotify = Inotify()
            # asyncinotify 4.x's InitFlags.NONBLOCK is O_CLOEXEC: without this, _drain's
            # last read would block the loop
            os.set_blocking(inotify.fd, False)
            asyncio.get_running_loop().add_reader(inotify.fd, self._drain)
            self._inotify = inotify
        return self._inotify

    def _drain(self) -> None:
        """Readable: read the queued events (non-blocking; what does not fit in one read
        keeps the descriptor readable, so the loop calls again) and wake their watchers.
        Only each event's watch descriptor matters, so the raw records are walked here
        rather than built into objects: this runs about once per trainer write."""
        inotify = self._inotify
        if inotify is None:
            return
        try:
            data = os.read(inotify.fd, READ_SIZE)
        except BlockingIOError:
            return
        woken: set[int] = set()
        position = 0
        while position + EVENT_HEADER.size <= len(data):
            wd, mask, _cookie, name_length = EVENT_HEADER.unpack_from(data, position)
            position += EVENT_HEADER.size + name_length
            if mask & Mask.Q_OVERFLOW:  # events were lost: every watcher looks
                woken.update(self._watchers)
            else:
                woken.add(wd)
        for wd in woken:
            for changed in self._watchers.get(wd, ()):
                changed.set()


@dataclass(frozen=True)
class LogWatch:
    """A watched log: ``changed`` is set after a write (its watcher clears it)."""

    watch: Watch
    changed: asyncio.Event
