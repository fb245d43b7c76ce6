"""Who is in the fleet and who is alive (FLEET.md §7.2, §7.3, §9.3).

A node registers its static facts in ``dpd_nodes`` and heartbeats into ``dpd_alive`` (a
bucket whose ``max_age`` is the ``node_ttl``): the key disappears when the heartbeats stop.

What it guarantees:
- A node name is bound to one host by its machine id: ``register`` and the heartbeat refuse
  (``NameTaken``) when the registry entry or a fresh alive key carries another machine id
  — two hosts configured with one name — even while the first host is partitioned.
- ``last_ok`` is the CLOCK_BOOTTIME at which the last *successful* heartbeat was sent (not
  when its ack arrived: a stalled loop must not stretch the lease, §9.4); it is written to
  the local lease file after each success, for the shim's fence (phase 4).
- The reaper's verdict (``ReaperView``) is pure and driven by an injected monotonic clock: a
  node is only *suspected* from the watched table (key gone, or no new revision for
  ``node_ttl + heartbeat_interval``), and judged lost or rebooted only from a leader read;
  it judges nobody before it has itself been connected for ``node_ttl``.

What it does not trust: the watched table (a hint, §3.4), the wall clock of any host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Final

from dpd.fleet.kv import (
    TRANSIENT,
    Bucket,
    Entry,
    KeyExists,
    KvError,
    OutcomeUnknown,
    Unavailable,
    WrongLast,
)
from dpd.fleet.records import AliveRecord, FreeGpu, NodeRecord, RecordError, iso, node_key
from dpd.fleet.table import TableEntry
from dpd.fleet.transitions import Actor, AliveRead
from dpd.spool.atomic import write_atomic
from dpd.supervisor import lease
from dpd.supervisor.proctree import boot_id as kernel_boot_id

log = logging.getLogger("dpd.fleet.registry")

MACHINE_ID_PATHS: Final = ("/etc/machine-id", "/var/lib/dbus/machine-id")
TEST_BOOT_ID: Final = "DPD_TEST_BOOT_ID"  # test-only: hosts sharing one kernel (§13.2)
TEST_MACHINE_ID: Final = "DPD_TEST_MACHINE_ID"
LEASE_FILE: Final = lease.LEASE_FILE


class NameTaken(Exception):
    """Another host (another machine id) uses this node name: a configuration error."""


def boottime() -> float:
    """CLOCK_BOOTTIME: monotonic, and it keeps counting while the host is suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def host_boot_id(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(TEST_BOOT_ID) or kernel_boot_id()


def host_machine_id(environ: Mapping[str, str] | None = None) -> str:
    """``/etc/machine-id``: stable across reboots, different between hosts."""
    environ = os.environ if environ is None else environ
    if environ.get(TEST_MACHINE_ID):
        return environ[TEST_MACHINE_ID]
    for path in MACHINE_ID_PATHS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def this_daemon(node: str, environ: Mapping[str, str] | None = None) -> Actor:
    """This daemon instance: a fresh instance id for every start."""
    return Actor(node, uuid.uuid4().hex, host_boot_id(environ), host_machine_id(environ))


# ---------------------------------------------------------------------- lease file


def write_lease(state_dir: Path, last_ok: float) -> None:
    """The fence lease (§9.4): the BOOTTIME of the last successful heartbeat's send."""
    path = state_dir / LEASE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, f"{last_ok:.6f}\n".encode())


def read_lease(state_dir: Path) -> float | None:
    """The lease, or None when missing or unreadable (the shim treats that as expired)."""
    return lease.read(str(state_dir / LEASE_FILE))


# ---------------------------------------------------------------------- registration


def alive_read(entry: Entry | None) -> AliveRead:
    """A leader read of an alive key, as the transitions take it."""
    if entry is None or not entry.present:
        return AliveRead(False)
    try:
        alive = AliveRecord.from_json(entry.value)
    except RecordError:
        return AliveRead(False)
    return AliveRead(True, alive.boot_id, alive.machine_id)


