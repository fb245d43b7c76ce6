"""The fleet placer (FLEET.md §9.2): eligibility, may_reserve, fit rank, stagger. Pure."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dpd.fleet import transitions as tr
from dpd.fleet.placer import (
    Claim,
    PeerView,
    building_elsewhere,
    declined_by_all,
    eligible,
    plan_claims,
    plan_with_reservations,
)
from dpd.fleet.records import (
    Constraints,
    Declined,
    Fence,
    FreeGpu,
    JobRecord,
    JobState,
    Owner,
    SubmittedBy,
    iso,
)
from dpd.fleet.transitions import NodeFacts
from dpd.supervisor import scheduler
from dpd.supervisor.scheduler import AVAILABLE, GpuView, QueuedJob

T0 = 1_765_000_000.0


def job(task_id: str, gpus: int = 1, at: float = T0, priority: int = 0, **kw: Any) -> JobRecord:
    constraints = Constraints(required_gpus=gpus, filesystem_domain="lab", **kw)
    return tr.submit(task_id, constraints, {}, SubmittedBy("a", "rest"), at, priority)


def node(name: str, gpus: int = 2, memory: int = 24000, **kw: Any) -> NodeFacts:
    base: dict[str, Any] = {
        "node": name,
        "filesystem_domain": "lab",
        "labels": {},
        "gpu_memory": {i: memory for i in range(gpus)},
    }
    base.update(kw)
    return NodeFacts(**base)


def gpus(n: int, busy: tuple[int, ...] = (), memory: int = 24000) -> list[GpuView]:
    return [
        GpuView(i, memory, memory if i not in busy else 0, "busy" if i in busy else AVAILABLE)
        for i in range(n)
    ]


def peer(name: str, free: int, alive: bool = True, **kw: Any) -> PeerView:
    facts = node(name, gpus=max(free, 4), **kw)
    return PeerView(facts, tuple(FreeGpu(i, 24000) for i in range(free)), alive)


def test_eligibility() -> None:
    me = node("a", labels={"rack": "r1"})
    records = [
        job("plain"),
        job("pinned-here", node="a"),
        job("pinned-away", node="b"),
        job("labelled", labels={"rack": "r1"}),
        job("wrong-label", labels={"rack": "r2"}),
        job("too-big", gpus=3),
        job("big-memory", min_memory_mb=30000),
        tr.request_stop(job("stopping"), "b", T0),
        tr.cancel(tr.request_stop(job("cancelled"), "b", T0), "b", T0),
    ]
    other_domain = dataclasses.replace(job("elsewhere"), constraints=Constraints(1, "other-domain"))
    declined = dataclasses.replace(job("declined"), declined=(Declined("a", "no", iso(T0)),))
    names = [r.task_id for r in eligible([*records, other_domain, declined], me, T0 + 30)]
    assert names == ["plain", "pinned-here", "labelled"]
    assert "declined" in [r.task_id for r in eligible([declined], me, T0 + 61)]


def test_declined_by_all_counts_only_live_nodes_that_could_run_the_job() -> None:
    """FLEET.md §9.2 step 5: the job fails once no live node that could take it is left."""
    me = node("c", gpus=4)

    def declined(*names: str, at: float = T0) -> JobRecord:
        return dataclasses.replace(
            job("t", gpus=2), declined=tuple(Declined(n, "missing", iso(at)) for n in names)
        )

    assert declined_by_all(declined("c"), me, [], T0 + 1)  # the only node there is
    assert not declined_by_all(declined(), me, [], T0 + 1)  # not even this one yet
    busy = peer("b", free=0)  # no GPU free now, but it could take the job later
    assert not declined_by_all(declined("c"), me, [busy], T0 + 1)
    assert declined_by_all(declined("c", "b"), me, [busy], T0 + 1)
    assert not declined_by_all(declined("c", "b", at=T0 - 61), me, [busy], T0 + 1)  # forgotten
    small = PeerView(node("a", gpus=1), (FreeGpu(0, 24000),), True)  # too few GPUs
    dead = peer("d", free=4, alive=False)
    draining = dataclasses.replace(peer("e", free=4), draining=True)
    other_domain = peer("f", free=4, filesystem_domain="elsewhere")
    assert declined_by_all(declined("c"), me, [small, dead, draining, other_domain], T0 + 1)


def test_priority_then_submission_order_and_claims_in_flight() -> None:
    records = [
        job("late", at=T0 + 2),
        job("early", at=T0 + 1),
        job("urgent", at=T0 + 3, priority=5),
    ]
    claims = plan_claims(records, node("a"), gpus(2), peers=[], now=T0)
    assert [c.task_id for c in claims] == ["urgent", "early"]
    # GPU 0 is held by a claim in flight: only one job starts, on GPU 1
    claims = plan_claims(records, node("a"), gpus(2), peers=[], now=T0, claiming=[0])
    assert claims == [Claim("urgent", (1,), 0, 0.0)]


def test_a_job_others_can_start_does_not_reserve_my_gpus() -> None:
    # here: 2 GPUs, one busy. A 2-GPU job first, a 1-GPU job behind it.
    records = [job("big", gpus=2, at=T0), job("small", at=T0 + 1)]
    alone = plan_claims(records, node("a"), gpus(2, busy=(0,)), peers=[], now=T0)
    assert alone == []  # single-host rule 4: big reserves GPU 1, small waits
    helped = plan_claims(records, node("a"), gpus(2, busy=(0,)), [peer("c", free=4)], T0)
    assert [c.task_id for c in helped] == ["small"]  # c will take big
    # a peer that is gone, draining or in another domain does not count
    for useless in (
        peer("c", free=4, alive=False),
        dataclasses.replace(peer("c", free=4), draining=True),
        peer("c", free=4, filesystem_domain="x"),
        peer("c", free=1),
    ):
        assert plan_claims(records, node("a"), gpus(2, busy=(0,)), [useless], T0) == []


def test_fit_rank_makes_the_best_fit_claim_first() -> None:
    records = [job("one")]
    # a has exactly 1 free GPU: best fit, rank 0, no wait
    here = plan_claims(records, node("a"), gpus(2, busy=(1,)), [peer("b", free=4)], T0)
    assert here == [Claim("one", (0,), 0, 0.0)]
    # b fits better (1 free GPU) than a (2 free): a waits one stagger
    later = plan_claims(records, node("a"), gpus(2), [peer("b", free=1)], T0, stagger=0.05)
    assert later == [Claim("one", (0,), 1, 0.05)]
    # equal fit: by node name
    tie = plan_claims(records, node("b"), gpus(1), [peer("a", free=1), peer("c", free=1)], T0)
    assert [c.rank for c in tie] == [1]


# -------------------------------------------------------- may_reserve, as a property


def reference_plan(
    queue: list[QueuedJob], views: list[GpuView], no_reserve: set[str]
) -> list[scheduler.Assignment]:
    """scheduler.plan with FLEET.md's ``may_reserve`` switch, built from its own parts."""
    free = {g.gpu_id: g for g in views if g.status == AVAILABLE}
    reserved: dict[int, float] = {}
    out = []
    for q in scheduler.queue_order(queue):
        if not free:
            break
        chosen = scheduler._choose_now(q, free, reserved)
        if chosen is not None:
            out.append(scheduler.Assignment(q.task_id, chosen))
            for gpu_id in chosen:
                free.pop(gpu_id, None)
                reserved.pop(gpu_id, None)
            continue
        if q.task_id in no_reserve:
            continue
        shadow = scheduler._shadow_time(q, views)
        for gpu_id in scheduler._wanted(q, free, reserved):
            reserved[gpu_id] = shadow
    return out


