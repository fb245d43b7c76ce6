"""Which queued fleet jobs this node should try to claim now, and how long to wait before
each claim (FLEET.md §9.2 steps 1–4). Pure.

Every node runs this over the same fleet queue and its own GPUs, then races CAS claims
(Omega-style shared-state scheduling): the planning is dpd's single-host
``scheduler.plan`` unchanged; what is fleet-specific is

1. eligibility: ``queued``, ``desired = run``, constraints this node satisfies, not declined
   by this node in the last minute;
2. ``others``: the live, not draining nodes whose last heartbeat shows enough free GPUs for
   a job. A job that cannot start here now does not reserve this node's GPUs (scheduler
   rule 4) when ``others`` is non-empty — another node will take it (``may_reserve``);
3. the fit rank: ``others ∪ {me}`` ordered by (free GPUs left after placing, free memory
   left, node name); a claim waits ``rank × claim_stagger`` so the best fit wins without a
   leader. The stagger is for efficiency, not safety: the CAS decides.

``scheduler.QueuedJob`` has no ``may_reserve`` switch yet (FLEET.md §9.2 step 3 adds it to
``scheduler.py``); until it does, ``plan_claims`` gets the same result by planning again
without the first job that may not reserve and could not start: a job's start depends only
on the jobs before it, so dropping that job changes nothing before it and only frees its
reservation for the jobs after it, as the switch would (property-tested against a plan with
the switch built from the scheduler's own parts).

GPUs of this node's claims in flight count as busy (they are not yet in the supervisor's
running set, and a pass during materialize would hand them out twice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from dpd.fleet.records import Desired, FreeGpu, JobRecord, JobState, parse_iso
from dpd.fleet.transitions import DECLINE_MEMORY_S, NodeFacts, constraints_match
from dpd.jobs.dataset_cache import spec_cache_keys
from dpd.supervisor.scheduler import AVAILABLE, Assignment, GpuView, QueuedJob, plan, queue_order

CLAIM_STAGGER: Final = 0.05  # seconds per fit rank (fleet.claim_stagger)
BUSY: Final = "claiming"  # status given to GPUs of claims in flight


@dataclass(frozen=True)
class PeerView:
    """Another node as this node sees it: its registry facts and its last heartbeat."""

    facts: NodeFacts
    free: tuple[FreeGpu, ...]
    alive: bool
    draining: bool = False
    caching: frozenset[str] | None = None  # its runs not yet training (None: it does not say)
    beat_at: float = 0.0  # unix time of the heartbeat these facts come from


@dataclass(frozen=True)
class Claim:
    """One claim to attempt: the job, the GPUs, and the stagger before the CAS."""

    task_id: str
    gpu_ids: tuple[int, ...]
    rank: int
    delay: float


def eligible(records: Iterable[JobRecord], me: NodeFacts, now: float) -> list[JobRecord]:
    """The queued jobs this node may claim (§9.2 step 1); records of unknown versions
    never reach here (``JobRecord.from_json`` refuses them)."""
    return [
        r
        for r in records
        if r.state is JobState.QUEUED
        and r.desired is Desired.RUN
        and r.spec is not None
        and constraints_match(r.constraints, me) is None
        and not declined_recently(r, me.node, now)
    ]


def declined_recently(record: JobRecord, node: str, now: float) -> bool:
    return any(d.node == node and now - parse_iso(d.at) < DECLINE_MEMORY_S for d in record.declined)


def declined_by_all(
    record: JobRecord, me: NodeFacts, peers: Sequence[PeerView], now: float
) -> bool:
    """Has every live node that could run the job (this one included) declined it within
    the last minute? Then no node will take it: it fails rather than waiting for good, and
    no node claims and declines it in a loop (FLEET.md §9.2 step 5). A draining node takes
    nothing new; a busy one still could, once it has GPUs free."""
    could = [me] + [
        p.facts
        for p in peers
        if p.alive and not p.draining and constraints_match(record.constraints, p.facts) is None
    ]
    return all(declined_recently(record, facts.node, now) for facts in could)


def queued_job(record: JobRecord, submitted_seq: int) -> QueuedJob:
    c = record.constraints
    return QueuedJob(
        task_id=record.task_id,
        priority=record.priority,
        submitted_seq=submitted_seq,
        gpu_ids=c.gpu_ids or None,
        required_gpus=c.required_gpus,
        min_memory_mb=c.min_memory_mb,
        estimated_duration=None,
        cache_keys=spec_cache_keys(record.spec),
    )


def as_queue(records: Sequence[JobRecord]) -> list[QueuedJob]:
    """``submitted_seq`` := rank of (submitted_at, task_id), the fleet's submission order."""
    ordered = sorted(records, key=lambda r: (r.submitted_at, r.task_id))
    return [queued_job(r, seq) for seq, r in enumerate(ordered)]


def free_views(free: Sequence[FreeGpu], facts: NodeFacts) -> list[GpuView]:
    """A peer's free GPUs (from its heartbeat) as the scheduler's views."""
    return [
        GpuView(g.id, facts.gpu_memory.get(g.id, g.memory_free), g.memory_free, AVAILABLE)
        for g in free
    ]


