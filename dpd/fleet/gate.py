"""The publication gate of a fleet task's events (FLEET.md §9.7). Pure.

A daemon resumed after SIGSTOP, or restarted after its jobs moved on, must not publish the
events of a run that another attempt has replaced before it has looked at KV. So the events
of a fleet task leave this node only while

- its lease is fresh: ``now - last_ok < node_ttl`` on CLOCK_BOOTTIME, ``last_ok`` being when
  the last successful heartbeat was *sent* (§9.4), and
- the fleet table, as of a revision read after a lease renewal that is itself still fresh
  (``confirmed``: the renewal's ``last_ok``), names this node as owner of the local attempt.

Why a fresh confirmed renewal is enough: no other host can requeue this node's job before
its alive key expired, which is ``node_ttl`` after a heartbeat stored no earlier than
``confirmed`` (an operator's ``node-down`` is the exception, and is explicit). The table
only moves forward, so a record it shows later is at least as new as the confirmed one.

``decide`` answers OPEN (publish), HOLD (wait on disk, as during a NATS outage: asked again
after the next renewal or table change) or SUPERSEDED (this attempt is replaced for good:
the record has a later attempt, or this attempt no longer has this node as owner; the
caller mutes the task). A record older than the local attempt is a stale view: HOLD.
Tasks without a fleet section (fleet off, local jobs) are never gated: the caller does not
ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dpd.fleet.records import JobRecord


class Verdict(StrEnum):
    OPEN = "open"
    HOLD = "hold"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Lease:
    """What this node knows of its own lease, on CLOCK_BOOTTIME."""

    last_ok: float | None  # the send time of the last successful heartbeat
    confirmed: float | None  # the last_ok of the renewal the table has been read after
    node_ttl: float
    reconciled: bool = True  # the start-up reconciliation (§9.5) has run


def fresh(renewal: float | None, now: float, node_ttl: float) -> bool:
    """A renewal sent less than ``node_ttl`` ago (none, or one from the future — an earlier
    boot's BOOTTIME — is not fresh)."""
    return renewal is not None and renewal <= now and now - renewal < node_ttl


def decide(
    node: str, local_attempt: int, record: JobRecord | None, lease: Lease, now: float
) -> Verdict:
    """May the events of this node's local attempt ``local_attempt`` be published now?"""
    if record is not None and record.attempt > local_attempt:
        return Verdict.SUPERSEDED  # attempts only grow: no later view can undo this
    if not lease.reconciled:
        return Verdict.HOLD
    if not fresh(lease.last_ok, now, lease.node_ttl):
        return Verdict.HOLD
    if not fresh(lease.confirmed, now, lease.node_ttl):
        return Verdict.HOLD
    if record is None or record.attempt < local_attempt:
        return Verdict.HOLD  # no record yet in the table, or a view older than our claim
    owner = record.owner
    if owner is None or owner.node != node:
        return Verdict.SUPERSEDED  # this attempt was given back or requeued
    return Verdict.OPEN
