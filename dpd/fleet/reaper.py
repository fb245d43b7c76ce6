"""The reaper: what every node does about another node that is gone (FLEET.md §9.3, §8.2).

``decide`` is pure: one record, what a leader read of its owner's alive key answered, the
owner's registry entry (``down``) and how long this reaper has itself seen the key absent →
the transition to make (if any). ``Reaper.tick`` is the I/O around it: it suspects nodes
from the watched alive table (``ReaperView``), settles each suspicion with a leader read,
and applies each decision by CAS, deciding again on the record the CAS reads.

What it guarantees:
- A job claimed but not started on a node whose alive key is gone (or names a new boot) is
  requeued at once (T4b): the owner cannot spawn without its own T3, which then fails.
- A job that may have a trainer (``starting``/``running``/``stopping``) is never requeued on
  the strength of an absence alone in ``hold`` mode (the owner's own ``owner.fence``, never
  this node's setting): it gets ``lost`` (T13) and waits for proof its trainer is gone — the
  node back on a new boot (T10a), an operator's ``node-down`` (T10c), or, in ``requeue``
  mode, the owner's fence deadline passed on this reaper's own clock (T10b). T11 then
  requeues it per policy, in the same CAS.
- It judges nobody before it has been connected for ``node_ttl`` (``ReaperView``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dpd.fleet.heads import with_floor
from dpd.fleet.kv import TRANSIENT, Bucket, CasConflict, Entry, OutcomeUnknown, Unavailable
from dpd.fleet.records import (
    SPAWNABLE,
    JobRecord,
    JobState,
    NodeRecord,
    RecordError,
    enc,
    node_key,
)
from dpd.fleet.registry import ReaperView, Verdict, alive_read
from dpd.fleet.table import WatchedTable
from dpd.fleet.transitions import (
    FENCED,
    NODE_LOST,
    AliveRead,
    FencedOut,
    LossProof,
    MarkedDown,
    Rebooted,
    TransitionRefused,
    declare_lost,
    expire_claim,
    requeue_lost,
    set_lost,
)

log = logging.getLogger("dpd.fleet.reaper")


class Act(StrEnum):
    NONE = "none"
    EXPIRE_CLAIM = "expire_claim"  # T4b
    SET_LOST = "set_lost"  # T13
    DECLARE_LOST = "declare_lost"  # T10 (+ T11 per policy)
    REQUEUE = "requeue"  # T11 alone (a T10 landed without its T11)


@dataclass(frozen=True)
class Policy:
    """The reaper's own settings that the transitions take (FLEET.md §11)."""

    node_ttl: float
    lost_after: float
    fence_margin: float
    max_attempts: int
    requeue_on_reboot: bool


@dataclass(frozen=True)
class Decision:
    act: Act
    proof: LossProof | None = None

    @property
    def needed(self) -> bool:
        return self.act is not Act.NONE


NOTHING = Decision(Act.NONE)


def decide(
    record: JobRecord,
    alive: AliveRead,
    down: dict[str, Any] | None,
    absent_for: float,
    policy: Policy,
) -> Decision:
    """What a reaper does to ``record`` given a leader read of its owner's alive key."""
    if record.state is JobState.FAILED:
        return _requeue_after_loss(record)
    owner = record.owner
    if owner is None or record.terminal:
        return NOTHING
    same_machine = alive.machine_id == owner.machine_id
    rebooted = alive.present and same_machine and alive.boot_id != owner.boot_id
    if record.state is JobState.CLAIMED:
        gone = not alive.present or (same_machine and alive.boot_id != owner.boot_id)
        return Decision(Act.EXPIRE_CLAIM) if gone else NOTHING
    if record.state not in SPAWNABLE:
        return NOTHING
    if rebooted:
        return Decision(Act.DECLARE_LOST, Rebooted(alive))
    if alive.present:
        return NOTHING  # alive on the same boot (its trainer may run), or a name clash
    if down:
        return Decision(Act.DECLARE_LOST, MarkedDown(down))
    fenced = FencedOut(alive, absent_for, policy.lost_after, policy.fence_margin, policy.node_ttl)
    with contextlib.suppress(TransitionRefused):
        declare_lost(record, fenced, "-", 0.0)  # only checks the owner's fence contract
        return Decision(Act.DECLARE_LOST, fenced)
    return Decision(Act.SET_LOST) if record.lost is None else NOTHING


