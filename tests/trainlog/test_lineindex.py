"""The line index of train.log: a follower and a cold build cut the same records, a tail
filtered by level through it answers what the line-by-line walk answers, and an index file
that no longer matches its log is noticed and built again."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import IO

import pytest

from dpd.logs import leveltail
from dpd.logs.entries import LineFilter, make_filter, parse_time
from dpd.logs.reader import _collect, backward_blocks, read_tail
from dpd.logs.search import SearchQuery, search_log
from dpd.trainlog import counter, lineindex
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.follow import LogFollower
from dpd.trainlog.hints import CLASS_PROBES, ERROR_HINTS, WARNING_HINTS
from dpd.trainlog.lineindex import LineIndex
from tests.logs.logfactory import make_hinted_log, naive_lines, naive_search, naive_tail

SPAN = 2048


@pytest.fixture(autouse=True)
def small_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of 2 KiB, so a log of a few hundred KiB has hundreds of them, and an index
    is built once a tail searched 16 KiB."""
    monkeypatch.setattr(lineindex, "RECORD_SPAN", SPAN)
    monkeypatch.setattr(lineindex, "READ_BYTES", 5000)
    monkeypatch.setattr(leveltail, "BUILD_AFTER", 16 * 1024)
    monkeypatch.setattr(leveltail, "BLOCK", 3000)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return make_hinted_log(tmp_path / "train.log", steps=1500)


def index_file(log: Path) -> Path:
    return log.with_name(log.name + ".idx")


def follow(log: Path, counter: LineCounter, seed: int = 1) -> LogFollower:
    """Read the whole log the way the supervisor does, in pieces of random sizes, telling
    ``counter``'s index."""
    pieces = random.Random(seed)
    follower = LogFollower(log, index=counter.index(log))
    while follower.offset < log.stat().st_size:
        follower.read_new(max_bytes=pieces.choice([1, 7, 300, 4096, 65536]), final=True)
    return follower


def plain_tail(log: Path, count: int, keep: LineFilter) -> list[dict]:  # type: ignore[type-arg]
    """What the line-by-line walk from the end answers, without any index."""
    total = len(naive_lines(log))
    with log.open("rb") as handle:
        return _collect(backward_blocks(handle, log.stat().st_size), total, count, keep, None)


COMBINATIONS = [
    (count, level, type_)
    for count in (1, 5, 40, 10_000)
    for level in ("WARNING", "ERROR", "CRITICAL")
    for type_ in (None, "system")
]


def test_a_follower_and_a_cold_build_write_the_same_index(log: Path, tmp_path: Path) -> None:
    followed = LineCounter()
    follow(log, followed)
    followed.index(log).save()
    by_follower = index_file(log).read_bytes()
    index_file(log).unlink()
    with log.open("rb") as handle:
        view = LineIndex(log).extend(handle, log.stat().st_size)
    assert index_file(log).read_bytes() == by_follower
    assert view.count > 300 and view.hinted_counts[0] > 30


def test_records_note_every_hint_and_every_newline(log: Path) -> None:
    """The property the tail relies on: a record's span holds every hint of its class in
    it, a record without a class flag holds none, and the newline counts are exact."""
    data = log.read_bytes()
    counter = LineCounter()
    follow(log, counter, seed=7)
    with log.open("rb") as handle:
        view = counter.index(log).view(handle)
    for number in range(view.count):
        start, record = view.start(number), view.record(number)
        assert data[record.end - 1 : record.end] == b"\n"
        assert record.end - start >= SPAN and record.newlines == data.count(b"\n", 0, record.end)
        chunk = data[start : record.end]
        spans = [(record.error_first, record.error_last)]
        spans.append((record.warning_first, record.warning_last))
        for hints, span in zip((ERROR_HINTS, WARNING_HINTS), spans, strict=True):
            found = [h for h in hints if h in chunk]
            if not found:
                assert span == (0, 0)
                continue
            low = chunk.rfind(b"\n", 0, span[0]) + 1  # the lines a tail reads
            high = chunk.find(b"\n", span[1] - 1) + 1
            assert 0 < span[1] <= len(chunk)
            assert low <= min(chunk.find(h) for h in found)
            assert high >= max(chunk.rfind(h) + len(h) for h in found)


