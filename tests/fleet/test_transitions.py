"""T1–T14 (FLEET.md §8.2): preconditions, and the invariants of §8.3 under random histories.

The state machine test plays a small world — three nodes, one job, a clock — where daemons
crash, come back on the same boot, hosts reboot or power off, nodes claim, start, finish,
decline, reapers expire claims and declare owners lost, operators cancel, resume and mark
nodes down. Every actor acts on what it may know, including stale attempts; every piece of
evidence a reaper uses is what a leader read would have answered at that moment. Trainers
live from a successful T3 (or re-fence) until their owner ends them (T7), their host reboots
or powers off, or — in requeue mode — the owner's fence deadline passes without a lease
renewal. The invariants:

- at most one live trainer per task, ever (I1 + I2 ⇒ §8.3's conclusion);
- ``attempt`` never decreases, and only a claim from ``queued`` raises it (I2);
- a trainer is spawned only under ``may_spawn`` for the spawning instance (I1).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpd.fleet import transitions as tr
from dpd.fleet.records import (
    Constraints,
    Desired,
    Fence,
    FenceMode,
    JobRecord,
    JobState,
    SubmittedBy,
)
from dpd.fleet.transitions import (
    Actor,
    AliveRead,
    ClaimFacts,
    FencedOut,
    MarkedDown,
    NodeFacts,
    Rebooted,
    TransitionRefused,
)

NODES = ("a", "b", "c")
NODE_TTL = 3.0
DEADLINE = {"a": None, "b": 10.0, "c": 25.0}  # a holds; b, c requeue with their own deadline
T0 = 1_765_000_000.0


def facts(node: str, **kw: Any) -> NodeFacts:
    base: dict[str, Any] = {
        "node": node,
        "filesystem_domain": "lab",
        "labels": {},
        "gpu_memory": {0: 1000, 1: 1000},
    }
    base.update(kw)
    return NodeFacts(**base)


def fence(node: str) -> Fence:
    deadline = DEADLINE[node]
    return Fence(FenceMode.HOLD if deadline is None else FenceMode.REQUEUE, deadline)


def new_job(now: float = T0, **kw: Any) -> JobRecord:
    constraints = Constraints(required_gpus=1, filesystem_domain="lab", **kw)
    return tr.submit("t1", constraints, {"model_type": "flux"}, SubmittedBy("a", "rest"), now)


def actor(node: str, boot: int = 0, instance: int = 0) -> Actor:
    return Actor(node, f"{node}-i{instance}", f"{node}-boot{boot}", f"{node}-machine")


def claim_facts(name: str, gpus: tuple[int, ...] = (0,), **kw: Any) -> ClaimFacts:
    base: dict[str, Any] = {
        "node": facts(name),
        "fence": fence(name),
        "gpus": gpus,
        "lease_age": 0.0,
        "node_ttl": NODE_TTL,
    }
    base.update(kw)
    return ClaimFacts(**base)


# --------------------------------------------------------------------- unit cases


def test_claim_start_run_finish_happy_path() -> None:
    me = actor("a")
    record = tr.claim(new_job(), me, claim_facts("a"), T0 + 1)
    assert (record.state, record.attempt, record.owner and record.owner.node) == (
        JobState.CLAIMED,
        1,
        "a",
    )
    assert not tr.may_spawn(record, me, 1)
    record = tr.start(record, me, 1, T0 + 2)
    assert tr.may_spawn(record, me, 1)
    record = tr.mark_running(record, me, 1, T0 + 3, port=29500, seq=4)
    record = tr.finish(record, me, 1, JobState.COMPLETED, T0 + 4, seq=9)
    assert record.state is JobState.COMPLETED and record.seq == 9
    assert [h.outcome for h in record.history] == ["completed"]
    assert JobRecord.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"lease_age": NODE_TTL / 2}, "lease"),
        ({"draining": True}, "draining"),
        ({"gpus": (0, 1)}, "needs 1"),
        ({"gpus": (7,)}, "not on this node"),
        ({"node": facts("a", filesystem_domain="other")}, "filesystem domain"),
        ({"node": facts("a", gpu_memory={0: 10})}, "MB"),
    ],
)
def test_claim_preconditions(change: dict[str, Any], reason: str) -> None:
    job = new_job(min_memory_mb=500)
    with pytest.raises(TransitionRefused, match=reason):
        tr.claim(job, actor("a"), claim_facts("a", **change), T0)


def test_claim_respects_pins_labels_and_recent_declines() -> None:
    with pytest.raises(TransitionRefused, match="pinned"):
        tr.claim(new_job(node="b"), actor("a"), claim_facts("a"), T0)
    with pytest.raises(TransitionRefused, match="label"):
        tr.claim(new_job(labels={"rack": "r1"}), actor("a"), claim_facts("a"), T0)
    me = actor("a")
    record = tr.claim(new_job(), me, claim_facts("a"), T0)
    record = tr.decline(record, me, 1, "dataset missing", T0 + 1)
    assert record.state is JobState.QUEUED and record.owner is None
    with pytest.raises(TransitionRefused, match="declined"):
        tr.claim(record, me, claim_facts("a"), T0 + 30)
    assert tr.claim(record, me, claim_facts("a"), T0 + 62).attempt == 2
    assert tr.claim(record, actor("b"), claim_facts("b"), T0 + 2).attempt == 2


def test_a_claim_given_back_after_a_restart_may_be_claimed_again_at_once() -> None:
    me = actor("a")
    record = tr.claim(new_job(), me, claim_facts("a"), T0)
    record = tr.decline(record, me, 1, "nothing of the claim here", T0 + 1, remember=False)
    assert record.state is JobState.QUEUED and record.declined == ()
    assert [h.outcome for h in record.history] == ["declined"]
    assert tr.claim(record, me, claim_facts("a"), T0 + 2).attempt == 2


def test_declined_everywhere_fails_the_job_with_its_announcement() -> None:
    """T4c: the last node that could run the job declines it; the job fails in the same CAS,
    its ``failed`` numbered into the log head for the decliner to publish (§9.7)."""
    b, a = actor("b"), actor("a")
    record = tr.claim(new_job(), b, claim_facts("b"), T0)
    record = tr.decline(record, b, 1, "dataset missing on b", T0 + 1)
    record = tr.claim(record, a, claim_facts("a"), T0 + 2)
    error = {"cause": "missing_file", "code": 422, "reason": "every host declined"}
    failed = tr.decline_everywhere(record, a, 2, "dataset missing on a", T0 + 3, error)
    assert failed.state is JobState.FAILED and failed.owner is None
    assert failed.result is not None and failed.result.error == error
    assert [d.node for d in failed.declined] == ["b", "a"]
    assert [h.outcome for h in failed.history] == ["declined", "declined_everywhere"]
    event = failed.log_head[-1]
    assert failed.seq == record.seq + 1 == event["seq"]
    assert event["node"] == "a" and event["data"]["status"] == "failed"
    assert event["data"]["previous"] == "queued" and event["data"]["error"] == error
    with pytest.raises(TransitionRefused, match="T4a"):  # only the owner, only while claimed
        tr.decline_everywhere(record, b, 2, "not mine", T0 + 3, error)
    with pytest.raises(TransitionRefused, match="state is failed"):
        tr.decline_everywhere(failed, a, 2, "again", T0 + 4, error)


def test_start_is_fenced_by_attempt_and_boot() -> None:
    me = actor("a")
    record = tr.claim(new_job(), me, claim_facts("a"), T0)
    with pytest.raises(TransitionRefused, match="attempt"):
        tr.start(record, me, 0, T0)
    with pytest.raises(TransitionRefused, match="owned by a"):
        tr.start(record, actor("b"), 1, T0)
    with pytest.raises(TransitionRefused, match="reboot"):
        tr.start(record, actor("a", boot=1, instance=1), 1, T0)
    restarted = actor("a", instance=1)  # same boot, new daemon instance
    started = tr.start(record, restarted, 1, T0)
    assert tr.may_spawn(started, restarted, 1) and not tr.may_spawn(started, me, 1)
    refenced = tr.refence(started, me, 1, T0)
    assert tr.may_spawn(refenced, me, 1) and not tr.may_spawn(refenced, restarted, 1)


def test_expire_claim_needs_a_leader_read_showing_the_owner_gone() -> None:
    record = tr.claim(new_job(), actor("a"), claim_facts("a"), T0)
    with pytest.raises(TransitionRefused, match="alive on the same boot"):
        tr.expire_claim(record, AliveRead(True, "a-boot0", "a-machine"), "b", T0)
    with pytest.raises(TransitionRefused, match="leader"):
        tr.expire_claim(record, AliveRead(False, from_leader=False), "b", T0)
    expired = tr.expire_claim(record, AliveRead(False), "b", T0)
    assert expired.state is JobState.QUEUED and expired.attempt == 1
    assert expired.history[-1].outcome == "claim_expired"
    rebooted = tr.expire_claim(record, AliveRead(True, "a-boot1", "a-machine"), "b", T0)
    assert rebooted.state is JobState.QUEUED


def running_on(node: str) -> JobRecord:
    me = actor(node)
    record = tr.claim(new_job(), me, claim_facts(node), T0)
    return tr.mark_running(tr.start(record, me, 1, T0), me, 1, T0)


def test_declare_lost_proofs() -> None:
    held = running_on("a")
    absent = AliveRead(False)
    with pytest.raises(TransitionRefused, match="hold"):
        tr.declare_lost(held, FencedOut(absent, 1e9, 0, 0, NODE_TTL), "b", T0)
    with pytest.raises(TransitionRefused, match="same boot"):
        tr.declare_lost(held, Rebooted(AliveRead(True, "a-boot0", "a-machine")), "b", T0)
    with pytest.raises(TransitionRefused, match="another machine"):
        tr.declare_lost(held, Rebooted(AliveRead(True, "a-boot1", "x-machine")), "b", T0)
    with pytest.raises(TransitionRefused, match="not marked down"):
        tr.declare_lost(held, MarkedDown(None), "b", T0)
    lost = tr.declare_lost(held, Rebooted(AliveRead(True, "a-boot1", "a-machine")), "b", T0 + 5)
    assert lost.state is JobState.FAILED and lost.result and lost.result.reason == "node_lost"
    assert lost.seq == held.seq + 1 and lost.log_head[-1]["data"]["status"] == "failed"
    assert not lost.head_published
    # requeue mode: the owner's deadline counts, not the reaper's lost_after (b: 10 s)
    owned_by_b = running_on("b")
    wait = tr.fence_wait(fence("b"), lost_after=0, fence_margin=2, node_ttl=NODE_TTL)
    assert wait == 10 + 2 - NODE_TTL
    with pytest.raises(TransitionRefused, match="absent"):
        tr.declare_lost(owned_by_b, FencedOut(absent, wait - 0.1, 0, 2, NODE_TTL), "c", T0)
    assert tr.declare_lost(owned_by_b, FencedOut(absent, wait, 0, 2, NODE_TTL), "c", T0).terminal


def test_requeue_after_node_loss_resumes_and_numbers_its_event() -> None:
    lost = tr.declare_lost(running_on("a"), MarkedDown({"by": "op"}), "b", T0)
    again = tr.requeue_lost(
        lost, "b", T0 + 1, max_attempts=3, resumable=True, requeue_on_reboot=True, seq_base=40
    )
    assert again.state is JobState.QUEUED and again.requeues == 1 and again.owner is None
    assert again.spec and again.spec["resume_from_checkpoint"] is True
    assert again.seq == 41 and again.log_head[-1]["data"]["possible_gap"] is True
    with pytest.raises(TransitionRefused, match="requeued 3 times"):
        tr.requeue_lost(
            dataclasses.replace(lost, requeues=3),
            "b",
            T0,
            max_attempts=3,
            resumable=True,
            requeue_on_reboot=True,
        )
    rebooted = tr.declare_lost(
        running_on("a"), Rebooted(AliveRead(True, "a-boot1", "a-machine")), "a", T0
    )
    with pytest.raises(TransitionRefused, match="requeue_on_reboot"):
        tr.requeue_lost(rebooted, "a", T0, max_attempts=3, resumable=True, requeue_on_reboot=False)


def test_cancel_stop_resume_and_tombstone() -> None:
    job = new_job()
    with pytest.raises(TransitionRefused, match="no stop"):
        tr.cancel(job, "b", T0)
    stopped = tr.cancel(tr.request_stop(job, "b", T0), "b", T0)
    assert stopped.state is JobState.STOPPED and stopped.seq == 2
    with pytest.raises(TransitionRefused):
        tr.request_stop(stopped, "b", T0)
    resumed = tr.resume(stopped, "c", T0)
    assert resumed.state is JobState.QUEUED and resumed.desired is Desired.RUN
    assert resumed.seq == 3 and resumed.attempt == stopped.attempt
    with pytest.raises(TransitionRefused, match="days"):
        tr.tombstone(stopped, "c", T0 + 86400, keep_terminal_days=30)
    grave = tr.tombstone(stopped, "c", T0 + 31 * 86400, keep_terminal_days=30)
    assert grave.spec is None and grave.log_head == () and grave.task_id == "t1"
    assert JobRecord.from_json(grave.to_json()) == grave
    with pytest.raises(TransitionRefused, match="tombstone"):
        tr.resume(grave, "c", T0)


def test_lost_flag_set_once_and_cleared_by_the_owner() -> None:
    record = running_on("a")
    with pytest.raises(TransitionRefused, match="alive"):
        tr.set_lost(record, AliveRead(True, "a-boot0", "a-machine"), "b", T0)
    flagged = tr.set_lost(record, AliveRead(False), "b", T0)
    assert flagged.lost and flagged.lost.node == "a" and flagged.state is JobState.RUNNING
    with pytest.raises(TransitionRefused, match="already"):
        tr.set_lost(flagged, AliveRead(False), "c", T0)
    with pytest.raises(TransitionRefused, match="owned by a"):
        tr.clear_lost(flagged, actor("b"), 1, T0)
    assert tr.clear_lost(flagged, actor("a", instance=3), 1, T0).lost is None


# ------------------------------------------------------------ the invariant machine


@dataclasses.dataclass
class Node:
    name: str
    boot: int = 0
    instance: int = 0
    up: bool = True  # the daemon runs and renews its lease
    powered: bool = True
    last_renewal: float = T0  # the time its last heartbeat was sent
    held: int | None = None  # the attempt its local spool knows

    @property
    def actor(self) -> Actor:
        return actor(self.name, self.boot, self.instance)


class FleetWorld:
    def __init__(self) -> None:
        self.now = T0
        self.nodes = {n: Node(n) for n in NODES}
        self.record = new_job()
        self.trainers: set[tuple[str, int]] = set()  # (node, attempt)
        self.absent_since: dict[tuple[str, str], float] = {}  # (reaper, node) -> first seen
        self.max_attempt = 0

    # -- the world ----------------------------------------------------------

    def alive_read(self, node: str) -> AliveRead:
        n = self.nodes[node]
        present = n.powered and (n.up or self.now < n.last_renewal + NODE_TTL)
        if not present:
            return AliveRead(False)
        return AliveRead(True, n.actor.boot_id, n.actor.machine_id)

    def apply(self, change: Any) -> JobRecord | None:
        try:
            new = change()
        except TransitionRefused:
            return None
        assert new.attempt >= self.record.attempt, "I2: attempt went down"
        if new.attempt != self.record.attempt:
            assert new.attempt == self.record.attempt + 1
            assert self.record.state is JobState.QUEUED and new.state is JobState.CLAIMED
        assert JobRecord.from_json(new.to_json()) == new
        self.record = new
        return new

    def spawn(self, node: Node, attempt: int) -> None:
        assert tr.may_spawn(self.record, node.actor, attempt), "I1: spawn without the fence"
        if (node.name, attempt) in self.trainers:
            return  # a restarted owner re-attaches to its running trainer
        assert not self.trainers, f"two trainers: {self.trainers} and {(node.name, attempt)}"
        self.trainers.add((node.name, attempt))

    def renew(self) -> None:
        for n in self.nodes.values():
            if n.up and n.powered:
                n.last_renewal = self.now

    def key_back(self, n: Node) -> None:
        """The alive key is written again: every reaper's watch sees a new revision."""
        n.last_renewal = self.now
        for key in [k for k in self.absent_since if k[1] == n.name]:
            del self.absent_since[key]

    def advance(self, dt: float) -> None:
        self.now += dt
        self.renew()
        for n in self.nodes.values():  # requeue mode: the shim fences at L + deadline
            deadline = DEADLINE[n.name]
            if deadline is not None and not n.up and self.now >= n.last_renewal + deadline:
                self.trainers = {t for t in self.trainers if t[0] != n.name}

    def crash_daemon(self, node: str) -> None:
        self.nodes[node].up = False  # also: partitioned, or SIGSTOPped

    def daemon_back(self, node: str, same_instance: bool) -> None:
        n = self.nodes[node]
        if n.powered and not n.up:
            n.up = True
            n.instance += 0 if same_instance else 1  # healed partition, or a restart
            self.key_back(n)

    def power_off(self, node: str) -> None:
        n = self.nodes[node]
        n.powered = n.up = False
        self.trainers = {t for t in self.trainers if t[0] != node}

    def boot(self, node: str) -> None:
        n = self.nodes[node]
        n.boot += 1
        n.instance += 1
        n.powered = n.up = True
        self.key_back(n)
        self.trainers = {t for t in self.trainers if t[0] != node}

    # -- owners -------------------------------------------------------------

    def live(self, node: str) -> Node | None:
        n = self.nodes[node]
        return n if n.up and n.powered else None

    def claim(self, node: str, gpu: int) -> None:
        n = self.live(node)
        if n is not None:
            cf = claim_facts(node, (gpu,), lease_age=self.now - n.last_renewal)
            if self.apply(lambda: tr.claim(self.record, n.actor, cf, self.now)):
                n.held = self.record.attempt

    def place(self, node: str, gpu: int) -> None:
        """The common path in one step: claim, then start with the claimed attempt."""
        self.claim(node, gpu)
        n = self.live(node)
        if n is not None and n.held is not None:
            held = n.held
            if self.apply(lambda: tr.start(self.record, n.actor, held, self.now)):
                self.spawn(n, held)

    def start(self, node: str, stale: int, use_held: bool, via_refence: bool) -> None:
        n = self.live(node)
        if n is None:
            return
        attempt = n.held if use_held and n.held is not None else stale
        change = tr.refence if via_refence else tr.start
        if self.apply(lambda: change(self.record, n.actor, attempt, self.now)):
            self.spawn(n, attempt)

    def owner_ends_run(self, node: str, stale: int, status: JobState) -> None:
        n = self.live(node)
        attempt = n.held if n is not None and n.held is not None else stale
        if n is not None and self.apply(
            lambda: tr.finish(self.record, n.actor, attempt, status, self.now)
        ):
            self.trainers.discard((node, attempt))

    def owner_progress(self, node: str) -> None:
        n = self.live(node)
        if n is not None and n.held is not None:
            held = n.held
            self.apply(lambda: tr.mark_running(self.record, n.actor, held, self.now))
            self.apply(lambda: tr.begin_stop(self.record, n.actor, held, self.now))
            self.apply(lambda: tr.decline(self.record, n.actor, held, "no", self.now))
            self.apply(lambda: tr.clear_lost(self.record, n.actor, held, self.now))

    # -- everybody else -----------------------------------------------------

    def operator_stop(self, by: str, force: bool) -> None:
        self.apply(lambda: tr.request_stop(self.record, by, self.now, force))
        self.apply(lambda: tr.cancel(self.record, by, self.now))

    def operator_resume(self, by: str) -> None:
        self.apply(lambda: tr.resume(self.record, by, self.now))

    def operator_node_down(self, node: str) -> None:
        owner = self.record.owner
        # the documented use: the owner's host is really off
        if owner is not None and owner.node == node and not self.nodes[node].powered:
            down = MarkedDown({"by": "op", "at": "x"})
            self.apply(lambda: tr.declare_lost(self.record, down, "a", self.now))

    # reapers act on what they see, with settings unlike the owner's: only the proofs count
    def reap(self, reaper: str, lost_after: float, margin: float, max_attempts: int) -> None:
        if self.live(reaper) is None or self.record.owner is None:
            return
        owner = self.record.owner.node
        alive = self.alive_read(owner)
        key = (reaper, owner)
        if alive.present:
            self.absent_since.pop(key, None)
        else:
            self.absent_since.setdefault(key, self.now)
        absent_for = self.now - self.absent_since.get(key, self.now)
        self.apply(lambda: tr.expire_claim(self.record, alive, reaper, self.now))
        self.apply(lambda: tr.set_lost(self.record, alive, reaper, self.now))
        proof = FencedOut(alive, absent_for, lost_after, margin, NODE_TTL)
        self.apply(lambda: tr.declare_lost(self.record, proof, reaper, self.now))
        self.apply(lambda: tr.declare_lost(self.record, Rebooted(alive), reaper, self.now))
        self.apply(
            lambda: tr.requeue_lost(
                self.record,
                reaper,
                self.now,
                max_attempts=max_attempts,
                resumable=True,
                requeue_on_reboot=True,
            )
        )

    def janitor(self, by: str) -> None:
        self.apply(lambda: tr.tombstone(self.record, by, self.now, keep_terminal_days=0))

    def one_trainer_at_most(self) -> None:
        assert len(self.trainers) <= 1, self.trainers

    def attempts_only_grow(self) -> None:
        assert self.record.attempt >= self.max_attempt
        self.max_attempt = self.record.attempt


