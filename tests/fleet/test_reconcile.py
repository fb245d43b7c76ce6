"""Owner reconciliation decisions (FLEET.md §9.5's table), without a server: the local job
(state.json status, fleet attempt and stage, whether its run is supervised here) against the
record a leader read returned."""

from __future__ import annotations

import dataclasses

import pytest

from dpd.fleet import transitions as tr
from dpd.fleet.reconcile import Local, Step, decide, end_unrecorded, rebooted_since
from dpd.fleet.records import Constraints, Fence, JobRecord, JobState, SubmittedBy
from dpd.fleet.transitions import Actor, ClaimFacts, NodeFacts

T0 = 1_765_000_000.0
BEFORE = Actor("b", "b-i0", "b-boot0", "b-machine")  # the daemon that claimed
ME = Actor("b", "b-i1", "b-boot0", "b-machine")  # restarted, same boot
REBOOTED = Actor("b", "b-i2", "b-boot1", "b-machine")
C = Actor("c", "c-i0", "c-boot0", "c-machine")


def job(state: JobState, by: Actor = BEFORE) -> JobRecord:
    record = tr.submit(
        "t1", Constraints(1, "lab"), {"model_type": "flux"}, SubmittedBy("a", "rest"), T0
    )
    facts = ClaimFacts(NodeFacts(by.node, "lab", {}, {0: 1000}), Fence(), (0,), 0.0, 3.0)
    record = tr.claim(record, by, facts, T0)
    if state is JobState.CLAIMED:
        return record
    record = tr.start(record, by, 1, T0)
    if state is JobState.STARTING:
        return record
    record = tr.mark_running(record, by, 1, T0)
    if state is JobState.RUNNING:
        return record
    return tr.finish(record, by, 1, state, T0)


def local(status: str, stage: str = "starting", attempt: int = 1, run: bool = False) -> Local:
    return Local(status, attempt, stage, run)


def test_a_reattached_run_the_record_still_names_is_adopted() -> None:
    assert decide(local("running", run=True), job(JobState.RUNNING), ME) is Step.ADOPT
    assert decide(local("running", run=True), job(JobState.STARTING), ME) is Step.ADOPT


@pytest.mark.parametrize(
    "record",
    [
        None,
        job(JobState.COMPLETED),
        tr.expire_claim(job(JobState.CLAIMED), tr.AliveRead(False), "a", T0),  # queued again
    ],
)
def test_a_run_the_record_no_longer_names_is_an_orphan(record: JobRecord | None) -> None:
    assert decide(local("running", run=True), record, ME) is Step.ORPHAN


def test_a_run_of_an_older_attempt_is_an_orphan_and_an_older_record_is_stale() -> None:
    newer = dataclasses.replace(job(JobState.RUNNING, by=C), attempt=2)
    assert decide(local("running", run=True), newer, ME) is Step.ORPHAN
    assert decide(local("running", attempt=3, run=True), job(JobState.RUNNING), ME) is Step.STALE


def test_an_unspawned_claim_of_this_boot_is_taken_again() -> None:
    assert decide(local("queued", "claimed"), job(JobState.CLAIMED), ME) is Step.CONTINUE
    assert decide(local("queued", "starting"), job(JobState.STARTING), ME) is Step.CONTINUE
    assert decide(local("queued", "claimed"), job(JobState.STARTING), ME) is Step.CONTINUE


def test_an_unspawned_claim_the_record_does_not_name_is_abandoned() -> None:
    assert decide(local("queued", "claimed"), job(JobState.CLAIMED), REBOOTED) is Step.ABANDON
    expired = tr.expire_claim(job(JobState.CLAIMED), tr.AliveRead(False), "a", T0)
    assert decide(local("queued", "claimed"), expired, ME) is Step.ABANDON
    assert decide(local("queued", "starting"), job(JobState.RUNNING, by=C), ME) is Step.ABANDON
    assert decide(local("queued", "starting"), None, ME) is Step.ABANDON


def test_nothing_on_disk_gives_a_claim_back_and_fails_a_started_run() -> None:
    assert decide(None, job(JobState.CLAIMED), ME) is Step.DECLINE
    assert decide(None, job(JobState.CLAIMED), REBOOTED) is Step.DECLINE
    assert decide(None, job(JobState.RUNNING), ME) is Step.DATA_LOST
    assert decide(None, job(JobState.RUNNING, by=C), ME) is Step.NONE
    assert decide(None, job(JobState.COMPLETED), ME) is Step.NONE


def test_a_new_attempt_of_a_job_that_ended_here_is_settled_like_a_new_job() -> None:
    """Resumed (T12) after it ended here, claimed again by this node (attempt 2), then a
    crash before the job directory was taken over: the local job of attempt 1 does not
    hide the claim, which is given back as one with nothing on disk."""
    claimed = dataclasses.replace(job(JobState.CLAIMED), attempt=2)
    assert decide(local("stopped"), claimed, ME) is Step.DECLINE
    assert decide(local("stopped"), dataclasses.replace(claimed, owner=None), ME) is Step.NONE


def test_a_local_end_the_record_lacks_goes_to_the_outbox() -> None:
    assert decide(local("failed"), job(JobState.RUNNING), ME) is Step.OUTBOX
    assert decide(local("completed"), job(JobState.COMPLETED), ME) is Step.NONE


def test_a_run_started_before_a_reboot_is_known_gone() -> None:
    running = job(JobState.RUNNING)
    assert rebooted_since(running, REBOOTED)
    assert not rebooted_since(running, ME)  # same boot: the trainer may still run
    assert not rebooted_since(job(JobState.COMPLETED), REBOOTED)
    other_machine = Actor("b", "x", "b-boot9", "elsewhere")
    assert not rebooted_since(running, other_machine)


def test_local_of_reads_the_fleet_section_of_state_json() -> None:
    state = {"status": "running", "fleet": {"attempt": 2, "stage": "starting", "node": "b"}}
    assert Local.of(state, True) == Local("running", 2, "starting", True)
    assert Local.of({"status": "running"}, True) is None


def test_only_a_run_lost_without_a_recorded_end_counts_as_a_node_loss() -> None:
    lost = {"status": "failed", "error": {"reason": "the shim vanished", "exit_code": None,
                                          "signal": None}}  # fmt: skip
    assert end_unrecorded(lost)
    crashed = {"status": "failed", "error": {"reason": "OOM", "exit_code": 1, "signal": None}}
    assert not end_unrecorded(crashed)
    killed = {"status": "failed", "error": {"exit_code": None, "signal": "SIGKILL"}}
    assert not end_unrecorded(killed)
    assert not end_unrecorded({"status": "completed", "error": None})


def test_a_claim_given_up_here_before_any_spawn_is_handed_back() -> None:
    """A refused fence (e.g. on a stale read) left the local job stopped while the record
    still names this node: the claim goes back to the queue, a fenced one is failed."""
    given_up = local("stopped", "claimed")
    assert decide(given_up, job(JobState.CLAIMED), ME) is Step.DECLINE
    assert decide(given_up, job(JobState.STARTING), ME) is Step.UNSTARTED
    assert decide(given_up, job(JobState.CLAIMED, by=C), ME) is Step.NONE
    assert decide(given_up, None, ME) is Step.NONE
