"""``dpd submit``'s check before sending: the job file is read and validated here by the
daemon's own code (``dpd.jobs.spec``), so a mistake is reported at once, every field at
once, without a round trip and without a daemon at all.

Only what needs no file system is checked: paths for their form, not for their existence
under the daemon's data roots (the daemon may run on another machine). The daemon checks
everything again; this check only ever refuses what the daemon would refuse too.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpd.errors import BadRequest, FieldError, ValidationFailed
from dpd.jobs.spec import parse_job_document, validate_job


@dataclass(frozen=True)
class LocalCheck:
    """The document to send, or why it cannot be read (``unreadable``) or is invalid
    (``errors``, every one)."""

    document: dict[str, Any] | None = None
    unreadable: str | None = None
    errors: tuple[FieldError, ...] = ()


def read_job_bytes(name: str) -> bytes:
    """The file's bytes; ``-`` is standard input. OSError if it cannot be read."""
    return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()


def check_job_file(name: str, data: bytes) -> LocalCheck:
    """Parse as the daemon does (a ``.json`` name strictly as JSON, anything else as YAML,
    which JSON is part of) and validate without the file system."""
    try:
        document = parse_job_document(data, "json" if name.endswith(".json") else "yaml")
        validate_job(document, data_roots=None)
    except BadRequest as err:
        return LocalCheck(unreadable=err.message)
    except ValidationFailed as err:
        return LocalCheck(errors=tuple(err.errors))
    return LocalCheck(document=dict(document))


def error_lines(errors: tuple[FieldError, ...]) -> list[str]:
    """``field: message``, one a line, in the validator's order."""
    return [f"{error.field}: {error.message}" for error in errors]