@pytest.mark.parametrize(("count", "level", "type_"), COMBINATIONS)
def test_a_tail_through_a_followers_index_matches_the_plain_walk(
    log: Path, count: int, level: str, type_: str | None
) -> None:
    counter = LineCounter()
    follow(log, counter)
    keep = make_filter(level, type_)
    page = read_tail(log, count, keep, None, counter)
    assert page.entries == plain_tail(log, count, keep)
    assert page.total_lines == len(naive_lines(log))


@pytest.mark.parametrize(("count", "level", "type_"), COMBINATIONS)
def test_a_tail_that_builds_the_index_and_one_that_loads_it_match_the_plain_walk(
    log: Path, count: int, level: str, type_: str | None
) -> None:
    keep = make_filter(level, type_)
    expected = plain_tail(log, count, keep)
    first = read_tail(log, count, keep, None, LineCounter())
    if count > 5:  # a short tail is found before the search reaches BUILD_AFTER
        assert index_file(log).exists()
    assert first.entries == expected
    assert read_tail(log, count, keep, None, LineCounter()).entries == expected


@pytest.mark.parametrize("since", ["2025-02-12T07:10:00Z", "2025-02-12T07:24:00Z"])
@pytest.mark.parametrize("level", ["WARNING", "ERROR", None])
def test_since_with_an_index_matches_the_model(log: Path, since: str, level: str | None) -> None:
    counter = LineCounter()
    follow(log, counter)
    keep, local = make_filter(level, None), parse_time("since", since)
    for count in (3, 10_000):
        page = read_tail(log, count, keep, local, counter)
        assert page.entries == naive_tail(log, count, keep, local)


def test_an_untimed_error_far_below_its_logger_line_has_no_time_when_the_tail_is_full(
    log: Path,
) -> None:
    """The look-back limit of the plain walk holds through the index too: here the oldest
    line returned has its logger line about 80 KiB above it."""
    counter = LineCounter()
    follow(log, counter)
    keep = make_filter("ERROR", None)
    everything = plain_tail(log, 10_000, keep)
    far = next(i for i, e in enumerate(everything) if e["message"] == "ValueError: bad batch")
    count = len(everything) - far
    page = read_tail(log, count, keep, None, counter)
    assert page.entries[0]["message"] == "ValueError: bad batch"
    assert page.entries[0]["timestamp"] is None and everything[far]["timestamp"] is not None
    assert page.entries == plain_tail(log, count, keep)


def test_a_log_that_grew_is_indexed_on_from_where_the_index_ends(log: Path) -> None:
    read_tail(log, 10_000, make_filter("ERROR", None), None, LineCounter())
    saved = index_file(log).stat().st_size
    with log.open("ab") as handle:
        handle.write(b"\n" + log.read_bytes()[:200_000] + b"\nOutOfMemoryError: last\n")
    keep = make_filter("ERROR", None)
    page = read_tail(log, 10_000, keep, None, LineCounter())
    assert page.entries == plain_tail(log, 10_000, keep)
    assert page.entries[-1]["message"] == "OutOfMemoryError: last"
    assert index_file(log).stat().st_size > saved


def built_index(log: Path) -> bytes:
    """A cold build of the log's index, left in place; its bytes."""
    index_file(log).unlink(missing_ok=True)
    with log.open("rb") as handle:
        LineIndex(log).extend(handle, log.stat().st_size)
    return index_file(log).read_bytes()


def answers_match(log: Path, counter: LineCounter | None = None) -> None:
    for level in ("WARNING", "ERROR"):
        keep = make_filter(level, None)
        page = read_tail(log, 10_000, keep, None, counter or LineCounter())
        assert page.entries == plain_tail(log, 10_000, keep)
        assert page.total_lines == len(naive_lines(log))


def test_a_log_rewritten_in_place_is_noticed_in_memory_and_on_disk(
    log: Path, tmp_path: Path
) -> None:
    counter = LineCounter()
    answers_match(log, counter)
    assert index_file(log).exists()
    other = make_hinted_log(tmp_path / "other.log", steps=1300, seed=5).read_bytes()
    inode = log.stat().st_ino
    with log.open("r+b") as handle:  # same inode, other bytes
        handle.truncate(0)
        handle.write(other)
    assert log.stat().st_ino == inode
    answers_match(log, counter)  # the index this process holds
    answers_match(log)  # the saved one
    assert index_file(log).read_bytes() == built_index(log)


