"""Which announcements a node publishes (FLEET.md §9.7), without a server: status changes
made outside an owner, numbered in the record's ``log_head`` after the seq the stream holds."""

from __future__ import annotations

import dataclasses

from dpd.fleet import transitions as tr
from dpd.fleet.heads import FRESH, announced, with_floor
from dpd.fleet.reaper import Policy, change_for
from dpd.fleet.records import Constraints, JobRecord, JobState, SubmittedBy
from dpd.fleet.transitions import Actor, AliveRead, ClaimFacts, NodeFacts

T0 = 1_765_000_000.0
B = Actor("b", "b-i0", "b-boot0", "b-machine")
POLICY = Policy(node_ttl=3, lost_after=10, fence_margin=1, max_attempts=2, requeue_on_reboot=True)


def queued(task_id: str = "t1") -> JobRecord:
    return tr.submit(
        task_id, Constraints(1, "lab"), {"model_type": "flux"}, SubmittedBy("a", "rest"), T0
    )


def running_on_b() -> JobRecord:
    facts = ClaimFacts(NodeFacts("b", "lab", {}, {0: 1000}), tr.Fence(), (0,), 0.0, 3.0)
    job = tr.claim(queued(), B, facts, T0)
    return tr.mark_running(tr.start(job, B, 1, T0), B, 1, T0)


def cancelled_by(node: str, floor: int = 0) -> JobRecord:
    asked = tr.request_stop(queued(), node, T0, False)
    return tr.cancel(with_floor(asked, floor), node, T0 + 1)


def test_a_cancel_is_announced_by_the_node_that_made_it_and_not_the_submitters_queued() -> None:
    record = cancelled_by("c")
    events = announced([record], "c", T0 + 2, set())
    assert [(e["seq"], e["data"]["status"]) for e in events] == [(2, "stopped")]
    assert events[0]["data"]["previous"] == "queued" and events[0]["node"] == "c"
    assert announced([record], "a", T0 + 2, set()) == []  # a submitted it: seq 1 is the owner's
    assert announced([record], "c", T0 + 2, {("t1", 2)}) == []  # published already


def test_an_announcement_older_than_the_dedup_window_is_left_alone() -> None:
    record = cancelled_by("c")
    assert announced([record], "c", T0 + 1 + FRESH - 1, set())
    assert announced([record], "c", T0 + 1 + FRESH + 1, set()) == []


def test_an_announcement_numbers_after_what_the_stream_holds() -> None:
    """The owner published up to seq 57 while the record still says 1: the reaper's
    failure and requeue take 58 and 59, never a seq the owner's events have."""
    held = change_for(running_on_b(), AliveRead(False), None, 5.0, POLICY, "a", T0)
    assert held is not None
    down = {"by": "a/key_1", "at": "2026-12-07T00:00:00.000Z", "reason": "burnt"}
    new = change_for(with_floor(held, 57), AliveRead(False), down, 5.0, POLICY, "a", T0)
    assert new is not None and new.state is JobState.QUEUED
    events = announced([new], "a", T0, set())
    assert [(e["seq"], e["data"]["status"]) for e in events] == [(58, "failed"), (59, "queued")]
    assert new.seq == 59
    assert cancelled_by("c", floor=30).log_head[-1]["seq"] == 31


def test_a_floor_below_the_records_seq_changes_nothing() -> None:
    record = dataclasses.replace(queued(), seq=9)
    assert with_floor(record, 4) is record
    assert with_floor(record, 12).seq == 12


def test_several_records_come_out_in_task_and_seq_order() -> None:
    one, two = cancelled_by("c"), dataclasses.replace(cancelled_by("c"), task_id="t0")
    two = dataclasses.replace(
        two, log_head=tuple({**e, "task_id": "t0"} for e in two.log_head)
    )
    events = announced([one, two], "c", T0 + 2, set())
    assert [(e["task_id"], e["seq"]) for e in events] == [("t0", 2), ("t1", 2)]
