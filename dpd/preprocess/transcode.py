"""One ffmpeg run, with progress, that can be started before its filter chain is known and
stopped at any point.

ffmpeg writes ``-progress pipe:1`` blocks of ``key=value`` lines, each ending with
``progress=continue`` or ``progress=end``; ``ProgressParser`` (pure) turns them into frame
counts. The process gets SIGKILL when the daemon process dies (PR_SET_PDEATHSIG), so an
ffmpeg orphaned by a crash never keeps writing a file the restarted daemon reuses; the
caller deletes partial output either way. One still waiting for its filter chain sees its
stdin close with the daemon, and fails on the empty chain even before that signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
from collections.abc import Callable
from dataclasses import dataclass

STDERR_KEEP = 4000
_PR_SET_PDEATHSIG = 1


class TranscodeFailed(Exception):
    """ffmpeg exited non-zero; the message carries the end of its stderr."""


@dataclass
class ProgressParser:
    """Feeds on stdout lines; ``feed`` returns the frame count at the end of each block."""

    frame: int = 0
    done: bool = False

    def feed(self, line: str) -> int | None:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        if key == "frame":
            with contextlib.suppress(ValueError):
                self.frame = int(value)
        elif key == "progress":
            self.done = value == "end"
            return self.frame
        return None


def die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the daemon dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Transcode:
    """One started ffmpeg that waits on its stdin for the filter chain (``send_filters``)
    before it opens the output, so it can be started while the upload is still being probed.
    Whoever gives up on it calls ``stop``, which kills it first: its stdin closing without a
    chain makes ffmpeg fail, never run unfiltered."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._stderr = asyncio.ensure_future(_tail(proc.stderr))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send_filters(self, chain: str) -> None:
        """Write the chain and close stdin. A chain is far smaller than a pipe's buffer, so
        this never waits; if ffmpeg has exited already, ``finish`` says why."""
        stdin = self._proc.stdin
        if stdin is None or stdin.is_closing():
            return
        stdin.write(chain.encode())
        stdin.close()

    async def finish(self, on_frames: Callable[[int], None]) -> int:
        """Wait for the end, calling ``on_frames`` after every progress block; returns the
        frames written (ffmpeg's last report). Cancelling kills ffmpeg before re-raising."""
        try:
            frames = await _follow(self._proc.stdout, on_frames)
            code = await self._proc.wait()
        except BaseException:
            await self.stop()
            raise
        stderr = await self._stderr
        if code != 0:
            reason = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
            raise TranscodeFailed(f"ffmpeg failed ({code}): {reason}")
        return frames

    async def stop(self) -> None:
        """Kill ffmpeg unless it has exited, and reap it; safe to call again."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        if self._proc.stdin is not None:  # after the kill: no chain-less end of stdin is read
            self._proc.stdin.close()
        self._stderr.cancel()


async def start_transcode(command: list[str]) -> Transcode:
    """Start ``command`` (``plan.ffmpeg_command``); ``OSError`` when it cannot be run."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    return Transcode(proc)


async def _follow(stream: asyncio.StreamReader | None, on_frames: Callable[[int], None]) -> int:
    parser = ProgressParser()
    if stream is None:
        return 0
    async for raw in stream:
        frames = parser.feed(raw.decode(errors="replace"))
        if frames is not None:
            on_frames(frames)
    return parser.frame


async def _tail(stream: asyncio.StreamReader | None) -> str:
    """Keep the last few KB of stderr: enough for the reason, bounded in memory."""
    if stream is None:
        return ""
    kept = b""
    while chunk := await stream.read(65536):
        kept = (kept + chunk)[-STDERR_KEEP:]
    return kept.decode(errors="replace")
