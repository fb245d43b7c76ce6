"""The transitions of a fleet job record, T1–T14 of FLEET.md §8.2. Pure.

Each function takes the record as read (with the revision the caller will CAS against), the
facts its precondition needs, and returns the new record; a precondition that does not hold
raises ``TransitionRefused`` and changes nothing. Applying the result is the caller's CAS
(``dpd.fleet.kv.cas_update``): a stale read costs a failed CAS, never a wrong decision.

What the functions guarantee (the invariants of §8.3, property-tested):
- I2: ``attempt`` only grows, and only ``claim`` (T2) raises it, only from ``queued``.
- I1 (the record side of it): only ``start`` (T3) and ``refence`` lead to a state in which a
  node may spawn (``may_spawn``), and only for the attempt its own claim created, by the
  same node on the same boot; any other transition leaving ``starting``/``running``/
  ``stopping`` is the owner's own end of the run (T6/T7) or needs proof the trainer is gone
  (T10: a new boot id, the owner's requeue-mode fence deadline passed, an operator's
  ``node-down``).

What they do not check and the caller must: that an ``AliveRead`` really comes from the
stream leader (§3.4), and that ``absent_for`` was measured on the caller's own monotonic
clock from the first leader read that found the key gone (§9.3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from dpd.fleet.records import (
    MAX_DECLINED,
    MAX_HISTORY,
    SPAWNABLE,
    TERMINAL,
    Constraints,
    Declined,
    Desired,
    Fence,
    FenceMode,
    HistoryEntry,
    JobRecord,
    JobState,
    Lost,
    Owner,
    Result,
    SubmittedBy,
    iso,
    parse_iso,
)

DECLINE_MEMORY_S: Final = 60.0  # a node does not claim again what it declined this recently
NODE_LOST: Final = "node_lost"
FENCED: Final = "fenced"

_PUBLIC: Final[dict[JobState, str]] = {
    JobState.QUEUED: "queued",
    JobState.CLAIMED: "queued",
    JobState.STARTING: "running",
    JobState.RUNNING: "running",
    JobState.STOPPING: "stopping",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.STOPPED: "stopped",
}


class TransitionRefused(Exception):
    """A precondition of a transition does not hold; the record is unchanged."""

    def __init__(self, transition: str, reason: str) -> None:
        super().__init__(f"{transition}: {reason}")
        self.transition = transition
        self.reason = reason


@dataclass(frozen=True)
class Actor:
    """One daemon instance: who claims, starts and ends runs."""

    node: str
    instance: str
    boot_id: str
    machine_id: str


@dataclass(frozen=True)
class NodeFacts:
    """What a claim is matched against: this node's static facts."""

    node: str
    filesystem_domain: str
    labels: dict[str, str]
    gpu_memory: dict[int, int]  # GPU id -> total memory (MB)


@dataclass(frozen=True)
class AliveRead:
    """What a leader read of ``dpd_alive.node.<N>`` answered (absent also for a marker)."""

    present: bool
    boot_id: str | None = None
    machine_id: str | None = None
    from_leader: bool = True


@dataclass(frozen=True)
class Rebooted:
    """T10(a): N's alive key carries N's machine id with a new boot id."""

    alive: AliveRead


@dataclass(frozen=True)
class FencedOut:
    """T10(b): N's key seen absent by this reaper for ``absent_for`` s (own monotonic clock)."""

    alive: AliveRead
    absent_for: float
    lost_after: float
    fence_margin: float
    node_ttl: float


@dataclass(frozen=True)
class MarkedDown:
    """T10(c): an operator marked N down (``nodes[N].down``)."""

    down: dict[str, Any] | None


LossProof = Rebooted | FencedOut | MarkedDown


def public_status(state: JobState) -> str:
    return _PUBLIC[state]


