"""Pure pieces of the logs API: times, filters, matched text, the SSE wire format."""

from __future__ import annotations

import json

import pytest

from dpd.errors import BadRequest
from dpd.logs.entries import LineFilter, classify, matched_text, parse_time, utc_iso
from dpd.logs.sse import Cursor, event_messages, parse_cursor, parse_kinds


def test_times_round_trip_between_utc_and_local() -> None:
    local = parse_time("since", "2025-02-12T07:00:00Z")
    assert local is not None and utc_iso(local) == "2025-02-12T07:00:00.000Z"
    assert parse_time("since", "1739343600") == local
    assert parse_time("since", "2025-02-12T08:00:00+01:00") == local
    assert parse_time("since", "") is None
    with pytest.raises(BadRequest):
        parse_time("since", "yesterday")


def test_level_is_a_minimum_and_all_means_any_type() -> None:
    error = classify("RuntimeError: CUDA out of memory.")
    info = classify("steps: 5 loss: 0.1")
    assert LineFilter("WARNING").keeps(error) and not LineFilter("WARNING").keeps(info)
    assert LineFilter(None, "train").keeps(info) and not LineFilter(None, "eval").keeps(info)


def test_matched_text() -> None:
    line = "Epoch 1/10 - Step 50/100 - Loss: 0.456 - LR: 5e-05"
    assert matched_text(line, "Loss", False) == "Loss: 0.456"
    assert matched_text(line, "loss", True) == "Loss: 0.456"
    assert matched_text(line, "loss", False) is None
    assert matched_text("CUDA out of memory. Tried", "out of", False) == "out of"


def test_cursor_parsing() -> None:
    assert parse_cursor("12") == Cursor(12) and Cursor(12).after_seq == 12
    assert parse_cursor("12:3") == Cursor(12, 3) and Cursor(12, 3).after_seq == 11
    assert parse_cursor(None) is None
    with pytest.raises(BadRequest):
        parse_cursor("abc")
    assert parse_kinds("log,status") == {"log", "status"}
    with pytest.raises(BadRequest):
        parse_kinds("log,bogus")


def test_each_log_line_is_a_message_and_only_the_last_has_the_bare_seq() -> None:
    event = {"type": "log", "seq": 7, "timestamp": 1.0, "data": {"lines": ["a", "b", "c"]}}
    kinds = parse_kinds(None)
    ids = [m.split(b"\n")[0] for m in event_messages(event, kinds, LineFilter())]
    assert ids == [b"id: 7:0", b"id: 7:1", b"id: 7"]
    resumed = event_messages(event, kinds, LineFilter(), Cursor(7, 1))
    assert len(resumed) == 1
    data = json.loads(resumed[0].split(b"data: ", 1)[1])
    assert data["message"] == "c" and data["timestamp"] == "1970-01-01T00:00:01.000Z"
    status = {"type": "status", "seq": 8, "timestamp": 2.0, "data": {"status": "running"}}
    (named,) = event_messages(status, kinds, LineFilter())
    assert named.startswith(b"id: 8\nevent: status\ndata: ")
    assert event_messages(status, parse_kinds("log"), LineFilter()) == []
