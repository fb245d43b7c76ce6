"""The bridge in JetStream mode against a real nats-server with a file store: stream DPD,
acked publishes with Nats-Msg-Id, the ack record on disk, and exactly-once delivery to a
durable consumer through a nats-server kill -9 and through a daemon crash."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats

from dpd.events.acks import acks_path
from tests.events.harness import (
    Outlet,
    consume_all,
    durable_consumer,
    nats_config,
    wait_until,
)
from tests.events.nats_server import NatsServer


def seqs_by_task(received: list[dict]) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for payload in received:
        found.setdefault(payload["task_id"], []).append(payload["seq"])
    return found


def assert_exactly_once(outlet: Outlet, received: list[dict], task_ids: list[str]) -> None:
    found = seqs_by_task(received)
    for task_id in task_ids:
        on_disk = [e["seq"] for e in outlet.disk_events(task_id)]
        assert on_disk == list(range(1, len(on_disk) + 1))
        assert sorted(found.get(task_id, [])) == on_disk, task_id  # each once, none missing
    by_key = {(p["task_id"], p["seq"]): p for p in received}
    for task_id in task_ids:
        for event in outlet.disk_events(task_id):
            assert by_key[(task_id, event["seq"])] == event  # the very record on disk


async def emit_steps(outlet: Outlet, task_id: str, steps: range, pause: float = 0.0) -> None:
    for step in steps:
        outlet.bus.emit("jobs", task_id, "metrics", {"metric": "loss", "step": step})
        outlet.bus.emit("jobs", task_id, "log", {"lines": [f"step {step}"], "offset": step})
        if pause:
            await asyncio.sleep(pause)


async def ready_outlet(tmp_path: Path, url: str, consumer: bool = True) -> Outlet:
    """A JetStream outlet whose stream exists, with the durable consumer unless told not to."""
    outlet = await Outlet(tmp_path, nats_config(url, jetstream=True)).start()
    await wait_until(lambda: outlet.bridge.status()["stream_ready"])
    if consumer:
        await durable_consumer(url)
    return outlet


async def test_stream_is_created_and_messages_carry_their_id(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = nats_config(nats_server.url, jetstream=True, stream_max_age=3600)
    outlet = await Outlet(tmp_path, config).start()
    await wait_until(lambda: outlet.bridge.status()["stream_ready"])
    outlet.new_job("a.b")
    await emit_steps(outlet, "a.b", range(1, 51))
    await wait_until(lambda: outlet.bridge.status()["acked"] == 101)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("DPD")
        assert info.config.subjects == ["dpd.>"]
        assert getattr(info.config.storage, "value", info.config.storage) == "file"
        assert info.config.max_age == 3600
        assert info.state.messages == 101
        message = await js.get_last_msg("DPD", "dpd.jobs.a~b.log")
        assert message.headers["Nats-Msg-Id"] == "a.b:101"
    finally:
        await nc.close()
    status = outlet.bridge.status()
    assert status["acked_seq_lag"] == 0 and status["duplicates"] == 0
    record = acks_path(tmp_path / "state")
    await wait_until(lambda: record.exists() and json.loads(record.read_text())["tasks"])
    assert json.loads(record.read_text())["tasks"] == {"a.b": 101}
    await outlet.stop()


async def test_nats_killed_mid_stream_every_seq_arrives_exactly_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    outlet = await ready_outlet(tmp_path, nats_server.url)
    for task_id in ("one", "two"):
        outlet.new_job(task_id)
    producer = asyncio.gather(
        emit_steps(outlet, "one", range(1, 401), pause=0.002),
        emit_steps(outlet, "two", range(1, 401), pause=0.002),
    )
    await wait_until(lambda: outlet.bridge.status()["acked"] > 100)
    nats_server.kill()  # in the middle: some publishes in flight, some in kernel buffers
    await wait_until(lambda: not outlet.bridge.connected)
    at_kill = outlet.store.last_event_seq("one")  # the producer goes on while it is down
    await wait_until(lambda: outlet.store.last_event_seq("one") >= at_kill + 40)
    nats_server.start()
    await producer
    await wait_until(lambda: outlet.bridge.status()["acked_seq_lag"] == 0)
    status = outlet.bridge.status()
    assert status["disconnects"] >= 1 and status["republished"] > 0
    received = await consume_all(nats_server.url)
    assert_exactly_once(outlet, received, ["one", "two"])
    await outlet.stop()


async def test_daemon_crash_republishes_what_was_not_acked(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    outlet = await ready_outlet(tmp_path, nats_server.url)
    outlet.new_job("t")
    await emit_steps(outlet, "t", range(1, 301))
    await wait_until(lambda: outlet.bridge.status()["acked"] > 50)
    await outlet.crash()  # no drain: acks in flight, acked.json behind, queue lost
    # while the daemon is down, more happened on disk (the trainer kept running)
    for step in range(301, 311):
        data = {"metric": "loss", "step": step}
        await asyncio.to_thread(outlet.store.append_event, "t", "metrics", data)
    await outlet.start()
    await wait_until(lambda: outlet.bridge.status()["acked_seq_lag"] == 0)
    assert outlet.bridge.status()["republished"] > 0
    received = await consume_all(nats_server.url)
    assert_exactly_once(outlet, received, ["t"])
    await outlet.stop()


async def test_daemon_starting_while_nats_is_down_catches_up_later(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    outlet = await ready_outlet(tmp_path, nats_server.url)
    outlet.new_job("t")
    await outlet.stop()
    nats_server.kill()
    await outlet.crash()
    await outlet.start()
    await emit_steps(outlet, "t", range(1, 101))
    await wait_until(lambda: outlet.store.last_event_seq("t") == 201)
    assert outlet.bridge.status()["connected"] is False
    nats_server.start()
    await wait_until(lambda: outlet.bridge.status()["acked_seq_lag"] == 0)
    received = await consume_all(nats_server.url)
    assert_exactly_once(outlet, received, ["t"])
    await outlet.stop()


async def test_acks_are_saved_in_batches_not_one_write_per_ack(
    tmp_path: Path, nats_server: NatsServer, monkeypatch
) -> None:
    from dpd.events import jetstream

    writes: list[dict[str, int]] = []
    real_save = jetstream.save_watermarks

    def counting_save(path: Path, marks: dict[str, int], muted: dict[str, int]) -> None:
        writes.append(marks)
        real_save(path, marks, muted)

    monkeypatch.setattr(jetstream, "save_watermarks", counting_save)
    outlet = await ready_outlet(tmp_path, nats_server.url, consumer=False)
    outlet.new_job("t")
    await emit_steps(outlet, "t", range(1, 1001))
    await wait_until(lambda: outlet.bridge.status()["acked_seq_lag"] == 0)
    await outlet.stop()
    assert writes[-1] == {"t": 2001}
    assert len(writes) < 50  # 2001 acks


async def test_a_lost_ack_record_republishes_everything_and_the_stream_drops_it(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    outlet = await ready_outlet(tmp_path, nats_server.url)
    outlet.new_job("t")
    await emit_steps(outlet, "t", range(1, 2001))  # more than one window of publishes
    await wait_until(lambda: outlet.bridge.status()["acked_seq_lag"] == 0, timeout=30)
    await outlet.stop()
    acks_path(tmp_path / "state").unlink()
    await outlet.crash()
    await outlet.start()
    await wait_until(lambda: outlet.bridge.status()["acked_seq_lag"] == 0, timeout=30)
    status = outlet.bridge.status()
    assert status["republished"] == status["duplicates"] == 4001
    assert status["failed"] == 0 and status["in_flight"] == 0
    received = await consume_all(nats_server.url)
    assert_exactly_once(outlet, received, ["t"])
    await outlet.stop()


async def test_a_fleet_tasks_events_that_go_on_after_other_hosts_seqs_are_all_published(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """FLEET.md §9.7: a host that takes over a fleet job numbers its events on from the seqs
    other hosts published (its file starts at 41), and a later attempt back on this host
    jumps again (to 90). Every event on disk reaches the stream under its own seq, the
    watermark ends at the last one, and nothing is left to catch up; a restart publishes
    nothing twice."""
    outlet = await ready_outlet(tmp_path, nats_server.url)
    outlet.new_job("moved", first_seq=41)
    await emit_steps(outlet, "moved", range(1, 11))
    await wait_until(lambda: outlet.store.last_event_seq("moved") == 61)
    await asyncio.to_thread(outlet.store.set_next_seq, "moved", 90)
    await emit_steps(outlet, "moved", range(11, 16))
    await wait_until(lambda: outlet.store.last_event_seq("moved") == 99)
    on_disk = [e["seq"] for e in outlet.disk_events("moved")]
    assert on_disk == [*range(41, 62), *range(90, 100)]
    await wait_until(lambda: outlet.bridge.status()["acked"] == len(on_disk))
    await wait_until(lambda: outlet.bridge.status()["acked_seq_lag"] == 0)
    received = await consume_all(nats_server.url)
    assert sorted(p["seq"] for p in received) == on_disk
    by_seq = {p["seq"]: p for p in received}
    assert all(by_seq[e["seq"]] == e for e in outlet.disk_events("moved"))
    await outlet.stop()
    record = json.loads(acks_path(tmp_path / "state").read_text())
    assert record["tasks"] == {"moved": 99}
    await outlet.crash()
    await outlet.start()  # the watermark covers the jumps: nothing is sent again
    await wait_until(lambda: outlet.bridge.status()["stream_ready"])
    await asyncio.sleep(0.5)
    assert outlet.bridge.status()["published"] == 0
    await outlet.stop()