def may_spawn(record: JobRecord, actor: Actor, attempt: int) -> bool:
    """I1: ``actor`` may spawn the trainer of ``attempt`` (its T3 or re-fence is in)."""
    owner = record.owner
    return (
        record.state is JobState.STARTING
        and record.attempt == attempt
        and owner is not None
        and owner.instance == actor.instance
        and owner.node == actor.node
    )


def constraints_match(constraints: Constraints, node: NodeFacts) -> str | None:
    """Why ``node`` cannot run a job with these constraints (None: it can)."""
    if constraints.node is not None and constraints.node != node.node:
        return f"pinned to node {constraints.node}"
    if constraints.filesystem_domain != node.filesystem_domain:
        return f"filesystem domain {constraints.filesystem_domain!r}"
    for key, value in constraints.labels.items():
        if node.labels.get(key) != value:
            return f"label {key}={value}"
    if constraints.gpu_ids and not set(constraints.gpu_ids) <= set(node.gpu_memory):
        return f"GPU ids {sorted(constraints.gpu_ids)}"
    memory = constraints.min_memory_mb or 0
    pool = constraints.gpu_ids or tuple(node.gpu_memory)
    if sum(1 for i in pool if node.gpu_memory.get(i, 0) >= memory) < constraints.needed:
        return f"{constraints.needed} GPU(s) with {memory} MB"
    return None


# ----------------------------------------------------------------------------- helpers


def _refuse_unless(ok: bool, transition: str, reason: str) -> None:
    if not ok:
        raise TransitionRefused(transition, reason)


def _in(record: JobRecord, states: frozenset[JobState] | set[JobState], transition: str) -> None:
    _refuse_unless(record.state in states, transition, f"state is {record.state}")


def _owned_by(record: JobRecord, actor: Actor, attempt: int, transition: str) -> Owner:
    owner = record.owner
    _refuse_unless(owner is not None, transition, "no owner")
    assert owner is not None
    _refuse_unless(owner.node == actor.node, transition, f"owned by {owner.node}")
    _refuse_unless(record.attempt == attempt, transition, f"attempt is {record.attempt}")
    return owner


def _touch(record: JobRecord, by: str, now: float, **changes: Any) -> JobRecord:
    return dataclasses.replace(record, updated_by=by, updated_at=iso(now), **changes)


def _status_event(
    record: JobRecord, by: str, now: float, status: str, previous: str | None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "status",
        "task_id": record.task_id,
        "node": by,
        "seq": record.seq + 1,
        "timestamp": now,
        "data": {"status": status, "previous": previous, **extra},
    }


def _announce(record: JobRecord, by: str, now: float, state: JobState, **extra: Any) -> JobRecord:
    """A status change made outside an owner: numbered inside this CAS (§9.7)."""
    event = _status_event(
        record, by, now, public_status(state), public_status(record.state), **extra
    )
    return dataclasses.replace(
        record,
        seq=record.seq + 1,
        log_head=(*record.log_head, event),
        head_published=False,
    )


def _history(record: JobRecord, node: str, outcome: str, now: float) -> tuple[HistoryEntry, ...]:
    entry = HistoryEntry(record.attempt, node, outcome, iso(now))
    return (*record.history, entry)[-MAX_HISTORY:]


def _seq(record: JobRecord, seq: int | None) -> int:
    return record.seq if seq is None else max(record.seq, seq)


def _alive_confirmed(alive: AliveRead, transition: str) -> None:
    _refuse_unless(alive.from_leader, transition, "alive key not read from the stream leader")


# ------------------------------------------------------------------------- T1 .. T3


def submit(
    task_id: str,
    constraints: Constraints,
    spec: dict[str, Any],
    submitted_by: SubmittedBy,
    now: float,
    priority: int = 0,
) -> JobRecord:
    """T1 ∅ → queued: the record a submitter ``create``s (the create is the precondition)."""
    record = JobRecord(
        task_id=task_id,
        state=JobState.QUEUED,
        constraints=constraints,
        submitted_at=iso(now),
        submitted_by=submitted_by,
        spec=spec,
        updated_by=submitted_by.node,
        updated_at=iso(now),
        priority=priority,
    )
    event = _status_event(record, submitted_by.node, now, "queued", None)
    return dataclasses.replace(record, seq=1, log_head=(event,))