async def register(nodes: Bucket, record: NodeRecord) -> int:
    """Create or update ``node.<name>`` (read from the leader). ``NameTaken`` when it is
    registered with another machine id; ``down`` is cleared by a registration on a new boot
    (§7.2), kept otherwise; ``draining`` is kept."""
    key = node_key(record.node)
    for _ in range(8):
        current = await nodes.leader_get(key)
        if current is None or not current.present:
            try:
                return await nodes.create_or_reclaim(key, record.to_json())
            except KeyExists:
                continue
        old = NodeRecord.from_json(current.value)
        if old.machine_id != record.machine_id:
            raise NameTaken(
                f"node name {record.node!r} is registered by machine {old.machine_id}; this is "
                f"{record.machine_id} (run `dpd fleet forget {record.node}` if that host is gone)"
            )
        down = old.down if old.boot_id == record.boot_id else None
        merged = dataclasses.replace(record, down=down, draining=old.draining)
        try:
            return await nodes.write(key, merged.to_json(), current.revision)
        except WrongLast:
            continue
    raise KvError(f"{key}: registration kept conflicting")


@dataclass(frozen=True)
class BeatFacts:
    """The changing part of one heartbeat: free GPUs, running tasks, claims in flight,
    draining, and the running tasks that may still write dataset caches."""

    free: tuple[FreeGpu, ...] = ()
    running: tuple[str, ...] = ()
    claiming: int = 0
    draining: bool = False
    caching: tuple[str, ...] = ()


@dataclass
class Heartbeat:
    """The heartbeat loop of one daemon instance (§9.3). ``snapshot`` supplies the
    changing part of each beat."""

    alive: Bucket
    me: Actor
    interval: float
    state_dir: Path | None = None
    snapshot: Callable[[], BeatFacts] = BeatFacts
    on_recreated: Callable[[], Awaitable[None] | None] | None = None
    on_renewed: Callable[[], None] | None = None  # after each success (the gate, §9.7)
    clock: Callable[[], float] = boottime
    last_ok: float | None = None  # BOOTTIME at which the last successful beat was sent
    beats: int = 0
    revision: int = 0

    @property
    def key(self) -> str:
        return node_key(self.me.node)

    def record(self) -> AliveRecord:
        at = iso(time.time())  # before the snapshot: a peer compares it with records'
        facts = self.snapshot()  # updated_at (placer.building_elsewhere)
        return AliveRecord(
            node=self.me.node,
            instance=self.me.instance,
            boot_id=self.me.boot_id,
            machine_id=self.me.machine_id,
            n=self.beats + 1,
            at=at,
            free=facts.free,
            running=facts.running,
            claiming=facts.claiming,
            draining=facts.draining,
            caching=facts.caching,
        )

    async def start(self) -> None:
        """Create the alive key, or take it over from this host's previous boot or daemon;
        ``NameTaken`` if a fresh key belongs to another machine."""
        sent = self.clock()
        current = await self.alive.leader_get(self.key)
        if current is not None and current.present:
            self._check_owner(current)
            self.revision = await self.alive.write(
                self.key, self.record().to_json(), current.revision
            )
        else:
            self.revision = await self.alive.create_or_reclaim(self.key, self.record().to_json())
        await self._succeeded(sent)

    def _check_owner(self, entry: Entry) -> None:
        try:
            other = AliveRecord.from_json(entry.value)
        except RecordError:
            return
        if other.machine_id != self.me.machine_id:
            raise NameTaken(
                f"node name {self.me.node!r} is heartbeating from machine {other.machine_id}; "
                f"this is {self.me.machine_id}"
            )

    async def _succeeded(self, sent: float) -> None:
        self.beats += 1
        self.last_ok = sent
        if self.state_dir is not None:  # fsync: off the loop
            await asyncio.to_thread(write_lease, self.state_dir, sent)
        if self.on_renewed is not None:
            self.on_renewed()

    async def beat(self) -> bool:
        """One heartbeat; True when it was stored. A conflict means the key expired (a pause,
        a partition) or was taken over: re-read and re-create, or ``NameTaken``."""
        sent = self.clock()
        try:
            try:
                revision = await self.alive.write(self.key, self.record().to_json(), self.revision)
            except WrongLast:
                return await self._recover(sent)
        except (Unavailable, OutcomeUnknown, KeyExists, *TRANSIENT) as err:
            log.warning("heartbeat not stored (%r); next try in %ss", err, self.interval)
            return False
        self.revision = revision
        await self._succeeded(sent)
        return True

    async def _recover(self, sent: float) -> bool:
        current = await self.alive.leader_get(self.key)
        if current is not None and current.present:
            self._check_owner(current)
            alive = AliveRecord.from_json(current.value)
            if alive.instance != self.me.instance:
                raise NameTaken(f"another dpd instance heartbeats as {self.me.node!r} here")
            self.revision = current.revision  # our own beat, whose reply was lost
            return False
        log.warning("alive key of %s had expired; re-creating it", self.me.node)
        self.revision = await self.alive.create_or_reclaim(self.key, self.record().to_json())
        await self._succeeded(sent)
        if self.on_recreated is not None:
            result = self.on_recreated()
            if result is not None:
                await result
        return True

    async def run(self) -> None:
        """Beat every ``interval`` until cancelled. A beat that is not stored (NATS
        unavailable, an election, a lost reply) is retried at the next interval;
        ``NameTaken`` propagates (fatal), as does a closed connection."""
        while True:
            started = time.monotonic()
            await self.beat()
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


