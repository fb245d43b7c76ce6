"""One ffmpeg run, with progress, that can be stopped.

ffmpeg writes ``-progress pipe:1`` blocks of ``key=value`` lines, each ending with
``progress=continue`` or ``progress=end``; ``ProgressParser`` (pure) turns them into frame
counts. The process gets SIGKILL when the daemon process dies (PR_SET_PDEATHSIG), so an
ffmpeg orphaned by a crash never keeps writing a file the restarted daemon reuses; the
caller deletes partial output either way.
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


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the daemon dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def run_ffmpeg(command: list[str], on_frames: Callable[[int], None]) -> int:
    """Run ``command`` to the end, calling ``on_frames`` after every progress block;
    returns the frames written (ffmpeg's last report).
    Cancelling the awaiting task kills ffmpeg (and waits for it) before re-raising."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    stderr_task = asyncio.ensure_future(_tail(proc.stderr))
    try:
        frames = await _follow(proc.stdout, on_frames)
        code = await proc.wait()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        stderr_task.cancel()
        raise
    stderr = await stderr_task
    if code != 0:
        reason = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {code}"
        raise TranscodeFailed(f"ffmpeg failed ({code}): {reason}")
    return frames


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