def fit(job: QueuedJob, gpus: Sequence[GpuView]) -> tuple[int, int] | None:
    """(free GPUs left, free memory left) after placing ``job`` on these GPUs now, best fit
    as the scheduler chooses; None when it does not fit now."""
    chosen = plan([job], gpus)
    if not chosen:
        return None
    taken = set(chosen[0].gpu_ids)
    free = [g for g in gpus if g.status == AVAILABLE]
    left = [g for g in free if g.gpu_id not in taken]
    return len(left), sum(g.memory_free for g in left)


def others_for(
    record: JobRecord, job: QueuedJob, peers: Sequence[PeerView]
) -> list[tuple[tuple[int, int], str]]:
    """Live, not draining peers that could start the job now: ((left GPUs, left memory),
    name)."""
    out = []
    for peer in peers:
        if not peer.alive or peer.draining:
            continue
        if constraints_match(record.constraints, peer.facts) is not None:
            continue
        score = fit(job, free_views(peer.free, peer.facts))
        if score is not None:
            out.append((score, peer.facts.node))
    return out


def my_views(gpus: Sequence[GpuView], claiming: Iterable[int]) -> list[GpuView]:
    """This node's GPUs, those of claims in flight marked busy."""
    held = set(claiming)
    return [dataclasses.replace(g, status=BUSY) if g.gpu_id in held else g for g in gpus]


def building_elsewhere(
    records: Iterable[JobRecord], me: str, peers: Sequence[PeerView]
) -> frozenset[str]:
    """The dataset caches live peers' jobs may be writing (scheduler rule 6 across hosts on
    shared storage): a job claimed or starting there has not reached training; a running
    or stopping one has not if its owner's last heartbeat lists it, or is older than the
    record's last change (the beat may predate the launch). A peer that does not say (an
    older version) and a node that is not alive hold nothing: a dead host's cache must not
    hold a dataset's jobs back for good."""
    by_node = {p.facts.node: p for p in peers if p.alive}
    keys: set[str] = set()
    for record in records:
        peer = by_node.get(record.owner.node) if record.owner and record.owner.node != me else None
        if peer is not None and _may_be_caching(record, peer):
            keys |= spec_cache_keys(record.spec)
    return frozenset(keys)


def _may_be_caching(record: JobRecord, peer: PeerView) -> bool:
    if peer.caching is None:
        return False  # an older node: it does not say
    if record.state in (JobState.CLAIMED, JobState.STARTING):
        return True  # not launched yet
    if record.state in (JobState.RUNNING, JobState.STOPPING):
        return record.task_id in peer.caching or peer.beat_at < parse_iso(record.updated_at)
    return False  # queued or ended


def plan_claims(
    records: Iterable[JobRecord],
    me: NodeFacts,
    my_gpus: Sequence[GpuView],
    peers: Sequence[PeerView],
    now: float,
    claiming: Iterable[int] = (),
    stagger: float = CLAIM_STAGGER,
    caching: frozenset[str] = frozenset(),
) -> list[Claim]:
    """The claims this node should attempt now, in plan order (§9.2 steps 1–4).
    ``caching``: the dataset caches this node's runs and claims in flight may be writing
    (scheduler rule 6)."""
    mine = my_views(my_gpus, claiming)
    candidates = eligible(records, me, now)
    by_id = {r.task_id: r for r in candidates}
    queue = as_queue(candidates)
    others = {job.task_id: others_for(by_id[job.task_id], job, peers) for job in queue}
    assignments = plan_with_reservations(queue, mine, {t for t, o in others.items() if o}, caching)
    claims = []
    for assignment in assignments:
        job = next(j for j in queue if j.task_id == assignment.task_id)
        rank = fit_rank(me.node, fit(job, mine), others[job.task_id])
        claims.append(Claim(job.task_id, assignment.gpu_ids, rank, rank * stagger))
    return claims


def plan_with_reservations(
    queue: Sequence[QueuedJob],
    gpus: Sequence[GpuView],
    no_reserve: set[str],
    caching: frozenset[str] = frozenset(),
) -> list[Assignment]:
    """``scheduler.plan`` where the jobs in ``no_reserve`` never reserve GPUs (rule 4) when
    they cannot start: plan; drop the first such job (in queue order) that got nothing;
    plan again. Only the first: the jobs after it may have failed because of its
    reservation."""
    current = queue_order(queue)
    while True:
        assignments = plan(current, gpus, caching)
        started = {a.task_id for a in assignments}
        blocked = [j for j in current if j.task_id in no_reserve and j.task_id not in started]
        if not blocked:
            return assignments
        current = [j for j in current if j.task_id != blocked[0].task_id]


def fit_rank(
    me: str, mine: tuple[int, int] | None, others: Sequence[tuple[tuple[int, int], str]]
) -> int:
    """My position among the nodes that could start the job now, best fit first (0 = me)."""
    if mine is None:  # it starts here only thanks to GPUs the plan freed; rank last
        return len(others)
    ordered = sorted([*others, (mine, me)])
    return [name for _, name in ordered].index(me)