def _requeue_after_loss(record: JobRecord) -> Decision:
    reason = record.result.reason if record.result else None
    return Decision(Act.REQUEUE) if reason in (NODE_LOST, FENCED) else NOTHING


def _requeue(record: JobRecord, policy: Policy, by: str, now: float, resumable: bool) -> JobRecord:
    return requeue_lost(
        record,
        by,
        now,
        max_attempts=policy.max_attempts,
        resumable=resumable,
        requeue_on_reboot=policy.requeue_on_reboot,
    )


def requeue_possible(record: JobRecord, policy: Policy) -> bool:
    """A ``failed(node_lost|fenced)`` record that T11 would requeue (pure)."""
    try:
        _requeue(record, policy, "-", 0.0, True)
    except TransitionRefused:
        return False
    return True


def change_for(
    record: JobRecord,
    alive: AliveRead,
    down: dict[str, Any] | None,
    absent_for: float,
    policy: Policy,
    by: str,
    now: float,
    resumable: bool = True,
) -> JobRecord | None:
    """``decide`` and apply in one step: the new record, or None (nothing to do, or the
    transition's precondition no longer holds on this record)."""
    decision = decide(record, alive, down, absent_for, policy)
    try:
        if decision.act is Act.EXPIRE_CLAIM:
            return expire_claim(record, alive, by, now)
        if decision.act is Act.SET_LOST:
            return set_lost(record, alive, by, now)
        if decision.act is Act.REQUEUE:
            return _requeue(record, policy, by, now, resumable)
        if decision.act is Act.DECLARE_LOST:
            assert decision.proof is not None
            failed = declare_lost(record, decision.proof, by, now)
            try:  # T10 and T11 in one CAS: a requeue needs no second look at the owner
                return _requeue(failed, policy, by, now, resumable)
            except TransitionRefused:
                return failed
    except TransitionRefused as err:
        log.debug("%s: %s", record.task_id, err)
    return None


# ---------------------------------------------------------------------------- the loop


@dataclass
class ReaperStats:
    expired_claims: int = 0
    marked_lost: int = 0
    declared_lost: int = 0
    requeued: int = 0


