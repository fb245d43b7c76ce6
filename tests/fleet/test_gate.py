"""The publication gate's decision (FLEET.md §9.7), without a server: the lease on a fake
BOOTTIME, the renewal the job table was confirmed after, the record, the local attempt."""

from __future__ import annotations

import dataclasses

import pytest

from dpd.fleet import transitions as tr
from dpd.fleet.gate import Lease, Verdict, decide, fresh
from dpd.fleet.records import JobRecord, JobState
from tests.fleet.test_reconcile import BEFORE, C, job

TTL = 3.0
NOW = 1000.0
GOOD = Lease(last_ok=NOW - 1, confirmed=NOW - 1, node_ttl=TTL)


def running_on_b(attempt: int = 1) -> JobRecord:
    return dataclasses.replace(job(JobState.RUNNING, by=BEFORE), attempt=attempt)


def test_open_while_the_lease_is_fresh_and_the_confirmed_table_names_this_attempt() -> None:
    assert decide("b", 1, running_on_b(), GOOD, NOW) is Verdict.OPEN
    for state in (JobState.CLAIMED, JobState.STARTING, JobState.COMPLETED, JobState.FAILED):
        assert decide("b", 1, job(state, by=BEFORE), GOOD, NOW) is Verdict.OPEN, state


@pytest.mark.parametrize(
    "lease",
    [
        Lease(None, None, TTL),  # never heartbeated
        Lease(NOW - TTL, NOW - TTL, TTL),  # exactly node_ttl ago: no longer fresh
        Lease(NOW - 25, NOW - 25, TTL),  # resumed after a SIGSTOP
        Lease(NOW + 5, NOW + 5, TTL),  # an earlier boot's BOOTTIME
        Lease(NOW - 1, None, TTL),  # renewed, the table not confirmed after any renewal
        Lease(NOW - 1, NOW - 4, TTL),  # renewed, but the confirmation is an old renewal's
        dataclasses.replace(GOOD, reconciled=False),  # before the start-up reconciliation
    ],
)
def test_held_without_a_fresh_lease_and_a_table_confirmed_after_it(lease: Lease) -> None:
    assert decide("b", 1, running_on_b(), lease, NOW) is Verdict.HOLD


def test_held_while_the_table_has_no_record_or_one_older_than_the_local_attempt() -> None:
    assert decide("b", 1, None, GOOD, NOW) is Verdict.HOLD
    assert decide("b", 2, running_on_b(1), GOOD, NOW) is Verdict.HOLD  # our claim not seen yet


def test_a_later_attempt_supersedes_even_before_the_lease_is_renewed() -> None:
    later = dataclasses.replace(job(JobState.RUNNING, by=C), attempt=2)
    assert decide("b", 1, later, GOOD, NOW) is Verdict.SUPERSEDED
    assert decide("b", 1, later, Lease(NOW - 25, NOW - 25, TTL), NOW) is Verdict.SUPERSEDED


def test_this_attempt_requeued_or_given_back_is_superseded_once_confirmed() -> None:
    requeued = tr.expire_claim(job(JobState.CLAIMED, by=BEFORE), tr.AliveRead(False), "a", 0.0)
    assert requeued.attempt == 1 and requeued.owner is None
    assert decide("b", 1, requeued, GOOD, NOW) is Verdict.SUPERSEDED
    assert decide("b", 1, requeued, Lease(NOW - 25, NOW - 25, TTL), NOW) is Verdict.HOLD
    assert decide("c", 1, running_on_b(), GOOD, NOW) is Verdict.SUPERSEDED  # not c's attempt


def test_fresh_means_sent_less_than_node_ttl_ago_on_this_boot() -> None:
    assert fresh(NOW - 2.9, NOW, TTL) and fresh(NOW, NOW, TTL)
    assert not fresh(NOW - 3.0, NOW, TTL)
    assert not fresh(None, NOW, TTL) and not fresh(NOW + 0.1, NOW, TTL)
