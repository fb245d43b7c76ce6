"""The agent's side of the publication gate and of muting (FLEET.md §9.7).

The NATS bridge publishes; this module tells it, per task, whether it may (``gate``, handed
to the bridge at wiring time: the events package knows nothing of the fleet), and when to
look again (``reopen``). The decision is ``dpd.fleet.gate.decide``; the facts come from here:

- the local attempt: state.json's ``fleet.attempt`` (a task without one is never gated);
- the lease: the heartbeat's ``last_ok``, and ``confirmed``: the ``last_ok`` of the last
  renewal after which the stream leader was asked for ``KV_dpd_jobs``' last revision and
  the watched job table applied it (``confirm_loop``, after every successful heartbeat);
- the record: the watched job table's.

A task being claimed or taken here right now is never muted by the gate (its local attempt
is about to change; it is held and looked at again when the take ends). Muting persists in
the bridge's ack record before the local status change it hides is written; a later attempt
of the task materialised here unmutes it (``unmute_for``), publishing only its own events.

Errors: a failed confirmation (NATS away, the table behind for ``node_ttl``) leaves the gate
as it was (it closes by itself once the lease is stale) and is retried at the next renewal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from dpd.errors import NotFound
from dpd.events.jetstream import HOLD, PUBLISH, Gating, PublishGate
from dpd.fleet.gate import Lease, Verdict, decide
from dpd.fleet.records import JobRecord, RecordError, enc
from dpd.fleet.registry import boottime

if TYPE_CHECKING:
    from dpd.fleet.agent import FleetAgent

log = logging.getLogger("dpd.fleet.publication")

FLEET = "fleet"


class EventOutlet(Protocol):
    """What the gate needs of the NATS bridge (``NatsBridge`` is one)."""

    def set_gate(self, gate: PublishGate) -> None: ...

    def reopen(self) -> None: ...

    def muted(self, task_id: str) -> int | None: ...

    async def mute(self, task_id: str, attempt: int) -> None: ...

    async def unmute(self, task_id: str, after_seq: int) -> None: ...


class Publication:
    def __init__(self, agent: FleetAgent) -> None:
        self.agent = agent
        self.outlet: EventOutlet | None = None
        self.confirmed: float | None = None  # BOOTTIME of the renewal last confirmed
        self.confirmations = 0
        self.muted = 0  # tasks muted by this instance
        self._renewed = asyncio.Event()
        self._records: dict[str, tuple[int, JobRecord]] = {}  # parsed records by revision

    def attach(self, outlet: EventOutlet) -> None:
        self.outlet = outlet
        outlet.set_gate(self.gate)

    # ------------------------------------------------------------ the gate

    def gate(self, task_id: str) -> Gating:
        """The bridge's question, on the loop, for every event it is about to send."""
        attempt = self._local_attempt(task_id)
        if attempt is None:
            return PUBLISH  # not a fleet task here: single-host behaviour
        verdict = decide(self.agent.node, attempt, self._record(task_id), self.lease(), boottime())
        if verdict is Verdict.OPEN:
            return PUBLISH
        if verdict is Verdict.SUPERSEDED and task_id not in self.agent.claiming:
            log.warning("%s: attempt %d is superseded; its events stay local", task_id, attempt)
            self.muted += 1
            return Gating(False, mute=attempt)
        return HOLD

    def lease(self) -> Lease:
        agent = self.agent
        beat = agent.heartbeat
        return Lease(
            beat.last_ok if beat is not None else None,
            self.confirmed,
            agent.heartbeat_ttl(),
            agent.ready.is_set(),
        )

    def _local_attempt(self, task_id: str) -> int | None:
        try:
            fleet = self.agent.store.get(task_id).get(FLEET)
        except NotFound:
            return None
        if not isinstance(fleet, dict) or not isinstance(fleet.get("attempt"), int):
            return None
        return int(fleet["attempt"])

    def _record(self, task_id: str) -> JobRecord | None:
        table = self.agent.job_table
        seen = table.get(enc(task_id)) if table is not None else None
        if seen is None:
            return None
        cached = self._records.get(task_id)
        if cached is not None and cached[0] == seen.entry.revision:
            return cached[1]
        try:
            record = JobRecord.from_json(seen.entry.value)
        except RecordError:
            return None
        self._records[task_id] = (seen.entry.revision, record)
        return record

    # ------------------------------------------------------ looking again

    def renewed(self) -> None:
        """The heartbeat's hook: a renewal succeeded, confirm the table after it."""
        self._renewed.set()

    def reopen(self) -> None:
        if self.outlet is not None:
            self.outlet.reopen()

    async def confirm_loop(self) -> None:
        """After each renewal: the job bucket's last revision from the stream leader, then
        wait (at most ``node_ttl``) until the watched table applied it; then the gate may
        open. Runs until cancelled; every error is retried at the next renewal."""
        while True:
            await self._renewed.wait()
            self._renewed.clear()
            if await self.confirm():
                self.reopen()

    async def confirm(self) -> bool:
        agent = self.agent
        beat, jobs, table = agent.heartbeat, agent.jobs, agent.job_table
        if beat is None or beat.last_ok is None or jobs is None or table is None:
            return False
        renewal = beat.last_ok
        try:
            async with asyncio.timeout(agent.heartbeat_ttl()):
                await table.reached(await jobs.last_revision())
        except Exception as err:  # NATS away, the table far behind: the gate stays as it was
            log.info("fleet: job table not confirmed after a renewal (%r)", err)
            return False
        self.confirmed = max(renewal, self.confirmed or renewal)
        self.confirmations += 1
        return True

    # ------------------------------------------------------------- muting

    async def mute(self, task_id: str) -> None:
        """Before a superseded local attempt is stopped or marked (§9.5): its events,
        those already on disk and those the stop writes, never leave this node."""
        attempt = self._local_attempt(task_id)
        if self.outlet is None or attempt is None:
            return
        await self.outlet.mute(task_id, attempt)
        self.muted += 1

    async def unmute_for(self, task_id: str, attempt: int) -> None:
        """Before ``attempt`` of the task is materialised here: if an earlier attempt of it
        was muted, publish again from the events that follow the ones on disk now."""
        outlet = self.outlet
        if outlet is None:
            return
        muted = outlet.muted(task_id)
        if muted is None or muted >= attempt:
            return
        store = self.agent.store
        after = store.last_event_seq(task_id) if store.exists(task_id) else 0
        await outlet.unmute(task_id, after)
        log.info("%s: attempt %d starts here; publishing after seq %d", task_id, attempt, after)