class Reaper:
    """One node's reaper over the agent's watched tables (§9.3). ``tick`` once a second."""

    def __init__(
        self,
        me: str,
        jobs: Bucket,
        alive: Bucket,
        job_table: WatchedTable,
        alive_table: WatchedTable,
        node_table: WatchedTable,
        policy: Policy,
        heartbeat_interval: float,
        clock: Callable[[], float] = time.monotonic,
        seq_floor: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        self.me = me
        self.seq_floor = seq_floor  # the stream's last seq of a task (§9.7); None: 0
        self.jobs = jobs
        self.alive = alive
        self.job_table = job_table
        self.alive_table = alive_table
        self.node_table = node_table
        self.policy = policy
        self.clock = clock
        self.view = ReaperView(policy.node_ttl, heartbeat_interval)
        self.stats = ReaperStats()

    def connected(self, is_connected: bool) -> None:
        if is_connected:
            self.view.connected(self.clock())
        else:
            self.view.disconnected()

    def _records(self) -> Iterable[JobRecord]:
        for seen in list(self.job_table.entries.values()):
            with contextlib.suppress(RecordError):
                yield JobRecord.from_json(seen.entry.value)

    def _down(self, node: str) -> dict[str, Any] | None:
        seen = self.node_table.get(node_key(node))
        if seen is None:
            return None
        try:
            return NodeRecord.from_json(seen.entry.value).down
        except RecordError:
            return None

    def _watched_boot(self, node: str) -> str | None:
        seen = self.alive_table.get(node_key(node))
        if seen is None:
            return None
        try:
            return alive_read(seen.entry).boot_id
        except RecordError:
            return None

    async def tick(self) -> int:
        """One look at every other node owning a live record; the transitions applied."""
        now = self.clock()
        if not self.view.may_judge(now):
            return 0
        by_owner: dict[str, list[JobRecord]] = {}
        for record in self._records():
            owner = record.owner
            if owner is None or owner.node == self.me:
                continue
            if record.terminal and not requeue_possible(record, self.policy):
                continue
            by_owner.setdefault(owner.node, []).append(record)
        applied = 0
        for node, records in by_owner.items():
            seen = self.alive_table.get(node_key(node))
            watched = self._watched_boot(node)
            pending = [r for r in records if r.terminal]
            other_boot = any(r.owner is not None and r.owner.boot_id != watched for r in records)
            suspect = self.view.suspect(seen, now) is Verdict.SUSPECT
            if not (suspect or other_boot or node in self.view.lost_since or pending):
                continue
            read = alive_read(await self.alive.leader_get(node_key(node)))
            self.view.settle(node, read, None, self.clock())
            absent = self.view.absent_for(node, self.clock())
            down = self._down(node)
            for record in records:
                hint = change_for(record, read, down, absent, self.policy, self.me, time.time())
                if hint is None:
                    continue  # as the table shows it, nothing to do (held, or alive)
                if await self._apply(record.task_id, read, down, absent):
                    applied += 1
        return applied

    async def _apply(
        self, task_id: str, read: AliveRead, down: dict[str, Any] | None, absent: float
    ) -> bool:
        seen: list[JobRecord] = []
        # what the owner published may be past the record's seq: the events this change
        # announces number after both (FLEET.md §9.7)
        floor = await self.seq_floor(task_id) if self.seq_floor is not None else 0

        def fn(entry: Entry | None) -> bytes | None:
            if entry is None:
                return None
            record = JobRecord.from_json(entry.value)
            new = change_for(
                with_floor(record, floor), read, down, absent, self.policy, self.me, time.time()
            )
            if new is None:
                return None
            seen[:] = [record, new]
            return new.to_json()

        try:
            result = await self.jobs.cas_update(enc(task_id), fn)
        except (CasConflict, Unavailable, OutcomeUnknown, RecordError, *TRANSIENT) as err:
            log.warning("%s: reaper transition not applied (%r)", task_id, err)
            return False
        if not result.written or len(seen) != 2:
            return False
        self._count(task_id, *seen)
        return True

    def _count(self, task_id: str, old: JobRecord, new: JobRecord) -> None:
        node = old.owner.node if old.owner else "?"
        if old.state is JobState.CLAIMED:
            self.stats.expired_claims += 1
            log.warning("%s: %s is gone; its claim (attempt %d) is requeued", task_id, node,
                        old.attempt)  # fmt: skip
        elif new.lost is not None and old.lost is None and new.state is old.state:
            self.stats.marked_lost += 1
            log.warning("%s: %s is gone; the job is held (node_state lost)", task_id, node)
        else:
            if old.state in SPAWNABLE:
                self.stats.declared_lost += 1
            if new.state is JobState.QUEUED:
                self.stats.requeued += 1
            reason = (new.result.error or {}) if new.result else {}
            log.warning("%s: run on %s ended as lost (%s); now %s", task_id, node,
                        reason.get("proof", "requeued"), new.state.value)  # fmt: skip


async def run_reaper(reaper: Reaper, connected: Callable[[], bool], period: float = 1.0) -> None:
    """Tick every ``period`` (with jitter) until cancelled; NATS trouble skips a tick."""
    import random

    while True:
        reaper.connected(connected())
        try:
            await reaper.tick()
        except (Unavailable, OutcomeUnknown, *TRANSIENT) as err:
            log.warning("reaper: NATS unavailable (%r)", err)
        except Exception:
            log.exception("reaper tick failed; trying again")
        await asyncio.sleep(period + random.uniform(0, period))
