"""Reading a daemon's JSON-lines files while it appends to them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def complete_records(path: Path) -> list[dict[str, Any]]:
    """The records of every complete line: a line the daemon is still writing (no newline
    yet) is left for the next read instead of failing to parse."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")[:-1]  # the part after the last newline is unfinished
    return [json.loads(line) for line in lines if line.strip()]
