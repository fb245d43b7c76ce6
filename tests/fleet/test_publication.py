"""The agent's side of the publication gate (FLEET.md §9.7), without a server: the facts it
gathers for the pure decision (a real spool, a watched table filled by hand, the heartbeat's
``last_ok`` on the real BOOTTIME), the confirmation after a renewal, and muting through a
real NATS bridge's JetStream publisher into its acked.json."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any, cast

from dpd.config import NatsConfig
from dpd.events.acks import acks_path
from dpd.events.bus import EventBus
from dpd.events.jetstream import HOLD, PUBLISH, Gating
from dpd.events.nats_bridge import NatsBridge
from dpd.fleet.agent import FleetAgent
from dpd.fleet.kv import Entry, Operation
from dpd.fleet.publication import Publication
from dpd.fleet.records import JobRecord, JobState, enc
from dpd.fleet.registry import boottime
from dpd.fleet.table import TableEntry, WatchedTable
from dpd.spool.store import JobStore
from tests.fleet.test_reconcile import BEFORE, C, job
from tests.jobfiles import add_job, new_store


class Beat:
    def __init__(self, last_ok: float | None) -> None:
        self.last_ok = last_ok


class Jobs:
    """The bucket's leader answer for its last revision."""

    def __init__(self, revision: int) -> None:
        self.revision = revision

    async def last_revision(self) -> int:
        return self.revision


@dataclasses.dataclass
class Agent:
    """What ``Publication`` reads of a ``FleetAgent``."""

    store: JobStore
    job_table: WatchedTable
    heartbeat: Beat
    jobs: Jobs
    node: str = "b"
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    claiming: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    def heartbeat_ttl(self) -> float:
        return 3.0


def show(table: WatchedTable, record: JobRecord, revision: int) -> None:
    key = enc(record.task_id)
    entry = Entry(key, record.to_json(), revision, Operation.PUT)
    table.entries[key] = TableEntry(entry, 0.0)


def spool(root: Path) -> JobStore:
    store, data = new_store(root)
    for task_id in ("t1", "local"):
        add_job(store, data, task_id)
    store.update_state("t1", {"fleet": {"attempt": 1, "stage": "running", "node": "b"}})
    return store


async def setting(tmp_path: Path) -> tuple[Agent, Publication, NatsBridge]:
    store = await asyncio.to_thread(spool, tmp_path)
    table = WatchedTable(cast(Any, None))
    agent = Agent(store, table, Beat(boottime()), Jobs(0))
    agent.ready.set()
    publication = Publication(cast(FleetAgent, agent))
    config = dataclasses.replace(NatsConfig(), url="nats://127.0.0.1:1", jetstream=True)
    bridge = NatsBridge(config, EventBus(store, "b"), store, "b", tmp_path / "state")
    assert bridge.jetstream is not None
    await bridge.jetstream.load()
    publication.attach(bridge)
    assert bridge.jetstream.gate == publication.gate
    return agent, publication, bridge


async def test_fleet_events_wait_for_a_renewal_the_table_was_confirmed_after(
    tmp_path: Path,
) -> None:
    agent, publication, _ = await setting(tmp_path)
    show(agent.job_table, job(JobState.RUNNING, by=BEFORE), 7)
    assert publication.gate("local") == PUBLISH  # no fleet section: never gated
    assert publication.gate("t1") == HOLD  # no confirmation yet
    agent.jobs.revision = 9
    confirming = asyncio.create_task(publication.confirm())
    await asyncio.sleep(0.05)
    assert not confirming.done()  # the table has not applied revision 9 yet
    show(agent.job_table, job(JobState.RUNNING, by=BEFORE), 9)
    agent.job_table._advance(9)
    assert await confirming is True
    assert publication.confirmed == agent.heartbeat.last_ok
    assert publication.gate("t1") == PUBLISH
    agent.heartbeat.last_ok = publication.confirmed = boottime() - 3.5  # a SIGSTOP later
    assert publication.gate("t1") == HOLD
    agent.ready.clear()  # a restart before its reconciliation
    agent.heartbeat.last_ok = publication.confirmed = boottime()
    assert publication.gate("t1") == HOLD


async def test_a_later_attempt_in_the_table_mutes_the_task_unless_it_is_being_taken_here(
    tmp_path: Path,
) -> None:
    agent, publication, bridge = await setting(tmp_path)
    show(agent.job_table, dataclasses.replace(job(JobState.RUNNING, by=C), attempt=2), 5)
    agent.claiming["t1"] = (0,)  # this node claims attempt 2 right now: hold, not mute
    assert publication.gate("t1") == HOLD
    del agent.claiming["t1"]
    assert publication.gate("t1") == Gating(False, mute=1)  # even with no lease at all
    agent.heartbeat.last_ok = None
    assert publication.gate("t1") == Gating(False, mute=1)
    assert bridge.muted("t1") is None  # the publisher mutes on this answer, not the gate


async def test_mute_is_on_disk_before_it_returns_and_a_later_attempt_here_unmutes(
    tmp_path: Path,
) -> None:
    agent, publication, bridge = await setting(tmp_path)
    await publication.mute("t1")
    record = json.loads(acks_path(tmp_path / "state").read_text())
    assert record["muted"] == {"t1": 1}
    await publication.mute("local")  # not a fleet task: nothing to mute
    assert bridge.muted("local") is None
    await publication.unmute_for("t1", 1)  # the muted attempt itself: stays muted
    assert bridge.muted("t1") == 1
    after = agent.store.last_event_seq("t1")
    await publication.unmute_for("t1", 3)  # attempt 3 materialises here
    assert bridge.muted("t1") is None
    js = bridge.jetstream
    assert js is not None and js.window.watermark("t1") == after
    assert "muted" not in json.loads(acks_path(tmp_path / "state").read_text())
