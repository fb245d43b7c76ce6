"""/logs and /logs/search on a real daemon, over a generated train.log, against the
whole-file model of tests/logs."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dpd.config import RateLimit
from dpd.logs import leveltail
from dpd.logs.entries import LineFilter, make_filter, parse_time
from dpd.logs.reader import _collect, backward_blocks
from dpd.spool import layout as names
from dpd.trainlog import lineindex
from tests.http.conftest import UNLIMITED, Api
from tests.logs.logfactory import make_hinted_log, make_log, naive_lines, naive_search, naive_tail

BASE = "/api/v1/training/logged"


async def logged_task(api: Api, steps: int = 3000) -> None:
    reply = await api.post("/api/v1/training/start", json=await api.parked_job("logged"))
    assert reply.status == 201, reply.body
    make_log(api.daemon.services.layout.job_dir("logged") / names.TRAIN_LOG, steps)


def log_path(api: Api):  # type: ignore[no-untyped-def]
    return api.daemon.services.layout.job_dir("logged") / names.TRAIN_LOG


async def test_tail_filters_and_total_lines(api: Api) -> None:
    await logged_task(api)
    path = log_path(api)
    reply = await api.get(f"{BASE}/logs?tail=50", key=api.key("preprocessing"))
    assert reply.status == 200
    data = reply.body["data"]
    assert data["total_lines"] == len(naive_lines(path))
    assert data["logs"] == naive_tail(path, 50, LineFilter())
    assert data["log_file"] == str(path)
    errors = (await api.get(f"{BASE}/logs?tail=5&level=ERROR")).body["data"]["logs"]
    assert errors == naive_tail(path, 5, make_filter("ERROR", None))
    assert {e["level"] for e in errors} == {"ERROR"}
    default = (await api.get(f"{BASE}/logs?type=train")).body["data"]["logs"]
    assert len(default) == 100 and {e["type"] for e in default} == {"train"}


async def test_since_returns_lines_from_that_time(api: Api) -> None:
    await logged_task(api)
    since = "2025-02-12T07:49:00Z"
    data = (await api.get(f"{BASE}/logs?tail=10000&since={quote(since)}")).body["data"]
    assert data["logs"] == naive_tail(log_path(api), 10_000, LineFilter(), parse_time("s", since))
    assert data["logs"][0]["timestamp"] >= since[:-1]


async def test_search_with_line_numbers_matched_text_and_time_range(api: Api) -> None:
    await logged_task(api)
    reply = await api.get(f"{BASE}/logs/search?keyword=loss&type=train&limit=3")
    data = reply.body["data"]
    expected = naive_search(log_path(api), "loss", make_filter(None, "train"))
    assert data["total_matches"] == len(expected) == 3000
    assert data["results"] == expected[:3]
    assert data["results"][0]["matched_text"] == "loss: 0.5000"
    assert data["query"] == {"keyword": "loss", "type": "train", "limit": 3, "ignore_case": False}
    start, end = "2025-02-12T07:10:00Z", "2025-02-12T07:10:09Z"
    ranged = await api.get(
        f"{BASE}/logs/search?keyword=LOSS&ignore_case=true&start_time={start}&end_time={end}"
    )
    assert ranged.body["data"]["total_matches"] == 10
    oom = await api.get(f"{BASE}/logs/search?keyword={quote('CUDA out of memory')}&level=ERROR")
    assert oom.body["data"]["total_matches"] == 3000 // 333


async def test_bad_requests_unknown_tasks_and_missing_keys(api: Api) -> None:
    await logged_task(api, steps=5)
    assert (await api.get(f"{BASE}/logs/search")).status == 400
    assert (await api.get(f"{BASE}/logs?since=yesterday")).status == 400
    assert (await api.get(f"{BASE}/logs?tail=0")).status == 400
    assert (await api.get(f"{BASE}/logs?level=LOUD")).status == 400
    missing = await api.get("/api/v1/training/nope/logs")
    assert missing.status == 404 and missing.body["code"] == 404
    assert (await api.get(f"{BASE}/logs", key=None)).status == 401
    assert (await api.get(f"{BASE}/logs/search?keyword=x", key="wrong")).status == 401


async def test_a_task_without_output_has_an_empty_log(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("quiet"))
    data = (await api.get("/api/v1/training/quiet/logs")).body["data"]
    assert data["total_lines"] == 0 and data["logs"] == []


async def test_logs_say_which_event_seq_a_follower_streams_from(api: Api) -> None:
    """``dpd logs -f`` prints the tail, then streams from last_seq: taken before the file
    is read, it never lies past what the tail covered."""
    await api.post("/api/v1/training/start", json=await api.parked_job("seq"))
    store = api.daemon.services.store
    before = store.last_event_seq("seq")
    assert before >= 1  # the queued status
    data = (await api.get("/api/v1/training/seq/logs")).body["data"]
    assert data["last_seq"] == before
    await asyncio.to_thread(store.append_event, "seq", "log", {"lines": ["x"], "offset": 2})
    data = (await api.get("/api/v1/training/seq/logs")).body["data"]
    assert data["last_seq"] == before + 1


async def test_logs_count_against_the_logs_rate_class(api: Api) -> None:
    await logged_task(api, steps=5)
    api.daemon.rate_limiter.set_limits(dataclasses.replace(UNLIMITED, logs=RateLimit(2, 60)))
    key = api.key("preprocessing")
    assert (await api.get(f"{BASE}/logs", key=key)).headers["X-RateLimit-Limit"] == "2"
    assert (await api.get(f"{BASE}/logs/search?keyword=x", key=key)).status == 200
    refused = await api.get(f"{BASE}/logs", key=key)
    assert refused.status == 429 and refused.body["data"]["retry_after"] > 0


async def test_a_level_filtered_tail_answers_the_same_through_the_line_index(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first filtered tail of a log without an index builds one (records of 2 KiB here)
    and saves it; that answer and the next, read through it, are what the line-by-line walk
    gives. A search late in the log is numbered from it too."""
    monkeypatch.setattr(lineindex, "RECORD_SPAN", 2048)
    monkeypatch.setattr(leveltail, "BUILD_AFTER", 16 * 1024)
    await api.post("/api/v1/training/start", json=await api.parked_job("logged"))
    path = make_hinted_log(log_path(api), steps=1500)
    keep = make_filter("ERROR", None)
    walked = await asyncio.to_thread(walked_tail, path, keep)
    for _ in range(2):
        data = (await api.get(f"{BASE}/logs?tail=100&level=ERROR")).body["data"]
        assert data["logs"] == walked and data["returned_lines"] == len(walked) > 50
        assert data["total_lines"] == len(naive_lines(path))
        assert path.with_name("train.log.idx").exists()
    start = "2025-02-12T07:20:00Z"
    found = (await api.get(f"{BASE}/logs/search?keyword=step&start_time={start}&limit=5")).body
    expected = naive_search(path, "step", LineFilter(), parse_time("s", start))
    assert found["data"]["results"] == expected[:5]


def walked_tail(path: Path, keep: LineFilter) -> list[dict[str, Any]]:
    """The last 100 lines ``keep`` lets through, walking the file backwards line by line."""
    with path.open("rb") as handle:
        blocks = backward_blocks(handle, path.stat().st_size)
        return _collect(blocks, len(naive_lines(path)), 100, keep, None)
