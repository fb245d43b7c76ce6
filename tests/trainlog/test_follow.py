"""LogFollower on real files: complete lines only, tqdm redraws collapsed, exact resumption."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpd.trainlog import lineindex
from dpd.trainlog.follow import LogFollower, split_lines
from dpd.trainlog.hints import ERROR_HINTS, WARNING_HINTS

RECORDED = Path(__file__).parents[1] / "supervisor" / "recorded"


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def test_a_missing_file_reads_as_empty_until_it_appears(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    follower = LogFollower(log)
    assert follower.read_new() == ([], 0)
    append(log, b"hello\n")
    assert follower.read_new() == (["hello"], 6)


def test_incomplete_tail_is_not_consumed_and_a_restarted_reader_resumes_there(
    tmp_path: Path,
) -> None:
    log = tmp_path / "train.log"
    append(log, b"one\ntwo\nthr")
    follower = LogFollower(log)
    assert follower.read_new() == (["one", "two"], 8)
    assert follower.read_new() == ([], 8)
    append(log, b"ee\nfo")
    restarted = LogFollower(log, follower.offset)
    assert restarted.read_new() == (["three"], 14)
    append(log, b"ur\n")
    assert restarted.read_new() == (["four"], 19)
    assert follower.offset == 8  # the first reader's offset only moves when it reads


def test_final_read_takes_the_unterminated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    append(log, b"done\nTRAINING COMPLETE!")
    follower = LogFollower(log)
    assert follower.read_new() == (["done"], 5)
    assert follower.read_new(final=True) == (["TRAINING COMPLETE!"], 23)
    assert follower.read_new(final=True) == ([], 23)


def test_tqdm_redraws_collapse_to_the_last_state(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    redraws = b"".join(b"\r 1%%|| %d/1000" % n for n in range(1000))
    append(log, b"caching latents: /d\n" + redraws + b"\r100%|| 1000/1000\nnext\n")
    lines, _ = LogFollower(log).read_new()
    assert lines == ["caching latents: /d", "100%|| 1000/1000", "next"]


def test_a_running_bar_gives_its_latest_complete_state_per_read(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    follower = LogFollower(log)
    append(log, b"\r 10%|| 1/10\r 20%|| 2/10")
    assert follower.read_new()[0] == [" 10%|| 1/10"]  # " 20%" may still be being written
    append(log, b"\r 30%|| 3/10\r 40%|| 4/10")
    assert follower.read_new()[0] == [" 30%|| 3/10"]
    append(log, b"\r100%|| 10/10\n")
    assert follower.read_new()[0] == ["100%|| 10/10"]
    assert follower.offset == log.stat().st_size


def test_crlf_split_across_two_reads_is_one_line_end(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    append(log, b"windows line\r")
    follower = LogFollower(log)
    assert follower.read_new()[0] == ["windows line"]
    append(log, b"\nnext\r\n")
    assert follower.read_new() == (["next"], 20)
    restarted = LogFollower(log, 13)  # resuming right between "\r" and "\n"
    assert restarted.read_new() == (["next"], 20)


def test_undecodable_bytes_are_replaced_not_fatal(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    append(log, b"bad \xff\xfe bytes\n\xe2\x96\x88 bar\n")
    lines, _ = LogFollower(log).read_new()
    assert lines == ["bad \ufffd\ufffd bytes", "\u2588 bar"]


def test_max_bytes_limits_a_read_and_a_huge_line_still_advances(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    append(log, b"a" * 50 + b"\n" + b"b" * 10 + b"\n")
    follower = LogFollower(log)
    first, offset = follower.read_new(max_bytes=20)
    assert first == ["a" * 20] and offset == 20  # one line longer than a read: split, not stuck
    rest: list[str] = []
    while True:
        lines, _ = follower.read_new(max_bytes=20)
        if not lines:
            break
        rest.extend(lines)
    assert rest == ["a" * 20, "a" * 10, "b" * 10]
    assert follower.offset == 62


def test_blank_lines_are_kept_but_blank_redraws_are_not() -> None:
    assert split_lines("a\n\nb\n") == ["a", "", "b"]
    assert split_lines("\r          \r\n") == []
    assert split_lines("abc\rdef\n") == ["def"]


def test_recorded_output_reads_the_same_in_tiny_reads_as_in_one(tmp_path: Path) -> None:
    data = (RECORDED / "success_2epochs.log").read_bytes()
    whole, _ = LogFollower(RECORDED / "success_2epochs.log").read_new(final=True)
    log = tmp_path / "train.log"
    follower = LogFollower(log)
    pieces: list[str] = []
    for start in range(0, len(data), 4096):
        append(log, data[start : start + 4096])
        pieces.extend(follower.read_new()[0])
    pieces.extend(follower.read_new(final=True)[0])
    assert pieces == whole
    assert "steps: 6 loss: 0.1000 iter time (s): 2.000 samples/sec: 2.000" in whole


LINE = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(LINE, min_size=1, max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    read_size=st.integers(min_value=8, max_value=64),
    restart=st.booleans(),
)
def test_no_line_lost_or_repeated_whatever_the_write_and_read_boundaries(
    tmp_path: Path, lines: list[str], cuts: list[int], read_size: int, restart: bool
) -> None:
    """Lines without "\\r" and shorter than a read come back exactly, in order, once —
    across arbitrary write boundaries, read sizes and reader restarts."""
    lines = [line[: (read_size - 1) // 4] for line in lines]  # 4 bytes a character at most
    data = "".join(line + "\n" for line in lines).encode()
    log = tmp_path / f"case-{abs(hash((tuple(lines), tuple(cuts), read_size)))}.log"
    log.unlink(missing_ok=True)
    follower = LogFollower(log)
    got: list[str] = []
    bounds = sorted({min(c, len(data)) for c in cuts} | {len(data)})
    written = 0
    for bound in bounds:
        append(log, data[written:bound])
        written = bound
        if restart:
            follower = LogFollower(log, follower.offset)
        while True:
            new, _ = follower.read_new(max_bytes=read_size)
            if not new:
                break
            got.extend(new)
    assert got == lines
    assert follower.offset == len(data)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", b" "]), max_size=60),
    read_size=st.integers(min_value=1, max_value=16),
)
def test_newlines_before_the_offset_are_counted_exactly(
    tmp_path_factory: pytest.TempPathFactory, data: list[bytes], read_size: int
) -> None:
    """The count the logs API takes for line numbers: every "\\n" before the offset, also
    when a "\\r\\n" is split across two reads."""
    log = tmp_path_factory.mktemp("count") / "train.log"
    content = b"".join(data)
    follower = LogFollower(log)
    for start in range(0, len(content), 3):
        append(log, content[start : start + 3])
        follower.read_new(max_bytes=read_size)
        assert follower.newlines == content[: follower.offset].count(b"\n")
    while follower.read_new(max_bytes=read_size, final=True)[1] < len(content):
        assert follower.newlines == content[: follower.offset].count(b"\n")
    assert follower.offset == len(content)
    assert follower.newlines == content.count(b"\n")


def test_a_count_is_unknown_after_seeking_and_after_the_file_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    append(log, b"one\ntwo\n")
    follower = LogFollower(log)
    follower.read_new()
    assert follower.newlines == 2
    follower.seek(4)
    assert follower.newlines is None
    follower.seek(0)
    follower.read_new()
    assert follower.newlines == 2
    log.rename(tmp_path / "train.log.1")  # kept, so its inode is not reused at once
    append(log, b"three\nfour\nfive\n")  # a new file (inode) under the same name
    follower.read_new()
    assert follower.newlines is None


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.lists(
        st.sampled_from([b"ok ", b"ERROR", b"RROR", b"[W", b"Traceback", b"\n", b"\r", b"x"]),
        max_size=80,
    ),
    read_size=st.integers(min_value=1, max_value=24),
)
def test_the_line_index_notes_every_level_hint_also_one_cut_by_a_read(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    data: list[bytes],
    read_size: int,
) -> None:
    """What lets a filtered tail skip a followed log's records unread: a hint lies only in a
    record marked for it, between its first and its last hint, also one cut in two by a
    read; and the records are those a build in one pass cuts."""
    monkeypatch.setattr(lineindex, "RECORD_SPAN", 8)
    log = tmp_path_factory.mktemp("hints") / "train.log"
    content = b"".join(data)
    append(log, content)
    follower = LogFollower(log, index=lineindex.LineIndex(log))
    while follower.read_new(max_bytes=read_size, final=True)[1] < len(content):
        pass
    assert follower.index is not None
    with log.open("rb") as handle:
        view = follower.index.view(handle)
        once = lineindex.LineIndex(log).extend(handle, len(content))
    assert view.packed[: view.count * lineindex.RECORD.size] == once.packed
    for number in range(view.count):
        record, start = view.record(number), view.start(number)
        chunk = content[start : record.end]
        for hints, flag, first, last in (
            (ERROR_HINTS, lineindex.ERROR_HINTED, record.error_first, record.error_last),
            (WARNING_HINTS, lineindex.WARNING_HINTED, record.warning_first, record.warning_last),
        ):
            found = [h for h in hints if h in chunk]
            assert bool(found) == bool(record.flags & flag)
            if found:
                assert chunk.rfind(b"\n", 0, first) + 1 <= min(chunk.find(h) for h in found)
                assert max(chunk.rfind(h) + len(h) for h in found) <= last