queued = st.builds(
    QueuedJob,
    task_id=st.just(""),
    priority=st.integers(0, 2),
    submitted_seq=st.integers(0, 50),
    gpu_ids=st.one_of(
        st.none(), st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True).map(tuple)
    ),
    required_gpus=st.integers(1, 4),
    min_memory_mb=st.one_of(st.none(), st.sampled_from([8000, 20000, 40000])),
    estimated_duration=st.one_of(st.none(), st.sampled_from([60.0, 3600.0])),
)
view = st.builds(
    GpuView,
    gpu_id=st.just(0),
    memory_total=st.sampled_from([24000, 48000]),
    memory_free=st.sampled_from([0, 10000, 24000]),
    status=st.sampled_from([AVAILABLE, AVAILABLE, "busy"]),
    running_task=st.none(),
    running_eta=st.one_of(st.none(), st.sampled_from([30.0, 7200.0])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(queued, max_size=8), st.lists(view, min_size=1, max_size=4), st.data())
def test_replanning_without_unstartable_jobs_equals_the_may_reserve_switch(
    raw_queue: list[QueuedJob], raw_views: list[GpuView], data: st.DataObject
) -> None:
    queue = [dataclasses.replace(q, task_id=f"t{i}") for i, q in enumerate(raw_queue)]
    views = [dataclasses.replace(v, gpu_id=i) for i, v in enumerate(raw_views)]
    no_reserve = (
        set(data.draw(st.sets(st.sampled_from([q.task_id for q in queue])))) if queue else set()
    )
    assert plan_with_reservations(queue, views, no_reserve) == reference_plan(
        queue, views, no_reserve
    )
    assert plan_with_reservations(queue, views, set()) == scheduler.plan(queue, views)


def test_a_node_claims_one_builder_per_dataset_cache_and_none_while_it_builds_one() -> None:
    def on(task_id: str, directory: str, at: float) -> JobRecord:
        spec = {"model_type": "sdxl", "dataset": {"directories": [{"path": directory}]}}
        record = job(task_id, at=at)
        return dataclasses.replace(record, spec=spec)

    records = [on("a", "/d/cats", T0), on("b", "/d/cats", T0 + 1), on("c", "/d/dogs", T0 + 2)]
    claims = plan_claims(records, node("a", gpus=4), gpus(4), peers=[], now=T0)
    assert [c.task_id for c in claims] == ["a", "c"]  # b would build a's cache beside it
    building = frozenset({"/d/cats/cache/sdxl"})  # a run here is still caching cats
    claims = plan_claims(records, node("a", gpus=4), gpus(4), peers=[], now=T0, caching=building)
    assert [c.task_id for c in claims] == ["c"]


def test_caches_built_on_other_hosts_hold_back_jobs_on_the_same_dataset() -> None:
    spec = {"model_type": "sdxl", "dataset": {"directories": [{"path": "/d/cats"}]}}
    key = "/d/cats/cache/sdxl"

    def held(state: JobState, node: str = "b", updated: float = T0) -> JobRecord:
        owner = Owner(node, "i", "boot", "m", Fence(), (0,), iso(T0))
        record = dataclasses.replace(job(f"{node}-{state}"), spec=spec, owner=owner, state=state)
        return dataclasses.replace(record, updated_at=iso(updated))

    def seen(caching: frozenset[str] | None, at: float = T0 + 5, alive: bool = True) -> PeerView:
        return dataclasses.replace(peer("b", free=1, alive=alive), caching=caching, beat_at=at)

    says_nothing_cached = seen(frozenset())
    for state in (JobState.CLAIMED, JobState.STARTING):  # not launched yet: not training
        assert building_elsewhere([held(state)], "a", [says_nothing_cached]) == {key}
    running = held(JobState.RUNNING)
    assert building_elsewhere([running], "a", [seen(frozenset({running.task_id}))]) == {key}
    assert building_elsewhere([running], "a", [says_nothing_cached]) == frozenset()
    # a beat older than the record's last change may predate the launch: assume caching
    late = held(JobState.RUNNING, updated=T0 + 9)
    assert building_elsewhere([late], "a", [says_nothing_cached]) == {key}
    # my own runs are the supervisor's to report; dead or older peers hold nothing
    assert building_elsewhere([held(JobState.STARTING, node="a")], "a", [says_nothing_cached]) == (
        frozenset()
    )
    assert building_elsewhere([held(JobState.STARTING)], "a", [seen(None)]) == frozenset()
    dead = seen(frozenset(), alive=False)
    assert building_elsewhere([held(JobState.STARTING)], "a", [dead]) == frozenset()
    done = dataclasses.replace(held(JobState.COMPLETED), state=JobState.COMPLETED)
    assert building_elsewhere([done], "a", [says_nothing_cached]) == frozenset()