@dataclass(frozen=True)
class ClaimFacts:
    """What T2 checks besides the record: this node now (§8.2 T2)."""

    node: NodeFacts
    fence: Fence
    gpus: tuple[int, ...]  # the free local GPUs the planner chose
    lease_age: float  # seconds since the last successful heartbeat was sent
    node_ttl: float
    draining: bool = False
    down: bool = False


def claim(record: JobRecord, actor: Actor, facts: ClaimFacts, now: float) -> JobRecord:
    """T2 queued → claimed: ``attempt += 1``; ``actor`` becomes the owner."""
    t = "T2 claim"
    _in(record, {JobState.QUEUED}, t)
    _refuse_unless(record.desired is Desired.RUN, t, f"desired is {record.desired}")
    _refuse_unless(facts.lease_age < facts.node_ttl / 2, t, "own lease is not fresh")
    _refuse_unless(not facts.draining and not facts.down, t, "node is draining or down")
    mismatch = constraints_match(record.constraints, facts.node)
    _refuse_unless(mismatch is None, t, f"constraints: {mismatch}")
    _check_claimed_gpus(record.constraints, facts, t)
    recent = [
        d
        for d in record.declined
        if d.node == actor.node and now - parse_iso(d.at) < DECLINE_MEMORY_S
    ]
    _refuse_unless(not recent, t, "declined by this node less than a minute ago")
    owner = Owner(
        node=actor.node,
        instance=actor.instance,
        boot_id=actor.boot_id,
        machine_id=actor.machine_id,
        fence=facts.fence,
        gpus=tuple(facts.gpus),
        claimed_at=iso(now),
    )
    return _touch(
        record, actor.node, now, state=JobState.CLAIMED, attempt=record.attempt + 1, owner=owner
    )


def _check_claimed_gpus(constraints: Constraints, facts: ClaimFacts, t: str) -> None:
    gpus = set(facts.gpus)
    _refuse_unless(len(gpus) == len(facts.gpus), t, "GPU listed twice")
    _refuse_unless(gpus <= set(facts.node.gpu_memory), t, "GPU not on this node")
    if constraints.gpu_ids:
        _refuse_unless(gpus == set(constraints.gpu_ids), t, "not the job's explicit GPUs")
    else:
        _refuse_unless(len(gpus) == constraints.needed, t, f"needs {constraints.needed} GPU(s)")


def start(record: JobRecord, actor: Actor, attempt: int, now: float) -> JobRecord:
    """T3 claimed → starting: the fence. Only the claimer's node on the same boot, for the
    attempt its claim created; afterwards ``may_spawn`` holds for this instance."""
    t = "T3 start"
    _in(record, {JobState.CLAIMED}, t)
    owner = _owned_by(record, actor, attempt, t)
    _refuse_unless(
        owner.instance == actor.instance or owner.boot_id == actor.boot_id,
        t,
        "claimed by this node before a reboot",
    )
    return _touch(
        record,
        actor.node,
        now,
        state=JobState.STARTING,
        owner=dataclasses.replace(owner, instance=actor.instance),
    )


def refence(record: JobRecord, actor: Actor, attempt: int, now: float) -> JobRecord:
    """T3 again for a restarted owner that finds its record ``starting`` (§9.5): the CAS
    setting ``owner.instance`` to this instance before it spawns."""
    t = "T3 re-fence"
    _in(record, {JobState.STARTING}, t)
    owner = _owned_by(record, actor, attempt, t)
    _refuse_unless(owner.boot_id == actor.boot_id, t, "started by this node before a reboot")
    return _touch(
        record, actor.node, now, owner=dataclasses.replace(owner, instance=actor.instance)
    )


# ------------------------------------------------------------------------- T4 .. T9


