"""Logging to stderr in a form journald reads well.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the sd-daemon priority prefix
(``<3>`` for errors...) so journald records the level, and carries no timestamp (journald
adds its own). Elsewhere lines carry a UTC timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys
import time

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


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def _plain_formatter() -> logging.Formatter:
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    return formatter
