"""The JetStream publisher's publication gate and muting (FLEET.md §9.7) against a real
nats-server: a held task waits on disk and goes out, in order and once, when reoffered; the
fast path and the audit leave it alone meanwhile (no busy loop); a muted task is never
published, also after a crash and restart, until a later attempt unmutes it; tasks the gate
lets through (and every task without a gate) are published as before."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

from dpd.events.acks import acks_path
from dpd.events.jetstream import HOLD, PUBLISH, Gating
from tests.events.harness import Outlet, consume_all, durable_consumer, nats_config, wait_until
from tests.events.nats_server import NatsServer
from tests.events.test_bridge_jetstream import assert_exactly_once, emit_steps, seqs_by_task


class Gate:
    """A gate the test sets per task; it counts how often the publisher asks."""

    def __init__(self) -> None:
        self.answers: dict[str, Gating] = {}
        self.asked: Counter[str] = Counter()

    def __call__(self, task_id: str) -> Gating:
        self.asked[task_id] += 1
        return self.answers.get(task_id, PUBLISH)


async def gated_outlet(tmp_path: Path, url: str, gate: Gate) -> Outlet:
    outlet = Outlet(tmp_path, nats_config(url, jetstream=True), audit_interval=0.05)
    outlet.bridge.set_gate(gate)
    await outlet.start()
    await wait_until(lambda: outlet.bridge.status()["stream_ready"])
    await durable_consumer(url)
    return outlet


def acked(outlet: Outlet, task_id: str) -> bool:
    js = outlet.bridge.jetstream
    assert js is not None
    return js.window.watermark(task_id) == outlet.store.last_event_seq(task_id)


async def test_a_held_task_waits_on_disk_and_goes_out_once_in_order_when_reoffered(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    gate = Gate()
    gate.answers["fleet"] = HOLD
    outlet = await gated_outlet(tmp_path, nats_server.url, gate)
    outlet.new_job("fleet")
    outlet.new_job("local")
    await emit_steps(outlet, "fleet", range(1, 101))
    await emit_steps(outlet, "local", range(1, 101))
    await wait_until(lambda: acked(outlet, "local"))
    await asyncio.sleep(0.5)  # ten audits: a held task must not be looked at again
    assert outlet.bridge.status()["held"] == 1
    assert gate.asked["fleet"] == 1, gate.asked  # asked once, then held: no busy loop
    assert outlet.bridge.status()["acked_seq_lag"] == 201  # held, not forgotten
    assert seqs_by_task(await consume_all(nats_server.url)).keys() == {"local"}
    outlet.bridge.reopen()  # the gate is asked again; still closed
    await wait_until(lambda: gate.asked["fleet"] == 2)
    assert outlet.bridge.status()["held"] == 1
    gate.answers["fleet"] = PUBLISH
    outlet.bridge.reopen()
    await wait_until(lambda: acked(outlet, "fleet"))
    assert outlet.bridge.status()["held"] == 0
    received = await consume_all(nats_server.url)
    assert_exactly_once(outlet, received, ["fleet"])
    await outlet.stop()


async def test_a_gate_closing_mid_run_holds_the_rest_of_the_task(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A lease running out while a task publishes: what follows waits on disk."""
    gate = Gate()
    outlet = await gated_outlet(tmp_path, nats_server.url, gate)
    outlet.new_job("t")
    await emit_steps(outlet, "t", range(1, 11))
    await wait_until(lambda: acked(outlet, "t"))
    before = outlet.store.last_event_seq("t")
    gate.answers["t"] = HOLD
    await emit_steps(outlet, "t", range(11, 21))
    await wait_until(lambda: outlet.bridge.status()["held"] == 1)
    await asyncio.sleep(0.3)
    published = sorted(seqs_by_task(await consume_all(nats_server.url))["t"])
    assert published == list(range(1, before + 1))
    gate.answers["t"] = PUBLISH
    outlet.bridge.reopen()
    await wait_until(lambda: acked(outlet, "t"))
    rest = sorted(seqs_by_task(await consume_all(nats_server.url))["t"])
    assert rest == list(range(before + 1, outlet.store.last_event_seq("t") + 1))
    await outlet.stop()


async def test_a_muted_task_is_never_published_again_even_after_a_crash_and_restart(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    gate = Gate()
    outlet = await gated_outlet(tmp_path, nats_server.url, gate)
    outlet.new_job("old")
    await emit_steps(outlet, "old", range(1, 6))
    await wait_until(lambda: acked(outlet, "old"))
    published = outlet.store.last_event_seq("old")
    gate.answers["old"] = Gating(False, mute=1)  # the gate finds attempt 1 superseded
    await emit_steps(outlet, "old", range(6, 11))
    record = acks_path(tmp_path / "state")
    await wait_until(
        lambda: record.exists() and json.loads(record.read_text()).get("muted") == {"old": 1}
    )
    on_disk = json.loads(record.read_text())
    assert on_disk["tasks"] == {"old": published}  # not forgotten: no republish from seq 1
    assert outlet.bridge.muted("old") == 1
    status = outlet.bridge.status()
    assert status["muted"] == 1 and status["held"] == 0 and status["acked_seq_lag"] == 0

    await outlet.crash()  # a restart: no gate yet (the fleet agent is not connected)
    outlet.new_job("other")
    await outlet.start()
    await emit_steps(outlet, "old", range(11, 16))  # the superseded run's last words
    await wait_until(lambda: acked(outlet, "other"))
    await asyncio.sleep(0.3)  # audits: the muted task stays out
    assert outlet.bridge.muted("old") == 1
    received = seqs_by_task(await consume_all(nats_server.url))
    assert sorted(received["old"]) == list(range(1, published + 1))
    assert received.keys() == {"old", "other"}
    await outlet.stop()


async def test_a_later_attempt_here_unmutes_and_publishes_only_its_own_events(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    gate = Gate()
    outlet = await gated_outlet(tmp_path, nats_server.url, gate)
    outlet.new_job("t")
    await outlet.bridge.mute("t", 1)
    await emit_steps(outlet, "t", range(1, 11))  # attempt 1's, superseded
    boundary = outlet.store.last_event_seq("t")
    await outlet.bridge.unmute("t", boundary)  # attempt 3 is claimed here
    assert outlet.bridge.muted("t") is None
    await emit_steps(outlet, "t", range(11, 21))
    await wait_until(lambda: acked(outlet, "t"))
    received = sorted(seqs_by_task(await consume_all(nats_server.url))["t"])
    assert received == list(range(boundary + 1, outlet.store.last_event_seq("t") + 1))
    record = json.loads(acks_path(tmp_path / "state").read_text())
    assert "muted" not in record
    await outlet.stop()
