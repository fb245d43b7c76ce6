"""The guard on aiohttp's server logger, with a fake clock: malformed-request records lose
the client's bytes and traceback, at most ``per_minute`` pass a minute, the next one after
a pause counts those dropped; other records are untouched."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from dpd.logsetup import MalformedRequestFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record_of(error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, "web_protocol.py", 1,
        "Error handling request from %s", ("10.0.0.7",), exc_info,
    )  # fmt: skip


def test_a_malformed_request_becomes_one_line_without_the_header() -> None:
    guard = MalformedRequestFilter(per_minute=3, clock=Clock())
    record = record_of(BadHttpMessage("Invalid header value char:\n  b'Authorization: sk_x'"))
    assert guard.filter(record)
    text = record.getMessage()
    assert text == "refused a malformed HTTP request from 10.0.0.7: 400 BadHttpMessage"
    assert record.exc_info is None and record.levelno == logging.WARNING
    assert "sk_x" not in logging.Formatter().format(record)


def test_past_the_quota_records_are_dropped_and_counted() -> None:
    clock = Clock()
    guard = MalformedRequestFilter(per_minute=3, clock=clock)
    passed = [guard.filter(record_of(LineTooLong("line", "8190"))) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    clock.now += 61
    later = record_of(BadHttpMessage("x"))
    assert guard.filter(later)
    assert later.getMessage().endswith("(7 more not logged)")
    assert guard.dropped == 0


def test_other_records_pass_unchanged() -> None:
    guard = MalformedRequestFilter(per_minute=0, clock=Clock())
    plain = record_of(None)
    failure = record_of(RuntimeError("a bug"))
    assert guard.filter(plain) and guard.filter(failure)
    assert plain.getMessage() == "Error handling request from 10.0.0.7"
    assert failure.exc_info is not None and failure.levelno == logging.ERROR
