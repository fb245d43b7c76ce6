"""``dpd fleet nodes``' table: one line per node, a lost node with when it was seen lost and
the jobs held on it."""

from __future__ import annotations

from dpd.cli.fleet import nodes_table


def test_the_table_shows_state_gpus_running_and_held_jobs() -> None:
    lines = nodes_table(
        [
            {"node": "a", "state": "alive", "gpus": 2, "free_gpus": [1], "running": ["t0"],
             "held": [], "lost_since": None},
            {"node": "b", "state": "lost", "gpus": 1, "free_gpus": [], "running": [],
             "held": ["t1", "t2"], "lost_since": "2026-12-07T01:20:03.118Z"},
        ]
    )  # fmt: skip
    assert lines[0].split()[:2] == ["NODE", "STATE"]
    assert lines[1].split() == ["a", "alive", "1/2", "1", "-"]
    assert lines[2].split() == ["b", "lost", "since", "2026-12-07T01:20:03.118Z", "0/1", "0",
                                "t1,", "t2"]  # fmt: skip
