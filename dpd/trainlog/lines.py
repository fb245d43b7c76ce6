"""One trainer output line as the logs API shows it: level, type, time, epoch, step — pure.

The trainer's log is a mix of plain ``print`` lines (diffusion-pipe), DeepSpeed logger lines
(``[ts] [LEVEL] [file:line:func] message``), tqdm bars and tracebacks, from several
processes at once. ``classify_line`` looks at one line alone; only the optional ``phase``
(which the caller tracks with the output parser) tells an eval bar from a caching bar.

The two splitting helpers here (rank prefix, logger format) are shared with the output
parser so both read a line the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

LEVEL_RANK: Final = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}

LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# torch >= 2.3 prefixes every traceback line with the rank once the process group exists.
_RANK_PREFIX: Final = re.compile(r"\[rank(\d+)\]: ?")
# DeepSpeed's logger (reference §4.2): "[ts] [LEVEL] [file:line:func] message"; the line
# number is never relied upon.
_LEVEL_SET: Final = frozenset(LEVELS)
_EXCEPTION: Final = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)(?:: |$)")
_NATIVE_LOG: Final = re.compile(r"\[([IWEF])\d* ")
_NATIVE_LEVELS: Final = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
_PY_WARNING: Final = re.compile(r"\S+:\d+: \w*Warning: ")
_STEP: Final = re.compile(r"(?:steps: |step=|global_step|step: |directory step)(\d+)")
_EPOCH: Final = re.compile(r"(?:epoch: |directory epoch)(\d+)")

# Logger sources that belong to the training itself rather than to DeepSpeed/launcher plumbing.
_TRAIN_SOURCES: Final = frozenset({"dataset.py", "train.py", "saver.py", "cache.py"})
# What diffusion-pipe prints while it caches latents and text embeddings (the caching phase).
CACHING_PREFIXES: Final = (
    "caching latents: ",
    "caching text embeddings: ",
    "[CACHE] ",
    "Grouped metadata is not cached",
    "Found grouped metadata cache",
    "Loading grouped metadata",
    "Building iteration order",
)
_TRAIN_PREFIXES: Final = (
    "steps: ",
    "Started new epoch: ",
    "Saving model to directory ",
    "Resuming training from checkpoint",
    "Global batch size = ",
    "Computed ",
    "TRAINING COMPLETE!",
    "Manually quitting",
    *CACHING_PREFIXES,
    "trainable params: ",
)
_TRAIN_LOGGED: Final = ("step=", "[Torch] Checkpoint ", "Saving model checkpoint: ")


@dataclass(frozen=True, slots=True)
class LoggerLine:
    """The parts of a DeepSpeed logger line."""

    timestamp: str  # ISO 8601, the trainer host's local time as printed (no zone)
    level: str
    source: str  # e.g. "logging.py", "launch.py"
    message: str


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line as /logs returns it (api.md §5)."""

    message: str
    level: str
    type: str  # "train" | "eval" | "system"
    timestamp: str | None
    epoch: int | None
    step: int | None
    rank: int | None


def split_rank(text: str) -> tuple[int | None, str]:
    """``"[rank1]: x"`` -> ``(1, "x")``; lines without the prefix get ``None``."""
    if not text.startswith("[rank"):
        return None, text
    match = _RANK_PREFIX.match(text)
    if match is None:
        return None, text
    return int(match.group(1)), text[match.end() :]


def split_logger(text: str) -> LoggerLine | None:
    """The DeepSpeed logger format, or None for any other line."""
    parts = logger_parts(text)
    if parts is None:
        return None
    stamp, level, source, message = parts
    return LoggerLine(f"{stamp[:10]}T{stamp[11:19]}.{stamp[20:]}", level, source, message)


def logger_parts(text: str) -> tuple[str, str, str, str] | None:
    """(``2025-02-12 07:02:00,123``, level, source file, message) of a DeepSpeed logger line.

    The hot path of the output parser: a split instead of a regex, checked just enough to
    not mistake another bracketed line for it."""
    if len(text) < 30 or text[0] != "[" or not text[1].isdigit():
        return None
    parts = text.split("] ", 3)
    if len(parts) < 3 or len(parts[0]) != 24 or parts[1][1:] not in _LEVEL_SET:
        return None
    source = parts[2]
    colon = source.find(":")
    if source[:1] != "[" or colon == -1 or text[5] != "-" or text[11] != " " or text[20] != ",":
        return None
    return parts[0][1:], parts[1][1:], source[1:colon], parts[3] if len(parts) == 4 else ""


def is_progress_bar(text: str) -> bool:
    """tqdm / HF-datasets bars: ``desc:  40%|████      | 4/10 [00:01<00:02, 2.9it/s]``."""
    return "%|" in text


def classify_line(text: str, phase: str | None = None) -> LogLine:
    """Level, type, time, epoch and step of one output line. Never raises."""
    text = text.rstrip("\r\n")
    rank, body = split_rank(text)
    logged = split_logger(body)
    message = logged.message if logged else body
    if message.startswith("[Rank "):
        message = message[message.find("] ") + 2 :] if "] " in message else message
    return LogLine(
        message=text,
        level=_level(body, message, logged),
        type=_type(message, logged, phase),
        timestamp=logged.timestamp if logged else None,
        epoch=_number(_EPOCH, message) if "epoch" in message else None,
        step=_number(_STEP, message) if "step" in message else None,
        rank=rank,
    )


def _level(body: str, message: str, logged: LoggerLine | None) -> str:
    if logged is not None:
        return logged.level
    if body.startswith(("Traceback (most recent call last)", '  File "')) or _is_oom(body):
        return "ERROR"
    if body.startswith("WARNING") or ("Warning: " in body and _PY_WARNING.match(body)):
        return "WARNING"
    native = _NATIVE_LOG.match(body) if body[:1] == "[" else None
    if native is not None:  # torch's C++ log: "[W socket.cpp:...]" / "[W212 07:00:05.1 ...]"
        return _NATIVE_LEVELS[native.group(1)]
    exception = _EXCEPTION.match(message)
    if exception is not None:
        return "WARNING" if exception.group(1) == "Warning" else "ERROR"
    if ": error: " in body and body.split(": error: ", 1)[0].endswith(".py"):
        return "ERROR"  # argparse
    return "INFO"


def _is_oom(text: str) -> bool:
    return "CUDA out of memory" in text or "OutOfMemoryError" in text


def _type(message: str, logged: LoggerLine | None, phase: str | None) -> str:
    if message.startswith("Running eval") or (phase == "eval" and is_progress_bar(message)):
        return "eval"
    if logged is None:
        return "train" if message.startswith(_TRAIN_PREFIXES) else "system"
    if logged.source in _TRAIN_SOURCES or message.startswith(_TRAIN_LOGGED):
        return "train"
    return "system"


def _number(pattern: re.Pattern[str], message: str) -> int | None:
    match = pattern.search(message)
    return int(match.group(1)) if match else None
