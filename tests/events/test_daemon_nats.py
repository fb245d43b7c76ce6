"""A real ``dpd serve`` with NATS configured, running the stand-in training, watched by NATS
subscribers: core mode sees every event of events.jsonl; in JetStream mode a durable
consumer gets every seq exactly once through a daemon kill -9 and a nats-server kill -9."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dpd.trainlog.follow import split_lines
from tests.daemon_harness import DaemonProcess
from tests.events.harness import collecting, consume_all, durable_consumer
from tests.events.nats_server import NatsServer
from tests.jobfiles import job_document
from tests.jsonl import complete_records
from tests.ports import master_port_range
from tests.supervisor.test_lifecycle import make_daemon
from tests.waiting import wait_for, wait_until

TERMINAL = ("completed", "failed", "stopped")


def nats_daemon(root: Path, url: str, jetstream: bool, step_seconds: float) -> DaemonProcess:
    daemon = make_daemon(root, step_seconds=step_seconds)
    daemon.config["nats"] = {"url": url, "jetstream": jetstream}
    daemon.config["trainer"]["master_port_range"] = master_port_range(21)
    return daemon


def disk_events(daemon: DaemonProcess, task_id: str) -> list[dict[str, Any]]:
    return complete_records(daemon.spool / "jobs" / task_id / "events.jsonl")


def ended_events(daemon: DaemonProcess, task_id: str) -> list[dict[str, Any]] | None:
    """The task's events once the last of them is a terminal status; None before."""
    events = disk_events(daemon, task_id)
    last = events[-1] if events else None
    if last and last["type"] == "status" and last["data"]["status"] in TERMINAL:
        return events
    return None


def status_of(daemon: DaemonProcess, task_id: str) -> str | None:
    state = daemon.job_state(task_id)
    return state["status"] if state else None


def lines_but_bars(lines: list[str]) -> list[str]:
    """Trainer lines without tqdm redraws (the follower folds a bar's redraws to fewer)."""
    return [line for line in lines if line.strip() and "%|" not in line]


async def wait_status(daemon: DaemonProcess, task_id: str, wanted: tuple[str, ...]) -> None:
    await asyncio.to_thread(wait_for, lambda: status_of(daemon, task_id) in wanted, 30)


async def final_disk_events(daemon: DaemonProcess, task_id: str) -> list[dict[str, Any]]:
    """events.jsonl once its last event is the terminal status: state.json says terminal a
    moment before the bus has appended that status event."""

    def ended() -> list[dict[str, Any]] | None:
        events = disk_events(daemon, task_id)
        last = events[-1] if events else {}
        return events if last.get("data", {}).get("status") in TERMINAL else None

    events: list[dict[str, Any]] = await asyncio.to_thread(wait_for, ended, 10)
    return events


async def receive_at_least(url: str, count: int) -> list[dict[str, Any]]:
    """What the durable consumer delivers, pulled until ``count`` events came (or 20 pulls)."""
    received: list[dict[str, Any]] = []
    deliveries: set[int] = set()
    for _ in range(20):
        received.extend(await consume_all(url, deliveries=deliveries))
        if len(received) >= count:
            break
    return received


async def test_a_training_seen_through_nats_matches_events_jsonl(
    tmp_path: Path, core_nats_server: NatsServer, daemons: list
) -> None:
    daemon = nats_daemon(tmp_path, core_nats_server.url, False, step_seconds=0.05)
    daemons.append(daemon)
    async with collecting(core_nats_server.url) as sub:
        await asyncio.to_thread(daemon.start)
        await wait_until(lambda: any(s == "dpd.gpus.test-node" for s, _ in sub.messages))
        daemon.drop("cats.json", job_document(daemon.data, task_id="cats.v1"))
        await wait_status(daemon, "cats.v1", TERMINAL)
        # state.json is written before its status event is appended: wait for the event too
        on_disk = await wait_until(
            lambda: asyncio.to_thread(ended_events, daemon, "cats.v1"),
            what="the terminal status event in events.jsonl",
        )
        await wait_until(lambda: len(sub.payloads("cats.v1")) == len(on_disk))
        received = sub.payloads("cats.v1")
    assert on_disk[-1]["data"]["status"] == "completed", on_disk[-1]["data"]
    assert received == on_disk
    assert [e["seq"] for e in received] == list(range(1, len(received) + 1))
    kinds = {e["type"] for e in received}
    assert kinds == {"status", "progress", "metrics", "log"}
    statuses = [e["data"]["status"] for e in received if e["type"] == "status"]
    assert statuses == ["queued", "running", "completed"]
    subjects = {s for s, p in sub.messages if p.get("task_id") == "cats.v1"}
    assert subjects == {f"dpd.jobs.cats~v1.{k}" for k in kinds}
    logged = [line for e in received if e["type"] == "log" for line in e["data"]["lines"]]
    train_log = (daemon.spool / "jobs" / "cats.v1" / "train.log").read_text()
    assert lines_but_bars(logged) == lines_but_bars(split_lines(train_log))  # all, in order
    assert len([e for e in received if e["type"] == "log"]) < len(logged)  # in batches
    steps = [e for e in received if e["type"] == "metrics" and e["data"].get("type") == "step"]
    assert steps, "step metrics reach NATS"


async def test_daemon_kill9_mid_training_every_seq_once_on_the_durable_consumer(
    tmp_path: Path, nats_server: NatsServer, daemons: list
) -> None:
    daemon = nats_daemon(tmp_path, nats_server.url, True, step_seconds=0.15)
    daemons.append(daemon)
    await asyncio.to_thread(daemon.start)
    await durable_consumer(nats_server.url)
    daemon.drop("cats.json", job_document(daemon.data, task_id="cats"))
    await asyncio.to_thread(
        wait_for, lambda: len(disk_events(daemon, "cats")) > 8 if daemon.job_ids() else False, 20
    )
    daemon.kill9()
    await asyncio.to_thread(daemon.start)
    await wait_status(daemon, "cats", TERMINAL)
    on_disk = await final_disk_events(daemon, "cats")
    received = await receive_at_least(nats_server.url, len(on_disk))
    assert sorted(e["seq"] for e in received) == [e["seq"] for e in on_disk]
    assert {e["seq"]: e for e in received} == {e["seq"]: e for e in on_disk}
    assert on_disk[-1]["data"]["status"] == "completed"


async def test_nats_kill9_mid_training_every_seq_once_on_the_durable_consumer(
    tmp_path: Path, nats_server: NatsServer, daemons: list
) -> None:
    daemon = nats_daemon(tmp_path, nats_server.url, True, step_seconds=0.15)
    daemons.append(daemon)
    await asyncio.to_thread(daemon.start)
    await durable_consumer(nats_server.url)
    daemon.drop("cats.json", job_document(daemon.data, task_id="cats"))
    await asyncio.to_thread(
        wait_for, lambda: len(disk_events(daemon, "cats")) > 8 if daemon.job_ids() else False, 20
    )
    nats_server.kill()
    seen = len(disk_events(daemon, "cats"))
    await asyncio.to_thread(  # the training goes on without NATS
        wait_for, lambda: len(disk_events(daemon, "cats")) >= seen + 3, 20
    )
    assert daemon.healthy()
    nats_server.start()
    await wait_status(daemon, "cats", TERMINAL)
    on_disk = await final_disk_events(daemon, "cats")
    received = await receive_at_least(nats_server.url, len(on_disk))
    assert sorted(e["seq"] for e in received) == [e["seq"] for e in on_disk]
    assert on_disk[-1]["data"]["status"] == "completed"
