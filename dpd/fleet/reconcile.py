"""Owner reconciliation: this host's local fleet jobs against their KV records (FLEET.md §9.5,
and the self-audit of §9.2 step 8). Pure.

``decide`` takes what the spool says of a task (``Local``: its state.json status, the
attempt and stage of its ``fleet`` section, whether a run of it is supervised here) and the
record as read from the stream leader, and names the one step that brings them in line. The
agent applies it (``dpd.fleet.agent``); the same rules serve the start of a daemon and the
periodic self-audit of a live one, which is how a record left ``claimed``/``starting`` under
a live owner (a lost reply, a crash between two writes) is resolved.

What it guarantees: a trainer is kept only when the record names this node and this attempt
in a state that allows it (else it is an orphan, stopped); nothing is spawned unless the
record is this node's claim on this boot (I1: the take still passes T3 or the re-fence CAS);
a record newer than the local attempt is never acted on from an older read (``STALE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from dpd.fleet.records import SPAWNABLE, JobRecord, JobState
from dpd.fleet.transitions import Actor

NODE_STATE_LOST: Final = "node_state_lost"  # the owner's local job is gone (disk replaced?)
NOT_STARTED: Final = "not_started"  # the owner gave the run up before spawning it
SUPERSEDED: Final = "superseded"
_ACTIVE: Final = ("running", "stopping")
_TERMINAL: Final = ("completed", "failed", "stopped")


class Step(StrEnum):
    NONE = "none"
    STALE = "stale"  # the record is older than the local attempt: read again, act on nothing
    ADOPT = "adopt"  # keep the re-attached run; clear ``lost`` (T13)
    ORPHAN = "orphan"  # a local run of an attempt the record no longer names: stop it
    CONTINUE = "continue"  # this boot's claim, nothing spawned: take it (T3 / re-fence, launch)
    ABANDON = "abandon"  # a local claim the record does not name: local job superseded
    OUTBOX = "outbox"  # the local end is not in the record yet: the outbox applies it
    DECLINE = "decline"  # claimed here, nothing on disk: give the claim back (T4a)
    DATA_LOST = "data_lost"  # started here, nothing on disk: T7 failed node_state_lost
    UNSTARTED = "unstarted"  # fenced here but given up before any spawn: T7 failed


@dataclass(frozen=True)
class Local:
    """A task in this host's spool, as reconciliation sees it."""

    status: str
    attempt: int
    stage: str  # claimed | starting | running (state.json's fleet.stage)
    supervised: bool  # a run of it is in the supervisor (its shim was re-attached)

    @classmethod
    def of(cls, state: dict[str, Any], supervised: bool) -> Local | None:
        """From a state.json; None when it has no fleet section (not a fleet job here)."""
        fleet = state.get("fleet")
        if not isinstance(fleet, dict) or "attempt" not in fleet:
            return None
        return cls(
            str(state.get("status")), int(fleet["attempt"]), str(fleet.get("stage")), supervised
        )


def decide(local: Local | None, record: JobRecord | None, me: Actor) -> Step:
    """The step for one task (§9.5's table)."""
    if local is not None and record is not None and record.attempt < local.attempt:
        return Step.STALE
    if local is None:
        return _nothing_here(record, me)
    if local.status in _TERMINAL and record is not None and record.attempt > local.attempt:
        return _nothing_here(record, me)  # ended here before a resume (T11, T12): a new attempt
    if local.supervised or local.status in _ACTIVE:
        return Step.ADOPT if _runs_here(record, me, local.attempt) else Step.ORPHAN
    if local.status == "queued" and local.stage in ("claimed", "starting"):
        return Step.CONTINUE if _claimed_here(record, me, local.attempt) else Step.ABANDON
    if local.status in _TERMINAL and local.stage in ("starting", "running"):
        return Step.OUTBOX if _runs_here(record, me, local.attempt) else Step.NONE
    if local.status in _TERMINAL and local.stage == "claimed":  # given up before any spawn
        return _unspawned(record, me, local.attempt)
    return Step.NONE


def _unspawned(record: JobRecord | None, me: Actor, attempt: int) -> Step:
    """This node gave its claim up locally (a refused fence, e.g. on a stale read) while
    the record still names it: nothing runs, so the record must say so."""
    if not _mine(record, me, attempt) or record is None:
        return Step.NONE
    if record.state is JobState.CLAIMED:
        return Step.DECLINE
    if record.state in SPAWNABLE:
        return Step.UNSTARTED
    return Step.NONE


def _mine(record: JobRecord | None, me: Actor, attempt: int) -> bool:
    return (
        record is not None
        and record.owner is not None
        and record.owner.node == me.node
        and record.attempt == attempt
    )


def _runs_here(record: JobRecord | None, me: Actor, attempt: int) -> bool:
    return _mine(record, me, attempt) and record is not None and record.state in SPAWNABLE


def _claimed_here(record: JobRecord | None, me: Actor, attempt: int) -> bool:
    if not _mine(record, me, attempt) or record is None or record.owner is None:
        return False
    same_boot = record.owner.boot_id == me.boot_id
    return same_boot and record.state in (JobState.CLAIMED, JobState.STARTING)


def _nothing_here(record: JobRecord | None, me: Actor) -> Step:
    if record is None or record.owner is None or record.owner.node != me.node:
        return Step.NONE
    if record.state is JobState.CLAIMED:  # e.g. a crash between T2 and the materialisation
        return Step.DECLINE
    if record.state in SPAWNABLE:
        return Step.DATA_LOST
    return Step.NONE


def rebooted_since(record: JobRecord, me: Actor) -> bool:
    """The record's run was started by this node on an earlier boot: its trainer is gone
    (no process survives a reboot), whatever the local status says (T10a by the owner)."""
    owner = record.owner
    return (
        owner is not None
        and owner.node == me.node
        and owner.machine_id == me.machine_id
        and owner.boot_id != me.boot_id
        and record.state in SPAWNABLE
    )


def end_unrecorded(state: dict[str, Any]) -> bool:
    """The local job failed because its run was lost (no exit recorded: the shim vanished,
    the host rebooted), not because the trainer ended badly. After a reboot such a run is
    a node loss (T10a), not the trainer's failure (T7)."""
    error = state.get("error")
    return (
        state.get("status") == "failed"
        and isinstance(error, dict)
        and error.get("exit_code") is None
        and error.get("signal") is None
    )
