"""The tail of train.log read from the end agrees with a whole-file model, on every filter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dpd.logs import leveltail, reader
from dpd.logs.entries import LineFilter, classify, display_text, make_filter, parse_time
from dpd.logs.reader import backward_lines, read_tail
from dpd.trainlog import lineindex
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.hints import level_hints
from tests.logs.logfactory import followed_counter, make_log, naive_lines, naive_tail


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_log(tmp_path_factory.mktemp("logs") / "train.log", steps=3000)


@pytest.mark.parametrize(
    ("count", "level", "type_"),
    [(1, None, None), (100, None, None), (250, "WARNING", None), (40, "ERROR", None),
     (500, None, "train"), (30, None, "system"), (10_000, "INFO", "all")],
)  # fmt: skip
def test_tail_matches_the_whole_file_model(
    log: Path, count: int, level: str | None, type_: str | None
) -> None:
    keep = make_filter(level, type_)
    page = read_tail(log, count, keep)
    assert page.total_lines == len(naive_lines(log))
    assert page.entries == naive_tail(log, count, keep)


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
def test_skipping_blocks_by_level_changes_nothing(
    log: Path, level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "BLOCK", 300)
    keep = make_filter(level, None)
    assert read_tail(log, 30, keep).entries == naive_tail(log, 30, keep)


def test_level_hints_cover_every_line_of_that_level(log: Path) -> None:
    recorded = Path(__file__).parent.parent / "supervisor" / "recorded"
    raws = [raw for _, raw, _ in naive_lines(log)]
    for path in recorded.glob("*.log"):
        raws += path.read_bytes().split(b"\n")
    for level in ("WARNING", "ERROR"):
        hints = level_hints(level)
        assert hints is not None
        keep = make_filter(level, None)
        qualifying = [raw for raw in raws if keep.keeps(classify(display_text(raw)))]
        assert qualifying and all(any(h in raw for h in hints) for raw in qualifying)


def test_small_blocks_split_lines_anywhere(log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "BLOCK", 7)
    with log.open("rb") as handle:
        lines = list(backward_lines(handle, log.stat().st_size, block=7))
    assert lines[::-1] == [raw for _, raw, _ in naive_lines(log)]


def test_since_keeps_lines_from_that_time_on(log: Path) -> None:
    since = parse_time("since", "2025-02-12T07:40:00")  # zone-less: taken as UTC
    page = read_tail(log, 10_000, LineFilter(), since)
    assert page.entries == naive_tail(log, 10_000, LineFilter(), since)
    assert page.entries and page.entries[0]["timestamp"] >= "2025-02-12T07:40:00"


def test_lines_without_a_timestamp_take_the_one_before_them(log: Path) -> None:
    step_line = read_tail(log, 1, make_filter(None, "train"))
    assert step_line.entries[0]["message"].startswith("steps: 3000 ")
    assert step_line.entries[0]["timestamp"] is not None
    assert step_line.entries[0]["step"] == 3000


def test_an_unfinished_last_line_and_a_missing_file(tmp_path: Path) -> None:
    log = make_log(tmp_path / "train.log", steps=3, final_newline=False)
    page = read_tail(log, 2, LineFilter())
    assert page.total_lines == len(naive_lines(log))
    assert page.entries[-1]["message"].startswith("steps: 3 ")
    assert read_tail(tmp_path / "none.log", 5, LineFilter()).total_lines == 0


def test_the_line_counter_counts_only_what_was_appended(tmp_path: Path) -> None:
    log = make_log(tmp_path / "train.log", steps=10)
    counter = LineCounter()
    first = read_tail(log, 1, LineFilter(), counter=counter).total_lines
    with log.open("ab") as handle:
        handle.write(b"one more\ntwo more\n")
    assert read_tail(log, 1, LineFilter(), counter=counter).total_lines == first + 2
    known = counter._known[str(log)]
    assert known.offset == log.stat().st_size
    os.truncate(log, 0)
    log.write_bytes(b"fresh\n")
    assert read_tail(log, 1, LineFilter(), counter=counter).total_lines == 1


@pytest.mark.parametrize("read_size", [300, 4096, 1 << 20])
@pytest.mark.parametrize("level", ["WARNING", "ERROR", "CRITICAL"])
def test_a_tail_filtered_by_level_on_a_followed_log_matches_the_model(
    log: Path, level: str, read_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lineindex, "RECORD_SPAN", 2048)
    monkeypatch.setattr(leveltail, "BLOCK", 2048)
    counter = followed_counter(log, read_size)
    keep = make_filter(level, None)
    for count in (1, 30, 10_000):
        page = read_tail(log, count, keep, None, counter)
        assert page.entries == naive_tail(log, count, keep)
        assert page.total_lines == len(naive_lines(log))


def test_the_followers_index_is_what_lets_a_filtered_tail_skip_records(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told (falsely) that no record holds a hint, the tail finds only what lies past the
    index: so a followed log is read only where the follower found hints."""
    monkeypatch.setattr(lineindex, "RECORD_SPAN", 2048)
    counter = followed_counter(log, 4096)
    keep = make_filter("ERROR", None)
    truth = read_tail(log, 10_000, keep, None, counter).entries
    assert len(truth) > 10
    index = counter.index(log)
    with log.open("rb") as handle:
        covered = index.view(handle).covered
    assert covered > log.stat().st_size - 4096
    for numbers in index._hinted:
        del numbers[:]
    lines_past = len(log.read_bytes()[:covered].split(b"\n"))
    found = read_tail(log, 10_000, keep, None, counter).entries
    assert found == [e for e in truth if e["line_number"] >= lines_past]