def decline(
    record: JobRecord,
    actor: Actor,
    attempt: int,
    reason: str,
    now: float,
    seq: int | None = None,
    remember: bool = True,
) -> JobRecord:
    """T4a claimed → queued by the owner (it cannot run the job after all). ``remember``
    False: a claim given back for what became of the owner (a restart that finds nothing
    of it), not for what the job needs; the node may claim it again at once."""
    t = "T4a decline"
    _in(record, {JobState.CLAIMED}, t)
    _owned_by(record, actor, attempt, t)
    declined = record.declined
    if remember:
        declined = (*declined, Declined(actor.node, reason, iso(now)))[-MAX_DECLINED:]
    return _touch(
        record,
        actor.node,
        now,
        state=JobState.QUEUED,
        owner=None,
        declined=declined,
        history=_history(record, actor.node, "declined", now),
        seq=_seq(record, seq),
    )


def decline_everywhere(
    record: JobRecord, actor: Actor, attempt: int, reason: str, now: float, error: dict[str, Any]
) -> JobRecord:
    """T4c claimed → failed by the owner: it declines the job, and every other live node
    that could run it declined it within the last minute (FLEET.md §9.2 step 5, "all
    eligible decline → failed"). T7 starts from ``starting``; a job that was never started
    anywhere fails here, announced in the CAS like any change no run reports (§9.7)."""
    declined = decline(record, actor, attempt, reason, now)  # T4a's checks, its list
    changed = _announce(record, actor.node, now, JobState.FAILED, error=error)
    return _touch(
        changed,
        actor.node,
        now,
        state=JobState.FAILED,
        owner=None,
        declined=declined.declined,
        result=Result(JobState.FAILED.value, iso(now), error),
        history=_history(record, actor.node, "declined_everywhere", now),
    )


def expire_claim(record: JobRecord, alive: AliveRead, by: str, now: float) -> JobRecord:
    """T4b claimed → queued by any node: the owner's alive key is gone, or names another
    boot (a same-boot restart keeps its claims). Safe: the owner can spawn only after its
    own T3, which this makes fail."""
    t = "T4b expire claim"
    _in(record, {JobState.CLAIMED}, t)
    owner = record.owner
    assert owner is not None
    _alive_confirmed(alive, t)
    gone = not alive.present or alive.boot_id != owner.boot_id
    _refuse_unless(gone, t, f"{owner.node} is alive on the same boot")
    return _touch(
        record,
        by,
        now,
        state=JobState.QUEUED,
        owner=None,
        history=_history(record, owner.node, "claim_expired", now),
    )


def mark_running(
    record: JobRecord,
    actor: Actor,
    attempt: int,
    now: float,
    port: int | None = None,
    run: dict[str, Any] | None = None,
    seq: int | None = None,
) -> JobRecord:
    """T5 starting → running: the shim spawned; ``lost`` cleared."""
    t = "T5 running"
    _in(record, {JobState.STARTING}, t)
    owner = _owned_by(record, actor, attempt, t)
    return _touch(
        record,
        actor.node,
        now,
        state=JobState.RUNNING,
        owner=dataclasses.replace(owner, port=port, run=run),
        lost=None,
        seq=_seq(record, seq),
    )


def begin_stop(
    record: JobRecord, actor: Actor, attempt: int, now: float, seq: int | None = None
) -> JobRecord:
    """T6 starting/running → stopping, by the owner applying ``desired``."""
    t = "T6 stopping"
    _in(record, {JobState.STARTING, JobState.RUNNING}, t)
    _owned_by(record, actor, attempt, t)
    _refuse_unless(record.desired is not Desired.RUN, t, "no stop was asked for")
    return _touch(record, actor.node, now, state=JobState.STOPPING, seq=_seq(record, seq))


