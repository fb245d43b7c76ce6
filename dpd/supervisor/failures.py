"""Failures in diffusion-pipe's output: tracebacks read per rank (ranks interleave on the
shared stream), the cause the API names for each, and one report per cause — pure.

A traceback is reported at the exception line that ends it; one after ``Exception ignored
in`` (printed at interpreter shutdown) is not fatal; every rank prints the same error, so a
cause is reported once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from dpd.jobs.states import Phase
from dpd.supervisor.observations import Failure, Observation

MESSAGE_LIMIT: Final = 1000
FAILURE_LINES_KEPT: Final = 30
# A traceback being read keeps at most this many lines (its last): indented lines such as
# progress bars would otherwise grow it, and state.json with it, until the exception line.
TRACEBACK_LINES_KEPT: Final = 200

_OOM: Final = re.compile(r"OutOfMemoryError|CUDA out of memory")
_PORT: Final = re.compile(r"EADDRINUSE|[Aa]ddress already in use")
_MISSING_FILE: Final = re.compile(r"FileNotFoundError|No such file or directory|Invalid path: ")
_DATASET: Final = re.compile(
    r"had no images/videos|Processed dataset was empty|WebP videos are not supported"
)
_FRAME: Final = re.compile(r'  File "([^"]+)", line (\d+), in (.+)')
_TRACEBACK: Final = "Traceback (most recent call last):"
_CHAIN_MARKERS: Final = ("During handling of the above", "The above exception was the direct")


def classify_failure(exception: str, phase: Phase, missing_latest: bool) -> str:
    """The cause named in the API error for one exception line."""
    if _OOM.search(exception):
        return "cuda_oom"
    if _PORT.search(exception):
        return "port_in_use"
    if "CUDA error" in exception:
        return "cuda_error"
    if _MISSING_FILE.search(exception):
        return "missing_file"
    if _DATASET.search(exception):
        return "dataset_error"
    if missing_latest and exception.startswith("AssertionError"):
        return "checkpoint_missing"
    if phase is Phase.STARTING:
        return "config_error"
    return "traceback"


def describe_exception(exception: str, lines: list[str]) -> str:
    """The exception line; a bare one (``AssertionError``) gets the failing source line."""
    if ": " in exception or len(lines) < 3:
        return exception
    for index in range(len(lines) - 2, -1, -1):
        frame = _FRAME.match(lines[index])
        if frame is not None:
            code = lines[index + 1].strip() if index + 1 < len(lines) - 1 else ""
            where = f"{frame.group(1).rsplit('/', 1)[-1]}:{frame.group(2)} in {frame.group(3)}"
            return f"{exception} at {where}: {code}" if code else f"{exception} at {where}"
    return exception


@dataclass(slots=True)
class _Traceback:
    """One traceback being read, per rank (ranks interleave on the shared stream)."""

    lines: list[str]
    ignored: bool  # after "Exception ignored in": printed at shutdown, not fatal


class Tracebacks:
    """The tracebacks being read, by rank, and the failures already reported."""

    def __init__(self) -> None:
        self.open: dict[int | None, _Traceback] = {}
        self.reported: set[str] = set()
        self.missing_latest: str | None = None  # DeepSpeed's warning, before the assert
        self.ignore_next = False  # after "Exception ignored in"

    def begin(self, rank: int | None, body: str) -> bool:
        """True if ``body`` starts a traceback (it is then read on by ``line``)."""
        if not body.startswith(_TRACEBACK):
            return False
        self.open[rank] = _Traceback([body], self.ignore_next)
        self.ignore_next = False
        return True

    def line(self, rank: int | None, body: str, phase: Phase, out: list[Observation]) -> bool:
        """False for a line that is not part of an open traceback (another process's
        logger line, or no traceback open for that rank)."""
        if rank not in self.open or body.startswith("["):
            return False
        current = self.open[rank]
        current.lines.append(body)
        if len(current.lines) > TRACEBACK_LINES_KEPT:
            del current.lines[: len(current.lines) - TRACEBACK_LINES_KEPT]
        if not body or body[0] in " \t" or body.startswith((_TRACEBACK, *_CHAIN_MARKERS)):
            return True
        del self.open[rank]  # the exception line ends it
        if not current.ignored:
            cause = classify_failure(body, phase, self.missing_latest is not None)
            message = describe_exception(body, current.lines)
            if cause == "checkpoint_missing":
                message = f"{message}: {self.missing_latest}"
            self.fail(cause, message, tuple(current.lines[-FAILURE_LINES_KEPT:]), phase, out)
        return True

    def fail(
        self,
        cause: str,
        message: str,
        lines: tuple[str, ...],
        phase: Phase,
        out: list[Observation],
    ) -> None:
        if cause in self.reported:  # every rank prints the same error (its own GPU number)
            return
        self.reported.add(cause)
        out.append(Failure(cause, message[:MESSAGE_LIMIT], lines, phase))

    def to_state(self) -> dict[str, Any]:
        """The parser state's keys for this part (named as before the split)."""
        return {
            "tracebacks": [[rank, t.lines, t.ignored] for rank, t in self.open.items()],
            "failures": sorted(self.reported),
            "missing_latest": self.missing_latest,
            "ignore_next_traceback": self.ignore_next,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Tracebacks:
        tracebacks = cls()
        tracebacks.open = {
            rank: _Traceback(list(lines), ignored) for rank, lines, ignored in state["tracebacks"]
        }
        tracebacks.reported = set(state["failures"])
        tracebacks.missing_latest = state["missing_latest"]
        tracebacks.ignore_next = state["ignore_next_traceback"]
        return tracebacks
