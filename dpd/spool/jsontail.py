"""The newest records of an append-only JSON-lines file (events.jsonl, metrics.jsonl), read
from its end.

Start-up and re-attach need only the last seq, the last status event and the offset of the
last metric or log record, while events.jsonl holds every log line a run printed: reading it
whole took about 5 s per GiB of history per start. Read from the end in blocks, the newest
records cost what they weigh; lines that cannot hold what is looked for (``contains``) are
passed over without being parsed.

The piece after the last newline is not a record (``atomic.append_line`` writes a line and
its newline at once: a crash mid-write leaves a torn tail), and a garbled line is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, Final

BLOCK: Final = 1 << 20
_COMPACT: Final = (",", ":")


def record_bytes(record: Any) -> bytes:
    """One record as events.jsonl and metrics.jsonl hold it: compact JSON, no newline."""
    return json.dumps(record, separators=_COMPACT).encode()


def field_bytes(name: str, value: Any) -> bytes:
    """How ``name: value`` appears in a ``record_bytes`` line: what to pass as ``contains``."""
    return record_bytes({name: value})[1:-1]


def json_lines_backwards(path: str | os.PathLike[str], contains: bytes = b"") -> Iterator[Any]:
    """Complete records, the last first; with ``contains``, only lines holding those bytes."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the generator's finally)
    except FileNotFoundError:
        return
    try:
        end = handle.seek(0, os.SEEK_END)
        carry = b""  # the end of the line the later block began inside
        torn = True  # until a newline is found, what is read is a torn tail
        while end > 0:
            start = max(0, end - BLOCK)
            handle.seek(start)
            data = handle.read(end - start) + carry
            end = start
            if torn:
                cut = data.rfind(b"\n")
                if cut < 0:
                    continue
                data, torn = data[:cut], False
            if start > 0:
                cut = data.find(b"\n")
                if cut < 0:
                    carry = data
                    continue
                carry, data = data[:cut], data[cut + 1 :]
            else:
                carry = b""
            if contains not in data:  # no line of this block holds it: none is parsed
                continue
            for piece in reversed(data.split(b"\n")):
                if contains in piece and piece.strip():
                    try:
                        yield json.loads(piece)
                    except ValueError:
                        continue
    finally:
        handle.close()
