from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dpd.events.acks import (
    AckWindow,
    acks_path,
    load_record,
    load_watermarks,
    save_watermarks,
)


def test_watermark_waits_for_the_hole_to_fill() -> None:
    window = AckWindow()
    for seq in (1, 2, 4, 5):
        window.ack("t", seq)
    assert window.watermark("t") == 2
    window.ack("t", 3)
    assert window.watermark("t") == 5
    window.ack("t", 2)  # a duplicate ack changes nothing
    assert window.watermark("t") == 5


@given(st.permutations(list(range(1, 60))))
def test_any_ack_order_ends_at_the_highest_seq(order: list[int]) -> None:
    window = AckWindow({"t": 0})
    for seq in order:
        window.ack("t", seq)
    assert window.watermark("t") == 59


def test_changed_flag_is_raised_only_when_a_watermark_moves() -> None:
    window = AckWindow({"t": 3})
    window.ack("t", 5)
    assert not window.changed
    window.ack("t", 4)
    assert window.changed and window.snapshot() == {"t": 5}


def test_record_round_trips_through_the_file(tmp_path: Path) -> None:
    path = acks_path(tmp_path / "state")
    save_watermarks(path, {"a.b": 7, "c": 1})
    assert load_watermarks(path) == {"a.b": 7, "c": 1}
    assert json.loads(path.read_text())["version"] == 1


def test_missing_or_garbled_record_means_start_over(tmp_path: Path) -> None:
    path = acks_path(tmp_path)
    assert load_watermarks(path) == {}
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert load_watermarks(path) == {}
    path.write_text(json.dumps({"tasks": {"a": "x", "b": 3, "c": -1}}))
    assert load_watermarks(path) == {"b": 3}


def test_a_skip_counts_seqs_that_never_come_from_here_and_joins_acks_above_them() -> None:
    window = AckWindow()
    window.ack("t", 1)
    window.ack("t", 42)  # acked before the skip that explains the hole
    window.skip("t", 41)  # 2..41 were published by other hosts
    assert window.watermark("t") == 42
    window.ack("t", 43)
    assert window.watermark("t") == 43
    window.skip("t", 10)  # behind the watermark: nothing moves
    assert window.watermark("t") == 43
    window.changed = False
    window.skip("t", 50)
    assert window.watermark("t") == 50 and window.changed


def test_muted_tasks_are_kept_in_the_same_record(tmp_path: Path) -> None:
    path = acks_path(tmp_path / "state")
    save_watermarks(path, {"a": 7}, {"a": 2, "b": 1})
    assert load_record(path) == ({"a": 7}, {"a": 2, "b": 1})
    assert load_watermarks(path) == {"a": 7}
    save_watermarks(path, {"a": 7}, {})
    assert load_record(path) == ({"a": 7}, {})
    path.write_text(json.dumps({"tasks": {"a": 1}, "muted": {"a": "x", "b": 0}}))
    assert load_record(path) == ({"a": 1}, {"b": 0})


def test_a_preset_watermark_counts_everything_up_to_it_as_done() -> None:
    window = AckWindow({"t": 3})
    window.ack("t", 9)  # above a hole
    window.preset("t", 20)
    assert window.watermark("t") == 20 and window.changed
    window.ack("t", 21)
    assert window.watermark("t") == 21
    window.preset("t", 0)
    assert window.snapshot() == {}