def finish(
    record: JobRecord,
    actor: Actor,
    attempt: int,
    status: JobState,
    now: float,
    error: dict[str, Any] | None = None,
    last_checkpoint: str | None = None,
    seq: int | None = None,
) -> JobRecord:
    """T7 starting/running/stopping → completed/failed/stopped, by the owner."""
    t = "T7 finish"
    _in(record, SPAWNABLE, t)
    _refuse_unless(status in TERMINAL, t, f"{status} is not a terminal state")
    _owned_by(record, actor, attempt, t)
    result = Result(status.value, iso(now), error, last_checkpoint)
    return _touch(
        record,
        actor.node,
        now,
        state=status,
        result=result,
        lost=None,
        history=_history(record, actor.node, status.value, now),
        seq=_seq(record, seq),
    )


def cancel(record: JobRecord, by: str, now: float) -> JobRecord:
    """T8 queued/claimed → stopped, by any node, once ``desired`` is stop (T9 first)."""
    t = "T8 cancel"
    _in(record, {JobState.QUEUED, JobState.CLAIMED}, t)
    _refuse_unless(record.desired is not Desired.RUN, t, "no stop was asked for")
    changed = _announce(record, by, now, JobState.STOPPED)
    history = record.history
    if record.owner is not None:
        history = _history(record, record.owner.node, "cancelled", now)
    return _touch(
        changed,
        by,
        now,
        state=JobState.STOPPED,
        result=Result("stopped", iso(now)),
        history=history,
    )


def request_stop(record: JobRecord, by: str, now: float, force: bool = False) -> JobRecord:
    """T9 any non-terminal: ``desired := stop|force_stop``; the owner applies it."""
    t = "T9 request stop"
    _refuse_unless(not record.terminal, t, f"state is {record.state}")
    desired = Desired.FORCE_STOP if force else Desired.STOP
    return _touch(record, by, now, desired=desired)


# ------------------------------------------------------------------------ T10 .. T14


def declare_lost(record: JobRecord, proof: LossProof, by: str, now: float) -> JobRecord:
    """T10 starting/running/stopping → failed (``node_lost``), or stopped when a stop was
    asked for, on proof that the owner's trainer is gone (§8.2 T10 (a)/(b)/(c))."""
    t = "T10 node lost"
    _in(record, SPAWNABLE, t)
    owner = record.owner
    assert owner is not None
    kind = _check_proof(proof, owner, t)
    target = JobState.FAILED if record.desired is Desired.RUN else JobState.STOPPED
    error = {"reason": NODE_LOST, "node": owner.node, "proof": kind}
    changed = _announce(record, by, now, target, error=error)
    return _touch(
        changed,
        by,
        now,
        state=target,
        result=Result(target.value, iso(now), error),
        history=_history(record, owner.node, NODE_LOST, now),
    )


def _check_proof(proof: LossProof, owner: Owner, t: str) -> str:
    if isinstance(proof, Rebooted):
        alive = proof.alive
        _alive_confirmed(alive, t)
        _refuse_unless(alive.present, t, "alive key absent: a reboot is not proven")
        _refuse_unless(alive.machine_id == owner.machine_id, t, "alive key of another machine")
        _refuse_unless(alive.boot_id != owner.boot_id, t, "same boot: the trainer may run")
        return "rebooted"
    if isinstance(proof, FencedOut):
        _alive_confirmed(proof.alive, t)
        _refuse_unless(not proof.alive.present, t, f"{owner.node} is alive")
        _refuse_unless(owner.fence.mode is FenceMode.REQUEUE, t, "owner holds its jobs (hold)")
        wait = fence_wait(owner.fence, proof.lost_after, proof.fence_margin, proof.node_ttl)
        _refuse_unless(proof.absent_for >= wait, t, f"absent {proof.absent_for:.1f} s < {wait} s")
        return "fenced"
    _refuse_unless(bool(proof.down), t, f"{owner.node} is not marked down")
    return "down"


def fence_wait(fence: Fence, lost_after: float, fence_margin: float, node_ttl: float) -> float:
    """T10(b)'s wait after a confirmed absence: ``max(lost_after, owner.fence.deadline_s +
    fence_margin − node_ttl)`` — the owner's own contract, whatever the reaper's settings."""
    deadline = fence.deadline_s if fence.deadline_s is not None else float("inf")
    return max(lost_after, deadline + fence_margin - node_ttl)


