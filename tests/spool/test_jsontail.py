"""Reading an append-only JSON-lines file from its end, against reading it whole."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpd.spool import jsontail
from dpd.spool.jsontail import json_lines_backwards


def read_forwards(path: Path) -> list[Any]:
    """The reference: every line parsed from the start, but the one after the last newline."""
    records = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


RECORD = st.fixed_dictionaries(
    {"seq": st.integers(0, 10**6), "type": st.sampled_from(["log", "status", "metrics"])},
    optional={"text": st.text(max_size=40)},
)


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(RECORD, max_size=40),
    tail=st.sampled_from([b"", b'{"seq": 9', b"garbage"]),
    garbled=st.booleans(),
    block=st.integers(1, 64),
)
def test_records_come_last_first_as_reading_the_whole_file_gives_them(
    tmp_path_factory, records, tail, garbled, block
) -> None:
    path = Path(tmp_path_factory.mktemp("j")) / "events.jsonl"
    lines = [json.dumps(r).encode() for r in records]
    if garbled and lines:
        lines.insert(len(lines) // 2, b"{not json")
    path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)
    original = jsontail.BLOCK
    jsontail.BLOCK = block  # lines span many blocks
    try:
        backwards = list(json_lines_backwards(path))
        statuses = list(json_lines_backwards(path, contains=b'"type": "status"'))
    finally:
        jsontail.BLOCK = original
    whole = read_forwards(path)
    assert backwards == whole[::-1]
    assert statuses == [r for r in whole[::-1] if r["type"] == "status"]


def test_a_missing_file_has_no_records(tmp_path: Path) -> None:
    assert list(json_lines_backwards(tmp_path / "absent.jsonl")) == []


def test_only_the_end_of_a_big_file_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    with path.open("w") as handle:
        for seq in range(1, 200_001):
            handle.write(json.dumps({"seq": seq, "type": "log", "lines": ["x" * 40]}) + "\n")
    read: list[int] = []

    class Counting(io.BufferedReader):
        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(jsontail, "open", lambda p, mode: Counting(io.FileIO(p, "r")), False)
    records = json_lines_backwards(path)
    assert next(records)["seq"] == 200_000
    records.close()
    assert path.stat().st_size > 8 * jsontail.BLOCK
    assert sum(read) == jsontail.BLOCK
