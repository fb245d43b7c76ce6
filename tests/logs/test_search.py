"""Keyword search streamed in blocks agrees with a whole-file model: matches, counts, line
numbers, matched text, filters and time ranges (found by bisection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpd.logs import search
from dpd.logs.entries import LineFilter, make_filter, parse_time
from dpd.logs.search import SearchQuery, search_log, time_offset
from tests.logs.logfactory import make_log, naive_search


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_log(tmp_path_factory.mktemp("logs") / "train.log", steps=3000)


@pytest.fixture(params=[8 * 1024 * 1024, 4096, 97])
def block(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(search, "BLOCK", request.param)
    monkeypatch.setattr(search, "BISECT_WINDOW", 1024)
    monkeypatch.setattr(search, "STAMP_BLOCK", 512)
    return int(request.param)


@pytest.mark.parametrize(
    ("keyword", "level", "type_", "ignore_case"),
    [("loss", None, None, False), ("CUDA out of memory", None, None, False),
     ("slow step", "WARNING", None, False), ("LOSS", None, "train", True),
     ("eval", None, None, False), ("no such text", None, None, False)],
)  # fmt: skip
def test_search_matches_the_whole_file_model(
    log: Path, block: int, keyword: str, level: str | None, type_: str | None, ignore_case: bool
) -> None:
    keep = make_filter(level, type_)
    expected = naive_search(log, keyword, keep, ignore_case=ignore_case)
    page = search_log(log, SearchQuery(keyword, keep, limit=50, ignore_case=ignore_case))
    assert page.total_matches == len(expected)
    assert page.results == expected[:50]


def test_matched_text_carries_the_value(log: Path) -> None:
    page = search_log(log, SearchQuery("loss", limit=1))
    assert page.results[0]["matched_text"] == "loss: 0.5000"
    assert page.results[0]["line_number"] == 4


@pytest.mark.parametrize(
    ("start", "end"),
    [("2025-02-12T07:10:00Z", None), (None, "2025-02-12T07:20:00Z"),
     ("2025-02-12T07:10:00Z", "2025-02-12T07:20:00.5Z"), ("2025-02-13T00:00:00Z", None),
     ("2025-02-12T08:00:00Z", "2025-02-12T07:00:00Z")],
)  # fmt: skip
def test_time_range_is_found_by_bisection(
    log: Path, block: int, start: str | None, end: str | None
) -> None:
    low, high = parse_time("start_time", start), parse_time("end_time", end)
    expected = naive_search(log, "step", LineFilter(), low, high)
    page = search_log(log, SearchQuery("step", start=low, end=high, limit=10_000))
    assert page.total_matches == len(expected)
    assert page.results == expected


def test_time_offset_lands_on_a_logger_line(log: Path) -> None:
    size = log.stat().st_size
    when = parse_time("t", "2025-02-12T07:30:00Z")
    assert when is not None
    with log.open("rb") as handle:
        offset = time_offset(handle, size, when, strict=False)
        handle.seek(offset - 1)
        assert handle.read(1) == b"\n"
        line = handle.readline()
    assert line.startswith(b"[2025-02-12 ")
    assert search_log(log, SearchQuery("x", start="2099-01-01T00:00:00.000")).total_matches == 0
