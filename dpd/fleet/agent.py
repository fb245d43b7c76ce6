"""The fleet agent: what one dpd does in fleet mode (FLEET.md §5.1, §9.1–§9.3; phase 1).

It owns a NATS connection of its own (control plane: an event backlog on the bridge's
connection never delays a heartbeat or a CAS), the three buckets, the registration and the
heartbeat, watched tables of ``dpd_jobs``, ``dpd_alive`` and ``dpd_nodes``, and one
placement loop:

- placement (§9.2): ``placer.plan_claims`` over the queued records, this node's GPUs (those
  of claims in flight counted busy) and the peers' last heartbeats; each claim is a T2 CAS
  after its stagger; a won claim is materialised into this host's spool (the job directory
  the supervisor runs), fenced by T3, then launched by ``Supervisor.launch_claimed`` on the
  claimed GPUs. One pass at a time; wakes during a pass coalesce into one more pass.
- the outbox (§7.4): a fleet job's status in its state.json (written before anything is
  announced, as on one host) is the owner's decision; each pass applies what the record
  does not show yet (T5 running, T7 completed/failed/stopped), by CAS, until applied or
  found superseded. state.json is the write-ahead log: a restart reapplies from it.

I1 holds here: the supervisor is asked to launch only after T3 of this instance succeeded.
A T3 that fails leaves the local job stopped (``superseded``) and spawns nothing.

Phase 3 (wired here, built in their own modules): the reaper (``dpd.fleet.reaper``: a gone
node's claims requeued, its running jobs held as ``node_state: lost`` until it returns, comes
back rebooted or is marked down), reconciliation at start and the periodic self-audit
(``dpd.fleet.reconcile``, ``dpd.fleet.audit``), drain and node-down (``dpd.fleet.operator``).

Phase 4 (``dpd.fleet.fence``): in ``node_loss = "requeue"`` mode claims carry the fence
contract, and the daemon stops every fleet run it owns once its lease has run out (its shims
do the same on their own, ``dpd.supervisor.lease``).

The publication gate and muting (FLEET.md §9.7, ``dpd.fleet.publication``): the daemon
hands the agent its NATS bridge (``attach_outlet``); a fleet task's events leave this node
only while its lease is fresh and the job table, confirmed after a renewal, names this
node and the local attempt; a superseded attempt is muted for good.

Not yet: the janitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import nats
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from dpd import __version__
from dpd.config import Config
from dpd.crashpoints import crash_point
from dpd.errors import Conflict, DpdError, InsufficientResources, ValidationFailed
from dpd.fleet import audit as fleet_audit
from dpd.fleet import fence as fleet_fence
from dpd.fleet import heads as fleet_heads
from dpd.fleet import operator as fleet_operator
from dpd.fleet import submit as fleet_submit
from dpd.fleet import views as fleet_views
from dpd.fleet.kv import (
    TRANSIENT,
    Bucket,
    CasConflict,
    Entry,
    KvError,
    OutcomeUnknown,
    Unavailable,
    alive_spec,
    jobs_spec,
    nodes_spec,
)
from dpd.fleet.placer import (
    Claim,
    PeerView,
    building_elsewhere,
    declined_by_all,
    plan_claims,
)
from dpd.fleet.publication import EventOutlet, Publication
from dpd.fleet.reaper import Policy, Reaper, run_reaper
from dpd.fleet.reaper import change_for as reaper_change
from dpd.fleet.reconcile import end_unrecorded, rebooted_since
from dpd.fleet.records import (
    SPAWNABLE,
    AliveRecord,
    FreeGpu,
    GpuInfo,
    JobRecord,
    JobState,
    NodeRecord,
    RecordError,
    enc,
    iso,
    node_key,
    parse_iso,
)
from dpd.fleet.registry import (
    BeatFacts,
    Heartbeat,
    boottime,
    read_lease,
    register,
    this_daemon,
)
from dpd.fleet.resume import resumed_run, runnable_spec
from dpd.fleet.startup import FleetUnsafe, JetStreamNotReady, connected_facts, problems
from dpd.fleet.table import WatchedTable
from dpd.fleet.transitions import (
    AliveRead,
    ClaimFacts,
    NodeFacts,
    TransitionRefused,
    claim,
    decline,
    decline_everywhere,
    finish,
    mark_running,
    may_spawn,
    refence,
    start,
)
from dpd.jobs.dataset_cache import spec_cache_keys
from dpd.jobs.spec import JobSpec, recheck_paths
from dpd.jobs.states import TERMINAL, Status
from dpd.spool.store import JobStore, StatusEvent, Submission, utc_now
from dpd.supervisor import outputs, runfiles
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.ports import NoFreePort
from dpd.supervisor.scheduler import AVAILABLE
from dpd.supervisor.supervisor import Supervisor

log = logging.getLogger("dpd.fleet.agent")

Change = Callable[[JobRecord], JobRecord]  # a transition with its facts bound (T3, T5, T7…)

PASS_PERIOD: Final = 1.0  # a pass at least this often (SCHEDULE_PERIOD, §9.2)
CLAIM_ATTEMPTS: Final = 3
FENCE_TRIES: Final = 4  # T3 refused on a stale direct read: the leader's view decides
FENCE_PAUSE: Final = 0.05
STREAM_READ: Final = 5.0  # seconds for the read of a task's last seq in stream DPD (§9.7)
CONNECT_PAUSE: Final = 1.0
FLEET: Final = "fleet"  # state.json's fleet section (§7.4)
_TERMINAL_LOCAL: Final = {
    Status.COMPLETED.value: JobState.COMPLETED,
    Status.FAILED.value: JobState.FAILED,
    Status.STOPPED.value: JobState.STOPPED,
}


@dataclasses.dataclass
class AgentStats:
    """What this agent did since it started (``GET /api/v1/fleet/stats``, the bench)."""

    claims_won: int = 0
    claims_lost: int = 0  # T2 CAS conflicts and refusals after the plan chose a job
    launched: int = 0
    outbox_applied: int = 0


class FleetAgent:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        supervisor: Supervisor,
        monitor: GpuMonitor,
        announce: Callable[[dict[str, Any]], None],
    ) -> None:
        self.config = config
        self.fleet = config.fleet
        self.node = config.daemon.node
        self.me = this_daemon(self.node)
        self.store = store
        self.supervisor = supervisor
        self.monitor = monitor
        self.announce = announce
        self.stats = AgentStats()
        self.ready = asyncio.Event()
        self.nc: NATS | None = None
        self.jobs: Bucket | None = None
        self.job_table: WatchedTable | None = None
        self.alive_table: WatchedTable | None = None
        self.node_table: WatchedTable | None = None
        self.heartbeat: Heartbeat | None = None
        self.alive: Bucket | None = None  # phase 3: the reaper's and node-down's leader reads
        self.nodes: Bucket | None = None  # phase 3: drain, node-down
        self.reaper: Reaper | None = None
        self.heads = fleet_heads.HeadPublisher(self.node, config.nats.subject_prefix)
        self.audits = 0
        self.claiming: dict[str, tuple[int, ...]] = {}  # task -> GPUs, T2 sent .. launched
        # task -> attempt this instance gave back (T4a, T4c): the watched table may still
        # show it claimed here for a moment, and it must not be taken again as unfinished
        self.given_back: dict[str, int] = {}
        self.publication = Publication(self)  # the gate of §9.7
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ life

    def wake(self) -> None:
        self._wake.set()

    def attach_outlet(self, outlet: EventOutlet) -> None:
        """The NATS bridge: gate this node's fleet task events (§9.7)."""
        self.publication.attach(outlet)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def run(self) -> None:
        """Connect (retrying while NATS is unreachable), register, then heartbeat, watch
        and place until cancelled. ``NameTaken`` and a closed connection propagate."""
        self.nc = await self._connect()
        await self._check_server(self.nc)
        jobs, alive, nodes, heartbeat = await self._set_up(self.nc)
        self.job_table = WatchedTable(jobs, on_change=self._job_changed)
        self.alive_table = WatchedTable(alive, on_change=self._changed)
        self.node_table = WatchedTable(nodes)
        self.supervisor.on_wake = self.wake
        heartbeat.on_renewed = self.publication.renewed
        self.publication.renewed()  # the first beat (``_set_up``) renewed the lease
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(heartbeat.run(), name="fleet heartbeat")
                group.create_task(self.publication.confirm_loop(), name="fleet gate")
                if self.fleet.node_loss == fleet_fence.REQUEUE:  # phase 4: daemon fence
                    group.create_task(self._fence_loop(), name="fleet fence")
                for table in (self.job_table, self.alive_table, self.node_table):
                    group.create_task(table.run(), name=f"fleet watch {table.bucket.stream}")
                for table in (self.job_table, self.alive_table, self.node_table):
                    await table.ready.wait()
                await self._reconcile_at_start()  # phase 3: before placement (§9.5)
                self.ready.set()
                self.publication.reopen()  # fleet tasks' publication opened (§9.5, §9.7)
                log.info("fleet: %s registered (instance %s)", self.node, self.me.instance)
                group.create_task(self._placement_loop(), name="fleet placement")
                group.create_task(self._reaper_loop(), name="fleet reaper")  # phase 3
        finally:
            for task in list(self._tasks):
                task.cancel()
            await self.nc.close()

    async def _check_server(self, nc: NATS) -> None:
        """The start-up check again, on this connection, before anything is claimed: the
        daemon's own check may have found no server, or JetStream electing a leader
        (FLEET.md §3.6). ``FleetUnsafe`` propagates; a JetStream not ready yet is waited for."""
        while True:
            try:
                facts = await connected_facts(nc)
            except JetStreamNotReady as err:
                log.warning("fleet: %s; retrying", err)
                await asyncio.sleep(CONNECT_PAUSE)
                continue
            found = problems([facts], self.fleet.require_sync_always)
            if found:
                raise FleetUnsafe(found[0])
            return

    async def _set_up(self, nc: NATS) -> tuple[Bucket, Bucket, Bucket, Heartbeat]:
        """Buckets, registration, first heartbeat; retried while the cluster cannot answer
        yet (a stream just created elects its leader first). ``NameTaken`` propagates."""
        js = nc.jetstream()
        prefix, replicas = self.config.nats.subject_prefix, self.fleet.replicas
        while True:
            try:
                jobs = await Bucket.ensure(js, jobs_spec(prefix, replicas))
                nodes = await Bucket.ensure(js, nodes_spec(prefix, replicas))
                alive = await Bucket.ensure(js, alive_spec(prefix, replicas, self.fleet.node_ttl))
                await register(nodes, self._node_record())
                heartbeat = Heartbeat(
                    alive,
                    self.me,
                    self.fleet.heartbeat_interval,
                    self.config.daemon.state_dir,
                    snapshot=self._snapshot,
                )
                await heartbeat.start()
                self.jobs, self.heartbeat = jobs, heartbeat
                self.alive, self.nodes = alive, nodes
                return jobs, alive, nodes, heartbeat
            except (KvError, *TRANSIENT, APIError) as err:
                log.warning("fleet: setting up on NATS failed (%r); retrying", err)
                await asyncio.sleep(CONNECT_PAUSE)

    async def _connect(self) -> NATS:
        cfg = self.config.nats
        options: dict[str, Any] = {
            "servers": [u.strip() for u in cfg.url.split(",") if u.strip()],
            "name": f"dpd-fleet-{self.node}",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 2,
        }
        if cfg.user:
            options.update(user=cfg.user, password=cfg.password)
        if cfg.token:
            options["token"] = cfg.token
        if cfg.creds_file:
            options["user_credentials"] = cfg.creds_file
        while True:
            try:
                return await nats.connect(**options)
            except (OSError, TimeoutError, nats.errors.Error) as err:
                log.warning("fleet: NATS not reachable (%r); retrying", err)
                await asyncio.sleep(CONNECT_PAUSE)

    def _changed(self, key: str) -> None:
        self.wake()

    def _job_changed(self, key: str) -> None:
        self.wake()
        self.publication.reopen()  # a record moved: a held task may be let out now

    # --------------------------------------------------------------- facts

    def _gpu_infos(self) -> tuple[GpuInfo, ...]:
        return tuple(
            GpuInfo(g.gpu_id, g.name, g.memory_total, getattr(g, "uuid", "") or "")
            for g in self.monitor.latest
        )

    def _node_record(self) -> NodeRecord:
        daemon = self.config.daemon
        return NodeRecord(
            node=self.node,
            url=self.fleet.public_url or f"http://{self.config.http.host}:{self.config.http.port}",
            gpus=self._gpu_infos(),
            filesystem_domain=self.fleet.filesystem_domain,
            data_roots=tuple(str(p) for p in daemon.data_roots),
            output_root=str(daemon.output_root),
            labels=dict(self.fleet.labels),
            boot_id=self.me.boot_id,
            machine_id=self.me.machine_id,
            instance=self.me.instance,
            version=__version__,
            registered_at=iso(time.time()),
        )

    def facts(self) -> NodeFacts:
        return NodeFacts(
            self.node,
            self.fleet.filesystem_domain,
            dict(self.fleet.labels),
            {g.gpu_id: g.memory_total for g in self.monitor.latest},
        )

    def _claimed_gpus(self) -> set[int]:
        return {g for gpus in self.claiming.values() for g in gpus}

    def _snapshot(self) -> BeatFacts:
        held = self._claimed_gpus()
        free = tuple(
            FreeGpu(v.gpu_id, v.memory_free)
            for v in self.supervisor.gpu_views()
            if v.status == AVAILABLE and v.gpu_id not in held
        )
        caching = tuple(sorted(set(self.supervisor.building_caches().values())))
        return BeatFacts(
            free, tuple(self.supervisor.running), len(self.claiming), self._draining(), caching
        )

    def records(self) -> list[tuple[JobRecord, int]]:
        """The watched job records (a hint, §3.4) with their revisions."""
        out = []
        table = self.job_table
        for seen in list(table.entries.values()) if table else []:
            try:
                out.append((JobRecord.from_json(seen.entry.value), seen.entry.revision))
            except RecordError:
                continue  # a record this version does not understand: not ours to run
        return out

    def peers(self) -> list[PeerView]:
        out: list[PeerView] = []
        if self.alive_table is None or self.node_table is None:
            return out
        for key, seen in list(self.alive_table.entries.items()):
            registered = self.node_table.get(key)
            if registered is None:
                continue
            try:
                alive = AliveRecord.from_json(seen.entry.value)
                node = NodeRecord.from_json(registered.entry.value)
            except RecordError:
                continue
            if node.node == self.node or node.down:
                continue
            facts = NodeFacts(
                node.node,
                node.filesystem_domain,
                dict(node.labels),
                {g.id: g.memory_total for g in node.gpus},
            )
            caching = frozenset(alive.caching) if alive.caching is not None else None
            out.append(
                PeerView(
                    facts,
                    alive.free,
                    True,
                    alive.draining or node.draining,
                    caching=caching,
                    beat_at=parse_iso(alive.at),
                )
            )
        return out

    def registered_nodes(self) -> list[NodeRecord]:
        out = []
        for seen in list(self.node_table.entries.values()) if self.node_table else []:
            with contextlib.suppress(RecordError):
                out.append(NodeRecord.from_json(seen.entry.value))
        return out

    def nodes_view(self) -> list[dict[str, Any]]:
        """Every registered node with its last heartbeat (``GET /api/v1/fleet/nodes``)."""
        alive = self.alive_nodes()
        held = self.held_jobs()  # phase 3
        out = []
        for node in sorted(self.registered_nodes(), key=lambda n: n.node):
            beat = alive.get(node.node)
            state = "down" if node.down else "lost" if beat is None else "alive"
            if state == "alive" and beat is not None and (node.draining or beat.draining):
                state = "draining"
            out.append(
                {
                    "node": node.node,
                    "url": node.url,
                    "gpus": len(node.gpus),
                    "filesystem_domain": node.filesystem_domain,
                    "alive": beat is not None,
                    "free_gpus": [g.id for g in beat.free] if beat else [],
                    "running": list(beat.running) if beat else [],
                    "draining": node.draining,
                    "down": node.down,
                    "state": state,  # phase 3: alive | draining | lost | down
                    "held": sorted(t for t, _ in held.get(node.node, [])),  # node_state lost
                    "lost_since": min((at for _, at in held.get(node.node, [])), default=None),
                }
            )
        return out

    def alive_nodes(self) -> dict[str, AliveRecord]:
        out = {}
        for seen in list(self.alive_table.entries.values()) if self.alive_table else []:
            with contextlib.suppress(RecordError):
                alive = AliveRecord.from_json(seen.entry.value)
                out[alive.node] = alive
        return out

    # --------------------------------------------------------------- submit

    async def commit(
        self, spec: JobSpec, submission: Submission, key_id: str | None = None
    ) -> fleet_submit.Committed:
        """T1 for one validated job (REST); ``QueueUnavailable`` when it cannot be made."""
        if self.jobs is None or not self.ready.is_set():
            raise fleet_submit.QueueUnavailable("the fleet agent is not connected yet")
        if not self.connected:  # answer now, not after a write's resolve timeout
            raise fleet_submit.QueueUnavailable("not connected to any NATS server")
        done = await fleet_submit.commit(
            self.jobs, spec, submission, self.node, self.fleet.filesystem_domain, time.time(),
            key_id,
        )  # fmt: skip
        self.wake()
        return done

    async def existing(self, task_id: str) -> JobRecord | None:
        """The task's record if it exists (a direct read: a hint; the create decides)."""
        if self.jobs is None or not self.connected:
            return None
        try:
            entry = await self.jobs.get(enc(task_id))
        except (Unavailable, *TRANSIENT):
            return None
        if entry is None or not entry.present:
            return None
        return JobRecord.from_json(entry.value)

    async def commit_batch(
        self, requests: Sequence[tuple[JobSpec, Submission]]
    ) -> list[dict[str, Any] | DpdError]:
        """The spool's ``create`` in fleet mode: one result per request, as
        ``JobStore.create_jobs``; the whole batch raises ``ServiceUnavailable`` when the
        queue cannot be reached (the files stay in incoming/)."""
        from dpd.errors import ServiceUnavailable

        out: list[dict[str, Any] | DpdError] = []
        for spec, submission in requests:
            try:
                done = await self.commit(spec, submission)
            except fleet_submit.QueueUnavailable as err:
                raise ServiceUnavailable(f"fleet queue unavailable: {err}") from err
            mine = done.record.submitted_by.identity == fleet_submit.identity_of(submission)
            if not done.created and not mine:
                out.append(Conflict(f"task_id {done.record.task_id} already exists"))
            else:
                out.append({"task_id": done.record.task_id, "status": "queued"})
        return out

    # ------------------------------------------------------------ placement

    async def _placement_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PASS_PERIOD):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.place_once()
                await self.apply_outbox()
                await self.publish_heads()
                await self._audit_now_and_then()  # phase 3: self-audit (§9.2 step 8)
            except (Unavailable, OutcomeUnknown, *TRANSIENT) as err:
                log.warning("fleet pass: NATS unavailable (%r); next pass soon", err)
            except Exception:
                log.exception("fleet placement pass failed; trying again")

    async def publish_heads(self) -> None:
        """This node's status changes to records it does not own, to stream DPD (§9.7)."""
        if self.nc is not None and self.connected:
            await self.heads.publish(self.nc, [r for r, _ in self.records()])

    async def seq_floor(self, task_id: str) -> int:
        """The last seq stream DPD holds for the task (an announcement numbers after it)."""
        prefix = self.config.nats.subject_prefix
        return await fleet_heads.seq_floor(self.nc, prefix, task_id, STREAM_READ)

    async def place_once(self) -> None:
        assert self.heartbeat is not None
        if self.heartbeat.last_ok is None:
            return
        now = time.time()
        every = [r for r, _ in self.records()]
        records = [r for r in every if r.task_id not in self.claiming]
        self._resume_own(records)
        peers = self.peers()  # parsed once per pass
        # dataset caches in use (scheduler rule 6): this host's runs, its claims in flight
        # (not runs yet), and other hosts' jobs
        caching = set(self.supervisor.building_caches())
        caching.update(*(spec_cache_keys(r.spec) for r in every if r.task_id in self.claiming))
        caching |= building_elsewhere(every, self.node, peers)
        claims = plan_claims(
            records,
            self.facts(),
            self.supervisor.gpu_views(),
            peers,
            now,
            claiming=self._claimed_gpus(),
            stagger=self.fleet.claim_stagger,
            caching=frozenset(caching),
        )
        for c in claims:
            if c.delay:
                await asyncio.sleep(c.delay)
            await self._try_claim(c)

    def _resume_own(self, records: Sequence[JobRecord]) -> None:
        """Self-audit, the part phase 1 needs (§9.2 step 8): a record this daemon instance
        claimed or fenced whose take was cut short (an unanswered CAS during a leader change,
        a failed write) is taken again: materialised if needed, fenced unless a leader read
        shows the fence already passed, launched. Its GPUs are held meanwhile."""
        busy = self._claimed_gpus() | {
            v.gpu_id for v in self.supervisor.gpu_views() if v.status != AVAILABLE
        }
        for record in records:
            owner = record.owner
            task_id = record.task_id
            if task_id in self.given_back and self.given_back[task_id] != record.attempt:
                del self.given_back[task_id]  # the table has caught up
            if owner is None or owner.instance != self.me.instance:
                continue
            if record.state not in (JobState.CLAIMED, JobState.STARTING):
                continue
            if self.given_back.get(task_id) == record.attempt:
                continue
            if task_id in self.claiming or task_id in self.supervisor.running:
                continue
            if self._local_blocks(task_id, record.attempt):
                continue  # its run exists or ended here: the outbox reports it
            if busy & set(owner.gpus):
                continue
            log.info("%s: resuming this daemon's unfinished claim (attempt %d)", task_id,
                     record.attempt)  # fmt: skip
            self.claiming[task_id] = owner.gpus
            busy |= set(owner.gpus)
            task = asyncio.create_task(self._take(record, owner.gpus), name=f"take {task_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _try_claim(self, c: Claim) -> None:
        assert self.jobs is not None and self.heartbeat is not None
        if c.task_id in self.claiming:
            return
        seen = self.job_table.get(enc(c.task_id)) if self.job_table else None
        next_attempt = JobRecord.from_json(seen.entry.value).attempt + 1 if seen else 0
        if self._local_blocks(c.task_id, next_attempt):
            return  # running here, or ended here: materialising would refuse (a wasted attempt)
        held = self._claimed_gpus()
        if held & set(c.gpu_ids):
            return
        self.claiming[c.task_id] = c.gpu_ids  # busy from the moment the T2 is sent
        last_ok = self.heartbeat.last_ok or 0.0
        facts = ClaimFacts(
            node=self.facts(),
            fence=fleet_fence.claim_fence(self.config),  # phase 4: owner.fence
            gpus=c.gpu_ids,
            lease_age=boottime() - last_ok,
            node_ttl=self.fleet.node_ttl,
            draining=self._draining(),
            down=self._down(),
        )

        def t2(entry: Entry | None) -> bytes | None:
            if entry is None:
                raise TransitionRefused("T2 claim", "the record is gone")
            return claim(JobRecord.from_json(entry.value), self.me, facts, time.time()).to_json()

        try:
            result = await self.jobs.cas_update(enc(c.task_id), t2, max_attempts=CLAIM_ATTEMPTS)
        except (TransitionRefused, CasConflict) as err:
            self.stats.claims_lost += 1
            log.debug("%s: claim lost (%s)", c.task_id, err)
            self.claiming.pop(c.task_id, None)
            return
        except BaseException:
            self.claiming.pop(c.task_id, None)
            raise
        self.stats.claims_lost += result.attempts - 1
        self.stats.claims_won += 1
        assert result.entry is not None
        record = JobRecord.from_json(result.entry.value)
        log.info("%s: claimed (attempt %d) on GPUs %s", c.task_id, record.attempt, c.gpu_ids)
        crash_point("t2_t3")  # FL6: claimed, nothing materialised
        task = asyncio.create_task(self._take(record, c.gpu_ids), name=f"take {c.task_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self, record: JobRecord, gpus: tuple[int, ...]) -> None:
        """Materialise, fence (T3), launch. The GPUs stay held until the run is the
        supervisor's or the claim is given up."""
        task_id, attempt = record.task_id, record.attempt
        try:
            try:
                base = await self._seq_base(record)
                await self.publication.unmute_for(task_id, attempt)  # §9.7: requeued here
                for event in await asyncio.to_thread(self._materialize, record, base):
                    if isinstance(event, StatusEvent):  # a job that ended here, resumed
                        runfiles.announce(self.supervisor.emit, event)
                    else:
                        self.announce(event)  # on the loop: the bus is not thread-safe
            except DpdError as err:
                log.warning("%s: cannot run here (%s); declining", task_id, err.message)
                refused = err
                record = await self._cas(task_id, lambda r: self._give_back(r, attempt, refused))
                self.given_back[task_id] = attempt
                if record.state is JobState.FAILED:
                    log.warning("%s: failed: every host that could run it declined", task_id)
                    self.wake()  # its announcement is published with the next pass
                return
            if not await self._fence(task_id, attempt):
                return
            crash_point("t3_state")  # FL6: fenced, state.json not yet at "starting"
            await asyncio.to_thread(self._set_stage, task_id, attempt, "starting")
            crash_point("t3_spawn")  # FL6: "starting" written, nothing launched
            try:
                if self.supervisor.launch_claimed(task_id, gpus):
                    self.stats.launched += 1
            except NoFreePort as err:  # ports are disjoint per host: a configuration matter
                log.error("%s: no master port free (%s); the job stays queued here", task_id, err)
        except Exception:
            log.exception("%s: taking the claimed job failed", task_id)
        finally:
            self.claiming.pop(task_id, None)
            self.wake()
            self.publication.reopen()  # held while claimed: the local attempt is settled

    def _give_back(self, record: JobRecord, attempt: int, err: DpdError) -> JobRecord:
        """T4a, or T4c when the paths the job names are missing here and every other live
        node that could run it declined it too (FLEET.md §9.2 step 5): it then fails with
        the 422 a submission on such a host would have had, instead of being claimed and
        declined around the fleet every minute for good."""
        now = time.time()
        declined = decline(record, self.me, attempt, err.message, now)
        if not isinstance(err, ValidationFailed):
            return declined
        if not declined_by_all(declined, self.facts(), self.peers(), now):
            return declined
        error = {  # as a run's failure reads (cause, reason), with the 422's field errors
            "cause": "missing_file",
            "reason": "every host that could run it declined: "
            + "; ".join(f"{d.node}: {d.reason}" for d in declined.declined),
            "code": ValidationFailed.code,
            "errors": [e.as_dict() for e in err.errors],
        }
        return decline_everywhere(record, self.me, attempt, err.message, now, error)

    async def _seq_base(self, record: JobRecord) -> int:
        """The seq this host's events of ``record`` number on from (FLEET.md §9.7): 0 for a
        first attempt; for a later one, the highest seq the fleet has used (the record's,
        or the last in stream ``DPD``), so that this host's events are neither dropped by
        the stream as duplicates of another host's ``Nats-Msg-Id`` nor mistaken for them.
        No answer from the stream raises: the claim is then taken again later."""
        if record.attempt <= 1:
            return 0
        assert self.nc is not None
        prefix = self.config.nats.subject_prefix
        published = await fleet_views.last_seq(self.nc, prefix, record.task_id, STREAM_READ)
        return max(record.seq, published)

    def _materialize(self, record: JobRecord, base: int = 0) -> list[dict[str, Any] | StatusEvent]:
        """The job directory the supervisor runs, built with the store's own machinery
        (state.json ``queued`` with ``fleet.attempt``, the first event, numbered after
        ``base``); the events to announce (none if the directory existed). Blocking."""
        if record.spec is None:
            raise InsufficientResources("the record has no spec (a tombstone)")
        missing = recheck_paths(JobSpec.from_dict(record.spec), self.config.daemon.data_roots)
        if missing:  # T4a before anything is built here (FLEET.md §9.2 step 5)
            where = "; ".join(f"{e.field}: {e.message}" for e in missing)
            raise ValidationFailed(missing, f"not readable on {self.node}: {where}")
        task_id = record.task_id
        output_dir = Path(self.store.output_root) / task_id
        spec = runnable_spec(record.spec, output_dir)  # T11, T12
        resume_run = resumed_run(spec, output_dir)
        if resume_run is not None:  # a stale save_quit would end the resumed run at once
            outputs.remove_signal_files(output_dir / resume_run)
        events: list[dict[str, Any] | StatusEvent] = []
        if not self.store.exists(task_id):
            ident = record.submitted_by.identity
            submission = Submission(
                record.submitted_by.source, ident.name, ident.sha256, ident.uid, ident.inode,
                ident.mtime_ns,
            )  # fmt: skip
            self.store.create_job(JobSpec.from_dict(spec), submission, first_seq=base + 1)
            events.extend(self.store.read_events(task_id))
        elif _ended_before(self.store.get(task_id), record.attempt):
            # T11/T12: a new attempt of a job that ended here, as the single-host resume;
            # the new attempt in the same write (a crash must not leave it queued unclaimed)
            announce = {"resume_from": resume_run} if resume_run else None
            stage = {"attempt": record.attempt, "stage": "claimed", "node": self.node}
            self.store.set_next_seq(task_id, base + 1)  # other hosts' attempts came between
            events.append(self.store.transition(
                task_id, TERMINAL, Status.QUEUED, announce=announce, resume_run=resume_run,
                error=None, **{FLEET: stage},
            ))  # fmt: skip
        elif _active_here(self.store.get(task_id)) or self.store.get(task_id)["status"] != "queued":
            raise Conflict(f"task {task_id} already has a local job here")
        self._set_stage(task_id, record.attempt, "claimed")
        return events

    def _local_blocks(self, task_id: str, attempt: int) -> bool:
        """A local job of the task that a claim of ``attempt`` cannot take: one queued
        here is that claim's; one that ended here under an earlier attempt is resumed."""
        if not self.store.exists(task_id):
            return False
        state = self.store.get(task_id)
        return state["status"] != "queued" and not _ended_before(state, attempt)

    def _set_stage(self, task_id: str, attempt: int, stage: str) -> None:
        self.store.update_state(
            task_id, {FLEET: {"attempt": attempt, "stage": stage, "node": self.node}}
        )

    async def _fence(self, task_id: str, attempt: int) -> bool:
        """T3 claimed → starting, or a leader read showing it passed already (our own
        earlier T3 whose answer was lost). Refused (cancelled, superseded): the local job is
        stopped and nothing is spawned. No answer: raises, nothing is decided (the
        self-audit takes the claim again)."""
        assert self.jobs is not None
        change: Change = lambda r: start(r, self.me, attempt, time.time())  # noqa: E731
        for _ in range(FENCE_TRIES):
            try:
                await self._cas(task_id, change)
                return True
            except (TransitionRefused, CasConflict) as err:
                refused = err
            # the CAS decides on a direct get, which may be stale: ask the leader
            current = await self.jobs.leader_get(enc(task_id))
            now = JobRecord.from_json(current.value) if current and current.present else None
            if now is None or now.attempt != attempt or now.owner is None:
                break
            if may_spawn(now, self.me, attempt):
                return True
            mine = now.owner.node == self.node and now.owner.boot_id == self.me.boot_id
            if mine and now.state is JobState.CLAIMED:  # our claim, read stale: T3 again
                change = lambda r: start(r, self.me, attempt, time.time())  # noqa: E731
            elif mine and now.state is JobState.STARTING:  # phase 3: a restart (§9.5)
                change = lambda r: refence(r, self.me, attempt, time.time())  # noqa: E731
            else:
                break
            await asyncio.sleep(FENCE_PAUSE)
        log.warning("%s: fence refused (%s); abandoning attempt %d", task_id, refused, attempt)
        await self.publication.mute(task_id)  # §9.7: a superseded claim's events stay here
        with contextlib.suppress(Conflict):
            await asyncio.to_thread(
                self.store.transition, task_id, Status.QUEUED, Status.STOPPED,
                error={"reason": "superseded", "message": "another attempt owns this job"},
                stopped_at=utc_now(), ended_at=utc_now(),
            )  # fmt: skip
        return False

    async def _cas(self, task_id: str, change: Change) -> JobRecord:
        assert self.jobs is not None

        def fn(entry: Entry | None) -> bytes | None:
            if entry is None:
                raise TransitionRefused("CAS", "the record is gone")
            return change(JobRecord.from_json(entry.value)).to_json()

        result = await self.jobs.cas_update(enc(task_id), fn)
        assert result.entry is not None
        return JobRecord.from_json(result.entry.value)

    # ---------------------------------------------------------------- outbox

    async def apply_outbox(self) -> None:
        """Bring each record this node owns in line with its local job's status."""
        table = self.job_table
        if table is None:
            return
        local = self.store.states(lambda s: isinstance(s.get(FLEET), dict))
        for state in local:
            task_id = state["task_id"]
            fleet = state[FLEET]
            if fleet.get("stage") not in ("starting", "running"):
                continue
            seen = table.get(enc(task_id))
            if seen is None:
                continue
            try:
                record = JobRecord.from_json(seen.entry.value)
            except RecordError:
                continue
            attempt = int(fleet["attempt"])
            if self._outbox_change(record, state, attempt) is None:
                continue  # the record (as watched) already shows it
            if state["status"] in _TERMINAL_LOCAL:
                crash_point("terminal_kv")  # FL6: ended here, the record not yet terminal
            try:
                await self._apply(task_id, state, attempt)
                self.stats.outbox_applied += 1
            except (TransitionRefused, CasConflict) as err:
                log.warning("%s: status not applied to the fleet record (%s)", task_id, err)

    async def _apply(self, task_id: str, state: dict[str, Any], attempt: int) -> None:
        """One outbox entry, decided again on the record the CAS reads (not the table's)."""
        assert self.jobs is not None

        def fn(entry: Entry | None) -> bytes | None:
            if entry is None:
                raise TransitionRefused("outbox", "the record is gone")
            record = JobRecord.from_json(entry.value)
            change = self._outbox_change(record, state, attempt)
            return None if change is None else change(record).to_json()

        await self.jobs.cas_update(enc(task_id), fn)

    def _outbox_change(
        self, record: JobRecord, state: dict[str, Any], attempt: int
    ) -> Change | None:
        if record.attempt != attempt or record.state not in SPAWNABLE:
            return None
        owner = record.owner
        if owner is None or owner.node != self.node:
            return None
        status = state["status"]
        now = time.time()
        if end_unrecorded(state) and rebooted_since(record, self.me):  # phase 3: T10a+T11
            return self._after_reboot
        if status == Status.RUNNING.value and record.state is JobState.STARTING:
            port = state.get("master_port")
            return lambda r: mark_running(r, self.me, attempt, now, port=port)
        target = _TERMINAL_LOCAL.get(status)
        if target is not None:
            error = state.get("error")
            if error is not None and not isinstance(error, dict):
                error = {"message": str(error)}
            return lambda r: finish(r, self.me, attempt, target, now, error=error)
        return None

    # ------------------------------------------------- phase 3 (FLEET.md §9.3, §9.5)

    def policy(self) -> Policy:
        f = self.fleet
        ttl = self.heartbeat_ttl()
        return Policy(ttl, f.lost_after, f.fence_margin, f.max_attempts, f.requeue_on_reboot)

    def heartbeat_ttl(self) -> float:
        """The effective ``node_ttl``: the alive bucket's ``max_age`` (§6.3)."""
        return self.alive.effective_max_age if self.alive is not None else self.fleet.node_ttl

    def _own_record(self) -> NodeRecord | None:
        seen = self.node_table.get(node_key(self.node)) if self.node_table else None
        if seen is None:
            return None
        try:
            return NodeRecord.from_json(seen.entry.value)
        except RecordError:
            return None

    def _draining(self) -> bool:
        own = self._own_record()
        return own is not None and own.draining

    def _down(self) -> bool:
        own = self._own_record()
        return own is not None and own.down is not None

    async def _reconcile_at_start(self) -> None:
        """§9.5 before this node places anything: every local fleet job and every record
        it owns, read from the stream leader. NATS trouble: the self-audit does it later."""
        try:
            steps = await fleet_audit.audit(self, startup=True)
        except (Unavailable, OutcomeUnknown, *TRANSIENT) as err:
            log.warning("fleet: reconciliation waits for NATS (%r)", err)
            return
        except Exception:  # the self-audit tries again; the agent must not stop for it
            log.exception("fleet: reconciliation at start failed; the self-audit retries")
            return
        for task_id, step in sorted(steps.items()):
            log.info("fleet reconciliation: %s → %s", task_id, step.value)

    async def _audit_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self._last_audit < max(PASS_PERIOD, self.heartbeat_ttl()):
            return
        self._last_audit = now
        self.audits += 1
        await fleet_audit.audit(self)

    _last_audit: float = 0.0

    def take_again(self, record: JobRecord) -> bool:
        """Take this node's claim again after a restart (materialise if needed, fence or
        re-fence, launch); False while its GPUs are busy here."""
        owner = record.owner
        assert owner is not None
        busy = self._claimed_gpus() | {
            v.gpu_id for v in self.supervisor.gpu_views() if v.status != AVAILABLE
        }
        if busy & set(owner.gpus) or record.task_id in self.claiming:
            return False
        self.claiming[record.task_id] = owner.gpus
        task = asyncio.create_task(self._take(record, owner.gpus), name=f"take {record.task_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _after_reboot(self, record: JobRecord) -> JobRecord:
        """T10(a) by the owner itself, back on a new boot, then T11 per policy (§9.5)."""
        me = AliveRead(True, self.me.boot_id, self.me.machine_id)
        new = reaper_change(record, me, None, 0.0, self.policy(), self.node, time.time())
        if new is None:
            raise TransitionRefused("T10a by the owner", "the record does not allow it")
        log.warning("%s: its run ended with this host's reboot (attempt %d); now %s",
                    record.task_id, record.attempt, new.state.value)  # fmt: skip
        return new

    async def _reaper_loop(self) -> None:
        assert self.jobs and self.alive and self.job_table and self.alive_table
        assert self.node_table is not None
        self.reaper = Reaper(
            self.node, self.jobs, self.alive, self.job_table, self.alive_table,
            self.node_table, self.policy(), self.fleet.heartbeat_interval,
            seq_floor=self.seq_floor,
        )  # fmt: skip
        await run_reaper(self.reaper, lambda: self.connected)

    async def drain(self, node: str, on: bool) -> NodeRecord:
        if self.nodes is None or not self.connected:
            raise fleet_submit.QueueUnavailable("not connected to any NATS server")
        try:
            done = await fleet_operator.drain(self.nodes, node, on)
        except (KvError, *TRANSIENT) as err:
            raise fleet_submit.QueueUnavailable(f"the registry did not answer ({err!r})") from err
        self.wake()
        return done

    async def node_down(self, node: str, by: str, reason: str) -> NodeRecord:
        if self.nodes is None or self.alive is None or not self.connected:
            raise fleet_submit.QueueUnavailable("not connected to any NATS server")
        try:
            done = await fleet_operator.node_down(
                self.nodes, self.alive, node, by, reason, time.time()
            )
        except (KvError, *TRANSIENT) as err:
            raise fleet_submit.QueueUnavailable(f"the registry did not answer ({err!r})") from err
        self.wake()
        return done

    # ------------------------------------------------- phase 4 (FLEET.md §9.4)

    async def _fence_loop(self) -> None:
        """Requeue mode: every ``fence_check`` s, once the last successful heartbeat was sent
        more than ``fence_after`` s ago (CLOCK_BOOTTIME), stop every fleet run owned here
        (staged; each ends failed ``fenced``), before any reaper may requeue it."""
        self._fencing: set[str] = set()  # runs fenced, while they are still running
        while True:
            await asyncio.sleep(self.fleet.fence_check)
            beat = self.heartbeat
            last_ok = beat.last_ok if beat is not None else None
            if last_ok is None:  # a restarted daemon before its first beat: the last lease
                last_ok = await asyncio.to_thread(read_lease, self.config.daemon.state_dir)
            self._fencing &= set(self.supervisor.running)  # each run is fenced once
            if not fleet_fence.lease_ran_out(last_ok, boottime(), self.fleet.fence_after):
                continue
            states = self.store.states(lambda s: isinstance(s.get(FLEET), dict))
            for task_id in fleet_fence.to_fence(states, self.supervisor.running):
                if task_id not in self._fencing:
                    log.warning("%s: fleet lease ran out; fencing its run", task_id)
                    self._fencing.add(task_id)
                    task = asyncio.create_task(self._fence_run(task_id), name=f"fence {task_id}")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _fence_run(self, task_id: str) -> None:
        try:
            await self.supervisor.fence(task_id)
        except Exception:
            log.exception("%s: fencing its run failed", task_id)

    def held_jobs(self) -> dict[str, list[tuple[str, str]]]:
        """node → (task, lost since) of the jobs shown ``node_state: lost`` on it."""
        out: dict[str, list[tuple[str, str]]] = {}
        for record, _ in self.records():
            if record.lost is not None and not record.terminal:
                out.setdefault(record.lost.node, []).append((record.task_id, record.lost.since))
        return out


def _ended_before(state: dict[str, Any], attempt: int) -> bool:
    """The local job is a fleet job that ended here under an attempt before ``attempt``."""
    fleet = state.get(FLEET)
    ended = state.get("status") in _TERMINAL_LOCAL
    return ended and isinstance(fleet, dict) and int(fleet.get("attempt", 0)) < attempt


def _active_here(state: dict[str, Any]) -> bool:
    return state.get("status") in (Status.RUNNING.value, Status.STOPPING.value)