def requeue_lost(
    record: JobRecord,
    by: str,
    now: float,
    *,
    max_attempts: int,
    resumable: bool,
    requeue_on_reboot: bool,
    seq_base: int = 0,
) -> JobRecord:
    """T11 failed(node_lost | fenced) → queued, to resume from its last checkpoint."""
    t = "T11 requeue"
    _in(record, {JobState.FAILED}, t)
    reason = record.result.reason if record.result else None
    _refuse_unless(reason in (NODE_LOST, FENCED), t, f"failed for {reason}")
    _refuse_unless(record.desired is Desired.RUN, t, f"desired is {record.desired}")
    _refuse_unless(record.requeues < max_attempts, t, f"requeued {record.requeues} times")
    _refuse_unless(resumable, t, "outputs not reachable for a resume")
    proof = (record.result.error or {}).get("proof") if record.result else None
    _refuse_unless(proof != "rebooted" or requeue_on_reboot, t, "requeue_on_reboot is off")
    from_node = record.owner.node if record.owner else None
    base = dataclasses.replace(record, seq=max(record.seq, seq_base))
    changed = _announce(
        base,
        by,
        now,
        JobState.QUEUED,
        requeued=True,
        from_node=from_node,
        reason=reason,
        possible_gap=True,
    )
    return _touch(
        changed,
        by,
        now,
        state=JobState.QUEUED,
        owner=None,
        lost=None,
        result=None,
        requeues=record.requeues + 1,
        spec=_resuming(record.spec),
    )


def _resuming(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if spec is None else {**spec, "resume_from_checkpoint": True}


def resume(record: JobRecord, by: str, now: float) -> JobRecord:
    """T12 failed/stopped → queued (REST resume on any node), as the single-host resume."""
    t = "T12 resume"
    _in(record, {JobState.FAILED, JobState.STOPPED}, t)
    _refuse_unless(record.spec is not None, t, "the record is a tombstone")
    changed = _announce(record, by, now, JobState.QUEUED, resumed=True)
    return _touch(
        changed,
        by,
        now,
        state=JobState.QUEUED,
        desired=Desired.RUN,
        owner=None,
        lost=None,
        result=None,
        spec=_resuming(record.spec),
    )


def set_lost(record: JobRecord, alive: AliveRead, by: str, now: float) -> JobRecord:
    """T13 (set): the owner's alive key is gone; public status unchanged, once."""
    t = "T13 set lost"
    _in(record, SPAWNABLE, t)
    owner = record.owner
    assert owner is not None
    _alive_confirmed(alive, t)
    _refuse_unless(not alive.present, t, f"{owner.node} is alive")
    _refuse_unless(record.lost is None, t, "already marked lost")
    return _touch(record, by, now, lost=Lost(owner.node, iso(now), by))


def clear_lost(record: JobRecord, actor: Actor, attempt: int, now: float) -> JobRecord:
    """T13 (clear): the owner is back and clears the flag on its jobs."""
    t = "T13 clear lost"
    _refuse_unless(record.lost is not None, t, "not marked lost")
    _owned_by(record, actor, attempt, t)
    return _touch(record, actor.node, now, lost=None)


def tombstone(record: JobRecord, by: str, now: float, keep_terminal_days: float) -> JobRecord:
    """T14 terminal → tombstone: drops ``spec``, ``log_head`` and ``progress``; the key is
    never deleted, so the task id stays taken (DESIGN §3)."""
    t = "T14 tombstone"
    _in(record, TERMINAL, t)
    _refuse_unless(record.spec is not None, t, "already a tombstone")
    age = now - parse_iso(record.updated_at)
    _refuse_unless(age >= keep_terminal_days * 86400, t, f"ended {age / 86400:.1f} days ago")
    return _touch(record, by, now, spec=None, log_head=(), progress=None)
