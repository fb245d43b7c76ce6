"""Node-loss figures for ``bench_fleet.py`` (FLEET.md §14): failure detection and time to
requeue, on a running fleet of real hosts a, b, c (``node_ttl`` 3 s, heartbeat 0.5 s).

- failure detection: b's daemon and its training killed (kill -9) → b's alive key confirmed
  absent by a leader read (a client polling every 20 ms), → host a's view shows b lost, →
  the job's record shows ``node_state: lost`` (a reaper's T13).
- hold + reboot: b restarted with a new boot id → the job's new attempt ``running`` (on any
  host); the figure from b's restart and from the kill.
- claimed only: a node that dies between its claim (T2) and its fence (T3) — the benchmark
  itself plays that node, z: it heartbeats, claims a queued job, stops heartbeating → the
  job ``queued`` again (a reaper's T4b) and ``running`` on a real host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import nats

from dpd.fleet.kv import Bucket, Entry, alive_spec, jobs_spec
from dpd.fleet.records import Fence, JobRecord, JobState, enc
from dpd.fleet.registry import Heartbeat
from dpd.fleet.transitions import Actor, ClaimFacts, NodeFacts, claim
from tests.daemon_harness import DaemonProcess, job_processes
from tests.fleet.hosts import Fleet
from tests.fleet.natscluster import NatsCluster

T = TypeVar("T")
POLL = 0.02


def until(condition: Callable[[], T | None], timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL)
    raise TimeoutError(f"not within {timeout} s")


def drain(fleet: Fleet, node: str, on: bool) -> None:
    code, body = fleet["a"].request("POST", f"/api/v1/fleet/nodes/{node}/drain", {"undo": not on})
    if code != 200:
        raise RuntimeError(f"drain {node}: {code} {body}")


def state_of(host: DaemonProcess, task_id: str) -> str | None:
    return (host.job_state(task_id) or {}).get("status")


def node_state(fleet: Fleet, via: str, node: str) -> str | None:
    code, body = fleet[via].request("GET", "/api/v1/fleet/nodes")
    if code != 200:
        return None
    return next((n["state"] for n in body["data"]["nodes"] if n["node"] == node), None)


def running_attempt(fleet: Fleet, task_id: str, attempt: int) -> bool:
    """An attempt ``attempt`` or later of the task runs on some host (a host that declines
    the job makes the next claim a later attempt)."""
    for host in fleet.hosts.values():
        state = host.job_state(task_id) or {}
        fleet_part = state.get("fleet") or {}
        if state.get("status") == "running" and int(fleet_part.get("attempt", 0)) >= attempt:
            return True
    return False


class Cluster:
    """A client of the cluster for leader reads and the played node z."""

    def __init__(self, cluster: NatsCluster) -> None:
        self.cluster = cluster

    async def __aenter__(self) -> Cluster:
        self.nc = await nats.connect(servers=self.cluster.urls, max_reconnect_attempts=-1)
        js = self.nc.jetstream()
        self.alive = Bucket(js, alive_spec("dpd", 3, 3.0))
        self.jobs = Bucket(js, jobs_spec("dpd", 3))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    async def alive_absent(self, node: str) -> bool:
        entry = await self.alive.leader_get(f"node.{node}")
        return entry is None or not entry.present

    async def record(self, task_id: str) -> JobRecord | None:
        entry = await self.jobs.leader_get(enc(task_id))
        return JobRecord.from_json(entry.value) if entry and entry.present else None


async def _poll(check: Callable[[], Any], timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return time.monotonic()
        await asyncio.sleep(POLL)
    raise TimeoutError(f"not within {timeout} s")


def hold_and_reboot(fleet: Fleet, cluster: NatsCluster, doc: dict[str, Any]) -> dict[str, float]:
    """Kill b with its training, time the detection, restart it on a new boot, time the
    requeued run."""
    for node in ("a", "c"):
        drain(fleet, node, True)
    until(lambda: all(node_state(fleet, "b", n) == "draining" for n in ("a", "c")))
    task_id = f"bench-loss-{uuid.uuid4().hex[:6]}"
    code, body = fleet["b"].request("POST", "/api/v1/training/start", {**doc, "task_id": task_id})
    if code != 201:
        raise RuntimeError(f"submission answered {code}: {body}")
    b = fleet["b"]
    shim_file = b.spool / "jobs" / task_id / "shim.json"
    until(lambda: state_of(b, task_id) == "running" and shim_file.exists(), timeout=60)
    time.sleep(0.5)  # the trainer under way
    for node in ("a", "c"):
        drain(fleet, node, False)
    b.kill9()
    shim = json.loads(shim_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(shim["shim_pid"]), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(shim["trainer_pgid"]), signal.SIGKILL)
    for pid in job_processes(task_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    async def detect() -> tuple[float, float]:
        async with Cluster(cluster) as c:
            confirmed = await _poll(lambda: c.alive_absent("b"))

            async def held() -> bool:
                record = await c.record(task_id)
                return record is not None and record.lost is not None

            return confirmed, await _poll(held)

    confirmed, held_at = asyncio.run(detect())
    seen = until(lambda: node_state(fleet, "a", "b") == "lost" and time.monotonic())
    b.env["DPD_TEST_BOOT_ID"] = str(uuid.uuid4())
    restarted = time.monotonic()
    b.start(wait=False)
    rerun = until(lambda: running_attempt(fleet, task_id, 2) and time.monotonic(), timeout=120)
    until(lambda: fleet._sees_all(b), timeout=60)
    return {
        "detect_leader_read": confirmed - killed,
        "detect_host_view": seen - killed,
        "held_flag": held_at - killed,
        "requeue_after_return": rerun - restarted,
        "requeue_after_kill": rerun - killed,
    }


def claimed_only(fleet: Fleet, cluster: NatsCluster, doc: dict[str, Any]) -> dict[str, float]:
    """The benchmark plays node z: it heartbeats, claims a job (T2) while a, b, c drain,
    and stops heartbeating; time to ``queued`` again and to ``running`` on a real host."""
    for node in ("a", "b", "c"):
        drain(fleet, node, True)
    task_id = f"bench-claim-{uuid.uuid4().hex[:6]}"
    code, body = fleet["a"].request("POST", "/api/v1/training/start", {**doc, "task_id": task_id})
    if code != 201:
        raise RuntimeError(f"submission answered {code}: {body}")

    async def play_z() -> tuple[float, float]:
        async with Cluster(cluster) as c:
            z = Actor("z", uuid.uuid4().hex, "z-boot", "z-machine")
            beat = Heartbeat(c.alive, z, 0.5)
            await beat.start()
            beating = asyncio.create_task(beat.run())
            facts = ClaimFacts(NodeFacts("z", "t", {}, {0: 81920}), Fence(), (0,), 0.0, 3.0)

            def t2(entry: Entry | None) -> bytes | None:
                assert entry is not None
                return claim(JobRecord.from_json(entry.value), z, facts, time.time()).to_json()

            await c.jobs.cas_update(enc(task_id), t2)
            for node in ("a", "b", "c"):
                await asyncio.to_thread(drain, fleet, node, False)
            beating.cancel()  # z dies between its claim and its fence
            with contextlib.suppress(asyncio.CancelledError):
                await beating
            died = time.monotonic()

            async def requeued() -> bool:
                record = await c.record(task_id)
                return record is not None and record.state is not JobState.CLAIMED

            return died, await _poll(requeued)

    died, back_in_queue = asyncio.run(play_z())
    rerun = until(lambda: running_attempt(fleet, task_id, 2) and time.monotonic(), timeout=60)
    return {"requeued": back_in_queue - died, "running_again": rerun - died}


def loss_figures(fleet: Fleet, cluster: NatsCluster, doc: dict[str, Any]) -> list[str]:
    reboot = hold_and_reboot(fleet, cluster, doc)
    claimed = claimed_only(fleet, cluster, doc)
    return [
        "node loss (node_ttl 3 s, heartbeat 0.5 s, hold mode)",
        f"  failure detection, kill -9 → alive key gone (leader read)  "
        f"{reboot['detect_leader_read']:6.2f} s   target ≤ ttl + 1 s (4 s)",
        f"                     kill -9 → host a shows b lost          "
        f"{reboot['detect_host_view']:6.2f} s",
        f"                     kill -9 → job shows node_state lost    {reboot['held_flag']:6.2f} s",
        f"  time to requeue, hold + reboot: b restarted → new attempt running  "
        f"{reboot['requeue_after_return']:6.2f} s  (from the kill "
        f"{reboot['requeue_after_kill']:.2f} s, b away until seen lost)",
        f"  time to requeue, claimed only: claimer dies → queued again  "
        f"{claimed['requeued']:6.2f} s, → running elsewhere {claimed['running_again']:.2f} s"
        f"   target ttl + < 2 s (5 s)",
    ]
