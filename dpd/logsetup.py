"""Logging to stderr in a form journald reads well.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the sd-daemon priority prefix
(``<3>`` for errors...) so journald records the level, and carries no timestamp (journald
adds its own). Elsewhere lines carry a UTC timestamp and the level name.

A client controls what aiohttp's server logger would print about a request it cannot
parse: the offending header line (an ``Authorization`` key among them) and a traceback per
request. ``guard_server_log`` turns each such record into one short line without the
client's bytes, and lets at most ``MALFORMED_PER_MINUTE`` through a minute.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Final

from aiohttp.http_exceptions import HttpProcessingError

MALFORMED_PER_MINUTE: Final = 10
SERVER_LOGGER: Final = "aiohttp.server"

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # journald splits on newlines; keep a multi-line record together under one priority
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def setup_logging(level: str = "INFO", log_file: str = "") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        stream.setFormatter(JournalFormatter())
    else:
        stream.setFormatter(_plain_formatter())
    root.addHandler(stream)
    if log_file:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(_plain_formatter())
        root.addHandler(file_handler)
    set_level(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    guard_server_log()


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def _plain_formatter() -> logging.Formatter:
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    return formatter


class MalformedRequestFilter(logging.Filter):
    """Rewrites aiohttp's record of an unparseable request (an ``HttpProcessingError``) to
    one line naming the peer and the error's class, never its message (which quotes the
    request), and drops those past ``per_minute``; the next one let through says how many
    were dropped. Other records pass unchanged."""

    def __init__(
        self, per_minute: int = MALFORMED_PER_MINUTE, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.per_minute = per_minute
        self.clock = clock
        self._window_start = -60.0
        self._in_window = 0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = self.clock()
        if now - self._window_start >= 60:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self.per_minute:
            self.dropped += 1
            return False
        self._in_window += 1
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        note = f" ({self.dropped} more not logged)" if self.dropped else ""
        self.dropped = 0
        record.msg = "refused a malformed HTTP request from %s: %s %s%s"
        record.args = (str(peer), error.code, type(error).__name__, note)
        record.exc_info = record.exc_text = None
        if record.levelno > logging.WARNING:  # the client's fault, not the daemon's
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def guard_server_log() -> None:
    """Installs MalformedRequestFilter on aiohttp's server logger, once per process."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())
