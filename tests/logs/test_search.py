"""Keyword search streamed in blocks agrees with a whole-file model: matches, counts, line
numbers, matched text, filters and time ranges (found by bisection)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from dpd.logs import search
from dpd.logs.entries import LineFilter, make_filter, parse_time
from dpd.logs.search import SearchQuery, search_lines, search_log, time_offset
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


@pytest.fixture(scope="module")
def tricky_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lines that a count without looking at each line could get wrong: several hits in one
    line, overlapping hits, hits only in overdrawn tqdm states, a line longer than a block,
    and a last line without its "\\n"."""
    lines = []
    for step in range(1, 200):
        lines += [
            f"[2025-02-12 07:00:{step % 60:02d},000] [INFO] [x.py:1:f] step={step} loss loss",
            "loss\rfoo",  # overdrawn: not a match
            "foo\rloss: 0.1",  # the last state holds it
            "loss: 0.2\r   \r",  # blank states after it do not hide it
            "LoSs: 0.3 aaaa aaa",
            "x\rLOSS\ry",
            "eval: 10% loss\reval: 100% loss",
            "[2025-02-12 07:00:00,000] [WARNING] [x.py:1:f] slow loss",
        ]
        if step % 50 == 0:
            lines.append("a" * 300 + " loss " + "b" * 300)
    path = tmp_path_factory.mktemp("tricky") / "train.log"
    path.write_text("\n".join(lines) + "\nlast loss")
    return path


@pytest.mark.parametrize("limit", [1, 7, 10_000])
@pytest.mark.parametrize(
    ("keyword", "ignore_case", "level"),
    [("loss", False, None), ("LOSS", True, None), ("aa", False, None), ("loss", False, "WARNING"),
     ("loss", True, "INFO")],
)  # fmt: skip
def test_counting_past_the_limit_agrees_with_the_model(
    tricky_log: Path, block: int, limit: int, keyword: str, ignore_case: bool, level: str | None
) -> None:
    keep = make_filter(level, None)
    expected = naive_search(tricky_log, keyword, keep, ignore_case=ignore_case)
    page = search_log(tricky_log, SearchQuery(keyword, keep, limit=limit, ignore_case=ignore_case))
    assert page.total_matches == len(expected)
    assert page.results == expected[:limit]


@pytest.mark.parametrize("data", [b"loss 1\nloss 2\n", b"loss 1\nloss 2", b"x" * 300 + b" loss"])
def test_a_file_shorter_than_its_size_ends_the_scan(block: int, data: bytes) -> None:
    """A log truncated while it is searched: the reads come back short, the scan ends with
    what it got instead of waiting for bytes that will never come."""
    scan = search._Scan(SearchQuery("loss", limit=1), first_line=1)
    scan.run(io.BytesIO(data), 0, len(data) + 1000)
    assert scan.page.total_matches == data.count(b"loss")
    assert scan.page.results[0]["line_number"] == 1


@pytest.mark.parametrize(
    ("keyword", "level", "start", "end"),
    [("loss", None, None, None), ("slow step", "WARNING", None, None),
     ("loss", None, "2025-02-12T07:10:00Z", "2025-02-12T07:20:00.5Z"),
     ("no such text", None, None, None)],
)  # fmt: skip
def test_a_search_over_the_logs_lines_agrees_with_the_files(
    log: Path, keyword: str, level: str | None, start: str | None, end: str | None
) -> None:
    """The fleet's fallback searches a log read back from its events (stream DPD)."""
    query = SearchQuery(
        keyword, make_filter(level, None), parse_time("start_time", start),
        parse_time("end_time", end), limit=40,
    )  # fmt: skip
    lines = log.read_bytes().decode().split("\n")[:-1]  # tqdm redraws keep their CR
    from_lines, from_file = search_lines(lines, query), search_log(log, query)
    assert from_lines.total_matches == from_file.total_matches
    assert from_lines.results == from_file.results
