"""The reaper's decisions (FLEET.md §9.3, §8.2 T4b/T10/T11/T13), without a server: a record,
what a leader read of its owner's alive key answered, the owner's ``down`` mark and how long
this reaper has seen the key absent (a fake clock drives ``ReaperView``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from dpd.fleet import transitions as tr
from dpd.fleet.reaper import Act, Policy, change_for, decide, requeue_possible
from dpd.fleet.records import Constraints, Fence, FenceMode, JobRecord, JobState, SubmittedBy
from dpd.fleet.registry import ReaperView, Verdict
from dpd.fleet.table import TableEntry
from dpd.fleet.transitions import Actor, AliveRead, ClaimFacts, NodeFacts

T0 = 1_765_000_000.0
POLICY = Policy(node_ttl=3, lost_after=10, fence_margin=1, max_attempts=2, requeue_on_reboot=True)
B = Actor("b", "b-i0", "b-boot0", "b-machine")
GONE = AliveRead(False)
BACK_SAME_BOOT = AliveRead(True, "b-boot0", "b-machine")
BACK_REBOOTED = AliveRead(True, "b-boot1", "b-machine")


def record(state: JobState, fence: Fence | None = None, **kw: Any) -> JobRecord:
    """A job claimed by b (and started, and running, as ``state`` asks)."""
    job = tr.submit(
        "t1", Constraints(1, "lab"), {"model_type": "flux"}, SubmittedBy("a", "rest"), T0
    )
    facts = ClaimFacts(NodeFacts("b", "lab", {}, {0: 1000}), fence or Fence(), (0,), 0.0, 3.0)
    job = tr.claim(job, B, facts, T0)
    if state is not JobState.CLAIMED:
        job = tr.start(job, B, 1, T0)
    if state is JobState.RUNNING:
        job = tr.mark_running(job, B, 1, T0)
    return dataclasses.replace(job, **kw)


def test_a_claim_of_a_gone_node_is_requeued_at_once() -> None:
    claimed = record(JobState.CLAIMED)
    assert decide(claimed, GONE, None, 0.0, POLICY).act is Act.EXPIRE_CLAIM
    new = change_for(claimed, GONE, None, 0.0, POLICY, "a", T0)
    assert new is not None and new.state is JobState.QUEUED and new.owner is None
    assert new.attempt == 1 and new.history[-1].outcome == "claim_expired"


def test_a_claim_survives_its_owner_restarting_on_the_same_boot() -> None:
    claimed = record(JobState.CLAIMED)
    assert decide(claimed, BACK_SAME_BOOT, None, 0.0, POLICY).act is Act.NONE
    assert decide(claimed, BACK_REBOOTED, None, 0.0, POLICY).act is Act.EXPIRE_CLAIM


def test_a_running_job_of_a_gone_node_in_hold_mode_is_held_not_requeued() -> None:
    running = record(JobState.RUNNING)
    assert decide(running, GONE, None, 3600.0, POLICY).act is Act.SET_LOST
    held = change_for(running, GONE, None, 3600.0, POLICY, "a", T0)
    assert held is not None and held.state is JobState.RUNNING
    assert held.lost is not None and held.lost.node == "b" and held.lost.observed_by == "a"
    # once held, however long the node stays away, nothing more happens in hold mode
    assert decide(held, GONE, None, 10 * 3600.0, POLICY).act is Act.NONE
    assert change_for(held, GONE, None, 10 * 3600.0, POLICY, "c", T0) is None


def test_a_held_job_is_requeued_when_its_node_returns_on_a_new_boot() -> None:
    held = change_for(record(JobState.RUNNING), GONE, None, 5.0, POLICY, "a", T0)
    assert held is not None
    decision = decide(held, BACK_REBOOTED, None, 0.0, POLICY)
    assert decision.act is Act.DECLARE_LOST and isinstance(decision.proof, tr.Rebooted)
    new = change_for(held, BACK_REBOOTED, None, 0.0, POLICY, "a", T0 + 1)
    assert new is not None and new.state is JobState.QUEUED  # T10a and T11 in one write
    assert new.requeues == 1 and new.owner is None and new.lost is None
    assert (new.spec or {})["resume_from_checkpoint"] is True
    statuses = [e["data"]["status"] for e in new.log_head]
    assert statuses[-2:] == ["failed", "queued"]
    assert new.seq == held.seq + 2


def test_a_held_job_stays_while_its_node_is_back_on_the_same_boot() -> None:
    held = change_for(record(JobState.RUNNING), GONE, None, 5.0, POLICY, "a", T0)
    assert held is not None
    assert decide(held, BACK_SAME_BOOT, None, 0.0, POLICY).act is Act.NONE


def test_node_down_requeues_the_held_jobs_of_a_gone_node() -> None:
    held = change_for(record(JobState.RUNNING), GONE, None, 5.0, POLICY, "a", T0)
    assert held is not None
    down = {"by": "a/key_1", "at": "2026-12-07T00:00:00.000Z", "reason": "burnt"}
    decision = decide(held, GONE, down, 5.0, POLICY)
    assert decision.act is Act.DECLARE_LOST and isinstance(decision.proof, tr.MarkedDown)
    new = change_for(held, GONE, down, 5.0, POLICY, "c", T0)
    assert new is not None and new.state is JobState.QUEUED and new.requeues == 1
    # a down mark means nothing while the node heartbeats (it is not dead)
    assert decide(held, BACK_SAME_BOOT, down, 0.0, POLICY).act is Act.NONE


def test_requeue_mode_waits_for_the_owners_own_fence_deadline() -> None:
    fence = Fence(FenceMode.REQUEUE, deadline_s=20.0)  # wait = max(10, 20 + 1 - 3) = 18 s
    running = record(JobState.RUNNING, fence=fence)
    assert decide(running, GONE, None, 17.9, POLICY).act is Act.SET_LOST
    decision = decide(running, GONE, None, 18.0, POLICY)
    assert decision.act is Act.DECLARE_LOST and isinstance(decision.proof, tr.FencedOut)


def test_requeues_stop_at_max_attempts_and_a_lost_t11_is_retried() -> None:
    held = change_for(record(JobState.RUNNING), GONE, None, 5.0, POLICY, "a", T0)
    assert held is not None
    failed = tr.declare_lost(held, tr.Rebooted(BACK_REBOOTED), "a", T0)
    assert decide(failed, GONE, None, 0.0, POLICY).act is Act.REQUEUE  # T10 landed alone
    assert requeue_possible(failed, POLICY)
    spent = dataclasses.replace(failed, requeues=POLICY.max_attempts)
    assert not requeue_possible(spent, POLICY)
    assert change_for(spent, GONE, None, 0.0, POLICY, "a", T0) is None
    # T10 still ends the run; it just is not requeued any more
    held_spent = dataclasses.replace(held, requeues=POLICY.max_attempts)
    ended = change_for(held_spent, BACK_REBOOTED, None, 0.0, POLICY, "a", T0)
    assert ended is not None and ended.state is JobState.FAILED


def test_a_completed_or_queued_job_is_left_alone() -> None:
    running = record(JobState.RUNNING)
    done = tr.finish(running, B, 1, JobState.COMPLETED, T0)
    assert decide(done, GONE, None, 99.0, POLICY).act is Act.NONE
    queued = tr.submit(
        "t2", Constraints(1, "lab"), {"model_type": "flux"}, SubmittedBy("a", "rest"), T0
    )
    assert decide(queued, GONE, None, 99.0, POLICY).act is Act.NONE


def test_reaper_view_judges_only_after_node_ttl_of_its_own_connection() -> None:
    view = ReaperView(node_ttl=3, heartbeat_interval=0.5)
    view.connected(100.0)
    assert not view.may_judge(102.9) and view.may_judge(103.0)
    view.disconnected()
    view.connected(200.0)
    assert not view.may_judge(201.0)


def test_reaper_view_suspects_a_key_that_stopped_changing_and_times_absence() -> None:
    from dpd.fleet.kv import Entry, Operation

    view = ReaperView(node_ttl=3, heartbeat_interval=0.5)
    seen = TableEntry(Entry("node.b", b"{}", 7, Operation.PUT), seen_at=100.0)
    assert view.suspect(seen, 103.4) is Verdict.ALIVE
    assert view.suspect(seen, 103.6) is Verdict.SUSPECT  # no new revision for ttl + beat
    assert view.suspect(None, 100.0) is Verdict.SUSPECT
    assert view.settle("b", GONE, None, 104.0) is Verdict.LOST
    assert view.absent_for("b", 110.0) == 6.0
    assert view.settle("b", GONE, None, 111.0) is Verdict.LOST
    assert view.absent_for("b", 111.0) == 7.0  # measured from the first confirmation
    assert view.settle("b", BACK_SAME_BOOT, ("b-machine", "b-boot0"), 112.0) is Verdict.ALIVE
    assert view.absent_for("b", 113.0) == 0.0