def test_a_log_cut_back_keeps_the_records_that_still_match(log: Path) -> None:
    answers_match(log)
    whole = index_file(log).read_bytes()
    os.truncate(log, log.stat().st_size // 2)
    with log.open("rb") as handle:
        view = LineIndex(log).view(handle)
    assert view.count > 0 and view.covered <= log.stat().st_size
    assert index_file(log).read_bytes() == whole[: len(index_file(log).read_bytes())]
    answers_match(log)


def test_a_replaced_log_is_not_read_with_the_old_index(log: Path, tmp_path: Path) -> None:
    answers_match(log)
    fresh = make_hinted_log(tmp_path / "fresh.log", steps=1500, seed=3)
    os.replace(fresh, log)  # another inode: the header no longer names it
    with log.open("rb") as handle:
        assert LineIndex(log).view(handle).count == 0
    answers_match(log)
    assert index_file(log).read_bytes() == built_index(log)


@pytest.mark.parametrize(
    "damage",
    ["torn last record", "garbage appended", "bad record", "zeroed tail", "wrong version",
     "other hint tables", "empty file"],
)  # fmt: skip
def test_a_damaged_index_file_is_cut_to_what_is_sound_and_built_again(
    log: Path, damage: str
) -> None:
    good = built_index(log)
    record = lineindex.RECORD.size
    header = lineindex.HEADER.size
    damaged = {
        "torn last record": good[:-10],
        "garbage appended": good + b"\x01" * 100,
        "bad record": good[: header + 7 * record + 3] + b"\xff" + good[header + 7 * record + 4 :],
        "zeroed tail": good[: header + 20 * record] + bytes(len(good) - header - 20 * record),
        "wrong version": good[:8] + b"\x09" + good[9:],
        "other hint tables": good[:16] + bytes(4) + good[20:],
        "empty file": b"",
    }[damage]
    index_file(log).write_bytes(damaged)
    full = (len(good) - header) // record
    sound = {"torn last record": full - 1, "garbage appended": full, "bad record": 7,
             "zeroed tail": 20}.get(damage, 0)  # fmt: skip
    with log.open("rb") as handle:
        index = LineIndex(log)
        assert index.view(handle).count == sound
        if sound:  # cut back to what is sound (a file with a bad header is just rewritten)
            assert index_file(log).read_bytes() == good[: header + sound * record]
        index.extend(handle, log.stat().st_size)
    assert index_file(log).read_bytes() == good
    answers_match(log)


def test_an_unwritable_index_leaves_the_answers_right(log: Path) -> None:
    index_file(log).mkdir()  # a directory where the file would go: every write fails
    answers_match(log)
    counter = LineCounter()
    answers_match(log, counter)
    answers_match(log, counter)
    shutil.rmtree(index_file(log))


def test_probes_find_a_hint_cut_in_two_between_pieces() -> None:
    """What the follower feeds arrives in pieces of any size: a hint begun in one piece and
    ended in the next is found, at its place."""
    text = b"abc [E12 x\nzz Tracebac" + b"k here\nok\n"
    for cut in range(1, len(text)):
        record = lineindex._OpenRecord(0, 0)
        record.take(text[:cut], 0, 0, cut)
        record.take(text, 0, cut, len(text))
        first, last = record.spans[0] or (-1, -1)
        assert (first, last) == (5, text.index(b"k here") + 1), cut
        assert CLASS_PROBES[0].line_starts(text, 0, len(text)) == {0, 11}


def test_a_time_range_late_in_the_log_is_numbered_from_the_index(
    log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_tail(log, 10_000, make_filter("ERROR", None), None, LineCounter())  # builds it
    counted: list[tuple[int, int]] = []
    count = counter.count_newlines

    def spy(handle: IO[bytes], start: int, end: int) -> int:
        counted.append((start, end))
        return count(handle, start, end)

    monkeypatch.setattr(counter, "count_newlines", spy)
    monkeypatch.setattr(counter, "COUNT_BLOCK", 4096)  # what counting from 0 costs less than
    start = parse_time("start_time", "2025-02-12T07:20:00Z")
    expected = naive_search(log, "step", LineFilter(), start, None)
    page = search_log(log, SearchQuery("step", start=start, limit=50), LineCounter())
    assert page.results == expected[:50] and page.total_matches == len(expected)
    assert len(counted) == 1 and counted[0][1] - counted[0][0] < 2 * SPAN  # not from 0
