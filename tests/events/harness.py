"""In-process pieces for bridge tests: a real JobStore and EventBus, the bridge under test,
and NATS subscribers (core and a durable JetStream consumer) that collect what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dpd.config import NatsConfig
from dpd.events.bus import EventBus
from dpd.events.nats_bridge import NatsBridge
from dpd.jobs.spec import validate_job
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission
from tests.jobfiles import job_document, make_data_root
from tests.waiting import wait_until


def make_store(root: Path) -> tuple[JobStore, Path]:
    layout = SpoolLayout(root / "spool")
    layout.ensure()
    store = JobStore(layout, root / "outputs", "test-node")
    store.load()
    return store, make_data_root(root / "data")


def create_job(store: JobStore, data_root: Path, task_id: str, first_seq: int = 1) -> None:
    spec = validate_job(job_document(data_root, task_id=task_id), data_roots=[data_root])
    store.create_job(spec, Submission("rest"), first_seq=first_seq)


class Outlet:
    """A store, a bus and a bridge running on the test's loop."""

    def __init__(self, root: Path, config: NatsConfig, **bridge_options: Any) -> None:
        self.root = root
        self.store, self.data_root = make_store(root)
        self.config = config
        self.bridge_options = {"ack_timeout": 1.0, "reconnect_wait": 0.05, "reconnect_max": 0.5}
        self.bridge_options.update(bridge_options)
        self.bus = EventBus(self.store, "test-node", progress_interval=0.25)
        self.bridge = self._new_bridge()
        self._tasks: list[asyncio.Task[Any]] = []

    def _new_bridge(self) -> NatsBridge:
        return NatsBridge(
            self.config,
            self.bus,
            self.store,
            "test-node",
            self.root / "state",
            **self.bridge_options,
        )

    async def start(self) -> Outlet:
        self._tasks = [
            asyncio.create_task(self.bus.run()),
            asyncio.create_task(self.bridge.run()),
        ]
        return self

    async def crash(self) -> None:
        """Lose the daemon's memory without a drain (what kill -9 leaves): a new store
        loaded from disk, a new bus, a new bridge."""
        await self.stop(drain=False)
        self.store = JobStore(self.store.layout, self.root / "outputs", "test-node")
        await asyncio.to_thread(self.store.load)  # as the daemon does at start
        self.bus = EventBus(self.store, "test-node", progress_interval=0.25)
        self.bridge = self._new_bridge()

    async def stop(self, drain: bool = True) -> None:
        if drain:
            await self.bus.drain(5)
            await self.bridge.drain(5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def new_job(self, task_id: str, first_seq: int = 1) -> None:
        create_job(self.store, self.data_root, task_id, first_seq)
        for event in self.store.read_events(task_id):
            self.bus.announce(event)

    def disk_events(self, task_id: str) -> list[dict[str, Any]]:
        return self.store.read_events(task_id)


def nats_config(url: str, jetstream: bool = False, **fields: Any) -> NatsConfig:
    return replace(NatsConfig(), url=url, jetstream=jetstream, **fields)


class Collector:
    """A core NATS subscriber keeping every payload it receives, with its subject."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.nc: NATS | None = None

    async def _on_message(self, msg: Msg) -> None:
        self.messages.append((msg.subject, json.loads(msg.data)))

    def payloads(self, task_id: str | None = None) -> list[dict[str, Any]]:
        return [p for _, p in self.messages if task_id is None or p.get("task_id") == task_id]


@contextlib.asynccontextmanager
async def collecting(url: str, subject: str = "dpd.>") -> AsyncIterator[Collector]:
    collector = Collector()
    collector.nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
    await collector.nc.subscribe(subject, cb=collector._on_message)
    await collector.nc.flush()
    try:
        yield collector
    finally:
        await collector.nc.close()


async def durable_consumer(url: str, name: str = "watcher") -> None:
    """Create a durable pull consumer on stream DPD (before anything is published)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await wait_stream(js)
        await js.pull_subscribe("dpd.jobs.>", durable=name, stream="DPD")
    finally:
        await nc.close()


async def wait_stream(js: Any) -> None:
    async def stream_exists() -> bool:
        try:
            await js.stream_info("DPD")
        except Exception:
            return False
        return True

    await wait_until(stream_exists, 8, interval=0.05, what="the DPD stream")


async def consume_all(
    url: str, name: str = "watcher", deliveries: set[int] | None = None
) -> list[dict[str, Any]]:
    """Everything the durable consumer has not acked yet, acked now. A redelivery by the
    server has a new consumer sequence and is kept: a duplicate would show."""
    nc = await nats.connect(url)
    received: list[dict[str, Any]] = []
    deliveries = set() if deliveries is None else deliveries  # across calls, if shared
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("dpd.jobs.>", durable=name, stream="DPD")
        while True:
            try:
                batch = await sub.fetch(500, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in batch:
                delivery = msg.metadata.sequence.consumer
                if delivery not in deliveries:  # nats-py can hand one delivery out twice
                    deliveries.add(delivery)
                    received.append(json.loads(msg.data))
                await msg.ack()
    finally:
        await nc.close()
    return received