nodes = st.sampled_from(NODES)
# (weight, step): nodes and reapers act more often than operators (a stopped job ends most
# stories); the clock moves often enough for leases, claims and fences to expire
STEPS = [
    (
        4,
        st.tuples(
            st.just("advance"),
            st.fixed_dictionaries({"dt": st.sampled_from([0.5, 1.0, 3.0, 7.0, 20.0])}),
        ),
    ),
    (2, st.tuples(st.just("crash_daemon"), st.fixed_dictionaries({"node": nodes}))),
    (
        2,
        st.tuples(
            st.just("daemon_back"),
            st.fixed_dictionaries({"node": nodes, "same_instance": st.booleans()}),
        ),
    ),
    (1, st.tuples(st.just("power_off"), st.fixed_dictionaries({"node": nodes}))),
    (1, st.tuples(st.just("boot"), st.fixed_dictionaries({"node": nodes}))),
    (
        2,
        st.tuples(
            st.just("claim"), st.fixed_dictionaries({"node": nodes, "gpu": st.sampled_from([0, 1])})
        ),
    ),
    (
        4,
        st.tuples(
            st.just("place"), st.fixed_dictionaries({"node": nodes, "gpu": st.sampled_from([0, 1])})
        ),
    ),
    (
        3,
        st.tuples(
            st.just("start"),
            st.fixed_dictionaries(
                {
                    "node": nodes,
                    "stale": st.integers(0, 4),
                    "use_held": st.sampled_from([True, True, True, False]),
                    "via_refence": st.booleans(),
                }
            ),
        ),
    ),
    (
        2,
        st.tuples(
            st.just("owner_ends_run"),
            st.fixed_dictionaries(
                {
                    "node": nodes,
                    "stale": st.integers(0, 4),
                    "status": st.sampled_from(
                        [JobState.COMPLETED, JobState.FAILED, JobState.STOPPED]
                    ),
                }
            ),
        ),
    ),
    (2, st.tuples(st.just("owner_progress"), st.fixed_dictionaries({"node": nodes}))),
    (
        1,
        st.tuples(
            st.just("operator_stop"), st.fixed_dictionaries({"by": nodes, "force": st.booleans()})
        ),
    ),
    (1, st.tuples(st.just("operator_resume"), st.fixed_dictionaries({"by": nodes}))),
    (1, st.tuples(st.just("operator_node_down"), st.fixed_dictionaries({"node": nodes}))),
    (
        6,
        st.tuples(
            st.just("reap"),
            st.fixed_dictionaries(
                {
                    "reaper": nodes,
                    "lost_after": st.sampled_from([0.0, 1.0, 600.0]),
                    "margin": st.sampled_from([0.0, 1.0]),
                    "max_attempts": st.integers(0, 3),
                }
            ),
        ),
    ),
    (1, st.tuples(st.just("janitor"), st.fixed_dictionaries({"by": nodes}))),
]
step = st.one_of([s for weight, s in STEPS for _ in range(weight)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=40, max_size=80))
def test_at_most_one_trainer_and_monotone_attempts(steps: list[tuple[str, dict[str, Any]]]) -> None:
    world = FleetWorld()
    for name, kwargs in steps:
        getattr(world, name)(**kwargs)
        world.one_trainer_at_most()
        world.attempts_only_grow()


