"""The bridge in core NATS mode against a real nats-server: subjects, payloads, GPU
snapshots, coalescing, reconnection, and a NATS that is away never blocking the bus."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from dpd.supervisor.gpus import GpuInfo
from tests.events.harness import Outlet, collecting, nats_config
from tests.events.nats_server import NatsServer, free_port
from tests.waiting import wait_until


def gpu(gpu_id: int) -> GpuInfo:
    return GpuInfo(gpu_id, "Simulated", 24576, 1024, 23552, 4, 10, 40, 100, 450)


async def test_every_event_arrives_on_its_subject_in_order(
    tmp_path: Path, core_nats_server: NatsServer
) -> None:
    outlet = await Outlet(tmp_path, nats_config(core_nats_server.url)).start()
    async with collecting(core_nats_server.url) as sub:
        await wait_until(lambda: outlet.bridge.connected)
        outlet.new_job("run.1")
        outlet.bus.emit("jobs", "run.1", "status", {"status": "running", "previous": "queued"})
        for step in range(1, 21):
            outlet.bus.emit("jobs", "run.1", "metrics", {"metric": "loss", "step": step})
        outlet.bus.emit("jobs", "run.1", "log", {"lines": ["a", "b", "c"], "offset": 6})
        outlet.bus.emit("jobs", "run.1", "status", {"status": "completed"})
        await wait_until(lambda: len(sub.payloads("run.1")) == 24)
        on_disk = outlet.disk_events("run.1")
        assert sub.payloads("run.1") == on_disk  # same events, same order, nothing added
        assert [p["seq"] for p in on_disk] == list(range(1, 25))
        subjects = {s for s, _ in sub.messages}
        assert subjects == {f"dpd.jobs.run~1.{k}" for k in ("status", "metrics", "log")}
        assert outlet.bridge.status()["published"] == 24
    await outlet.stop()


async def test_gpu_snapshots_and_other_scopes(tmp_path: Path, core_nats_server: NatsServer) -> None:
    outlet = await Outlet(tmp_path, nats_config(core_nats_server.url)).start()
    async with collecting(core_nats_server.url) as sub:
        await wait_until(lambda: outlet.bridge.connected)
        outlet.bridge.publish_gpus([gpu(0), gpu(1)])
        outlet.bus.emit("preprocess", "prep_1", "progress", {"percent": 50})
        outlet.bus.emit("models", "dl.7", "progress", {"bytes": 10})
        await wait_until(lambda: len(sub.messages) == 3)
        by_subject = dict(sub.messages)
        snapshot = by_subject["dpd.gpus.test-node"]
        assert snapshot["type"] == "gpus" and snapshot["node"] == "test-node"
        assert [g["gpu_id"] for g in snapshot["data"]["gpus"]] == [0, 1]
        assert snapshot["data"]["gpus"][0]["memory_total"] == 24576
        assert by_subject["dpd.preprocess.prep_1.progress"]["data"] == {"percent": 50}
        assert by_subject["dpd.models.dl~7.progress"]["task_id"] == "dl.7"
    await outlet.stop()


async def test_progress_is_coalesced_and_the_latest_value_wins(
    tmp_path: Path, core_nats_server: NatsServer
) -> None:
    outlet = await Outlet(tmp_path, nats_config(core_nats_server.url)).start()
    async with collecting(core_nats_server.url, "dpd.jobs.*.progress") as sub:
        await wait_until(lambda: outlet.bridge.connected)
        outlet.new_job("fast")
        started = time.monotonic()
        for step in range(1, 501):  # a trainer reporting 500 steps in about a second
            outlet.bus.emit("jobs", "fast", "progress", {"current_step": step})
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - started
        await wait_until(
            lambda: sub.payloads() and sub.payloads()[-1]["data"]["current_step"] == 500
        )
        received = sub.payloads()
        assert len(received) <= elapsed * 4 + 2
        steps = [p["data"]["current_step"] for p in received]
        assert steps == sorted(steps)
        seqs = [e["seq"] for e in outlet.disk_events("fast")]
        assert seqs == list(range(1, len(seqs) + 1))  # coalescing leaves no gap
    await outlet.stop()


async def test_reconnects_and_the_bus_never_waits_for_nats(
    tmp_path: Path, core_nats_server: NatsServer
) -> None:
    outlet = await Outlet(tmp_path, nats_config(core_nats_server.url)).start()
    await wait_until(lambda: outlet.bridge.connected)
    outlet.new_job("t")
    await wait_until(lambda: outlet.bridge.status()["published"] == 1)
    core_nats_server.kill()
    await wait_until(lambda: not outlet.bridge.connected)
    started = time.monotonic()
    for n in range(200):
        outlet.bus.emit("jobs", "t", "metrics", {"n": n})
    await wait_until(lambda: outlet.store.last_event_seq("t") == 201)
    assert time.monotonic() - started < 3  # recorded on disk while NATS was away
    status = outlet.bridge.status()
    assert status["connected"] is False and status["last_error"]
    assert status["queued"] == 200 and status["dropped"] == 0
    core_nats_server.start()
    async with collecting(core_nats_server.url) as sub:
        await wait_until(lambda: outlet.bridge.status()["reconnects"] == 1)
        outlet.bus.emit("jobs", "t", "status", {"status": "running"})
        await wait_until(lambda: sub.payloads("t") and sub.payloads("t")[-1]["seq"] == 202)
    await outlet.stop()


async def test_a_full_queue_drops_the_oldest_and_counts_them(
    tmp_path: Path, core_nats_server: NatsServer
) -> None:
    # the bridge reconnects after about a second: time for the subscriber to be there first
    config = nats_config(core_nats_server.url)
    options = {"queue_size": 50, "reconnect_wait": 1.0, "reconnect_max": 1.0}
    outlet = await Outlet(tmp_path, config, **options).start()
    await wait_until(lambda: outlet.bridge.connected)
    outlet.new_job("t")
    await wait_until(lambda: outlet.bridge.status()["published"] == 1)
    core_nats_server.kill()
    await wait_until(lambda: not outlet.bridge.connected)
    for n in range(120):
        outlet.bus.emit("jobs", "t", "metrics", {"n": n})
    await wait_until(lambda: outlet.bridge.status()["dropped"] == 70)
    core_nats_server.start()
    async with collecting(core_nats_server.url) as sub:
        await wait_until(lambda: len(sub.payloads("t")) == 50)
        assert [p["seq"] for p in sub.payloads("t")] == list(range(72, 122))  # the newest
    await outlet.stop()


async def test_without_a_server_the_daemon_side_keeps_working(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    outlet = await Outlet(tmp_path, nats_config(url)).start()
    outlet.new_job("t")
    for n in range(50):
        outlet.bus.emit("jobs", "t", "metrics", {"n": n})
    await wait_until(lambda: outlet.store.last_event_seq("t") == 51)
    await wait_until(lambda: outlet.bridge.status()["last_error"])
    assert outlet.bridge.status()["connected"] is False
    started = time.monotonic()
    await outlet.stop()  # drain gives up at once: nothing can be sent
    assert time.monotonic() - started < 2


async def test_user_and_password_are_used(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, jetstream=False, args=["--user", "dpd", "--pass", "s3cret"])
    server.start()
    try:
        bad = Outlet(tmp_path / "bad", nats_config(server.url, user="dpd", password="no"))
        await bad.start()
        await wait_until(lambda: "uthorization" in (bad.bridge.status()["last_error"] or ""))
        assert not bad.bridge.connected
        await bad.stop(drain=False)
        good = Outlet(tmp_path / "good", nats_config(server.url, user="dpd", password="s3cret"))
        await good.start()
        await wait_until(lambda: good.bridge.connected)
        await good.stop()
    finally:
        server.stop()


async def test_token_is_used(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, jetstream=False, args=["--auth", "tok123"]).start()
    try:
        outlet = await Outlet(tmp_path, nats_config(server.url, token="tok123")).start()
        await wait_until(lambda: outlet.bridge.connected)
        assert "tok123" not in str(outlet.bridge.status())
        await outlet.stop()
    finally:
        server.stop()