# ------------------------------------------------------------------------- reaper


class Verdict(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"  # the table says so; a leader read must settle it
    LOST = "lost"  # a leader read found the alive key absent (or a marker)
    REBOOTED = "rebooted"  # the alive key names the node's machine with a new boot id
    NAME_CLASH = "name_clash"  # the alive key belongs to another machine (config error)


@dataclass
class ReaperView:
    """The reaper's judgement of other nodes (§9.3). Pure: times come from ``now``
    arguments on the caller's monotonic clock. ``lost_since[n]`` is the monotonic time of
    the first leader read that found ``n`` gone, reset when its key reappears; T10(b) waits
    are measured from it."""

    node_ttl: float
    heartbeat_interval: float
    connected_since: float | None = None
    lost_since: dict[str, float] = field(default_factory=dict)

    def connected(self, now: float) -> None:
        if self.connected_since is None:
            self.connected_since = now

    def disconnected(self) -> None:
        self.connected_since = None

    def may_judge(self, now: float) -> bool:
        """Only after this node has been connected for ``node_ttl``: right after an outage
        everyone's key may have expired while their hosts are fine."""
        return self.connected_since is not None and now - self.connected_since >= self.node_ttl

    def suspect(self, seen: TableEntry | None, now: float) -> Verdict:
        """From the watched table alone: SUSPECT when the key is gone or stale, else ALIVE."""
        if seen is None:
            return Verdict.SUSPECT
        if now - seen.seen_at > self.node_ttl + self.heartbeat_interval:
            return Verdict.SUSPECT
        return Verdict.ALIVE

    def settle(
        self, node: str, read: AliveRead, known: tuple[str, str] | None, now: float
    ) -> Verdict:
        """The verdict after a leader read of ``node``'s alive key. ``known``: the
        (machine id, boot id) the caller knows for it (a job owner's, or the registry's)."""
        if not read.present:
            self.lost_since.setdefault(node, now)
            return Verdict.LOST
        self.lost_since.pop(node, None)
        if known is None:
            return Verdict.ALIVE
        machine, boot = known
        if read.machine_id != machine:
            return Verdict.NAME_CLASH
        return Verdict.REBOOTED if read.boot_id != boot else Verdict.ALIVE

    def absent_for(self, node: str, now: float) -> float:
        """Seconds since the first confirmation that ``node`` is gone (0 if it is not)."""
        since = self.lost_since.get(node)
        return 0.0 if since is None else now - since


async def judge(
    view: ReaperView,
    seen: TableEntry | None,
    alive: Bucket,
    node: str,
    known: tuple[str, str] | None,
    now: float,
) -> Verdict:
    """One reaper look at ``node``: the table's hint, settled by a leader read when the
    table makes it suspect (or when ``node`` is already counted lost, so that its return is
    noticed even if the watcher missed it)."""
    if not view.may_judge(now):
        return Verdict.ALIVE
    if view.suspect(seen, now) is Verdict.ALIVE and node not in view.lost_since:
        return Verdict.ALIVE
    read = alive_read(await alive.leader_get(node_key(node)))
    return view.settle(node, read, known, now)