# The same world, narrowed to node loss: an owner runs the job, then only its daemon's and
# host's fate, the clock, reapers with any settings, and the other nodes' placements play.
loss_steps = st.one_of(
    st.tuples(
        st.just("advance"),
        st.fixed_dictionaries({"dt": st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 30.0])}),
    ),
    st.tuples(st.just("crash_daemon"), st.fixed_dictionaries({"node": nodes})),
    st.tuples(
        st.just("daemon_back"),
        st.fixed_dictionaries({"node": nodes, "same_instance": st.booleans()}),
    ),
    st.tuples(st.just("boot"), st.fixed_dictionaries({"node": nodes})),
    st.tuples(st.just("power_off"), st.fixed_dictionaries({"node": nodes})),
    st.tuples(st.just("operator_node_down"), st.fixed_dictionaries({"node": nodes})),
    st.tuples(
        st.just("reap"),
        st.fixed_dictionaries(
            {
                "reaper": nodes,
                "lost_after": st.sampled_from([0.0, 1.0, 5.0, 30.0]),
                "margin": st.sampled_from([0.0, 0.5, 5.0]),
                "max_attempts": st.just(5),
            }
        ),
    ),
    st.tuples(
        st.just("place"), st.fixed_dictionaries({"node": nodes, "gpu": st.sampled_from([0, 1])})
    ),
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes, st.lists(loss_steps, min_size=3, max_size=30))
def test_node_loss_never_runs_a_job_twice(
    owner: str, steps: list[tuple[str, dict[str, Any]]]
) -> None:
    world = FleetWorld()
    world.place(owner, 0)
    for name, kwargs in steps:
        getattr(world, name)(**kwargs)
        world.one_trainer_at_most()
        world.attempts_only_grow()


@settings(max_examples=300, deadline=None)
@given(
    owner=st.sampled_from(["b", "c"]),
    rounds=st.lists(
        st.tuples(
            st.floats(0.0, 12.0, allow_nan=False),  # time passing
            st.sampled_from(["a", "b", "c"]),  # reaper
            st.floats(0.0, 40.0, allow_nan=False),  # its lost_after
            st.floats(0.0, 5.0, allow_nan=False),  # its fence_margin
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_requeue_mode_waits_for_the_owners_fence(
    owner: str, rounds: list[tuple[float, str, float, float]]
) -> None:
    """T10(b) by reapers with any settings, at any time after the owner stopped renewing:
    the job runs elsewhere only once the owner's shim has fenced its trainer."""
    world = FleetWorld()
    world.place(owner, 0)
    world.crash_daemon(owner)
    for dt, reaper, lost_after, margin in rounds:
        world.advance(dt)
        world.reap(reaper, lost_after, margin, max_attempts=5)
        for other in NODES:
            world.place(other, 0)
        world.one_trainer_at_most()
