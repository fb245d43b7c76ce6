"""Any host shows and stops any job (FLEET.md §9.6–§9.8; §13.3 FL11, FL12): three real
``dpd serve`` hosts on a real 3-node NATS cluster; the jobs run on c (only c has 4 GPUs) and
are read and stopped through a.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dpd.events.subjects import job_subject
from dpd.fleet import views as fv
from dpd.fleet.records import Desired, JobState
from dpd.fleet.rpc import RpcClient, RpcRequest
from dpd.http.views import stop_view
from tests.daemon_harness import job_processes
from tests.fleet.conftest import connect
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_hosts import kv_records
from tests.waiting import wait_for

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(
        cluster, tmp_path_factory.mktemp("views"), {"a": 2, "b": 1, "c": 4}, step_seconds=0.05
    )
    try:
        yield hosts.up()
    finally:
        hosts.down()


def on_c(fleet: Fleet, epochs: int, tag: str) -> str:
    """A 4-GPU job submitted on a: only c can run it."""
    doc = fleet.job(task_id=f"{tag}-{uuid.uuid4().hex[:8]}", data_parallel=4)
    doc["config"]["epochs"] = epochs
    code, body = fleet["a"].request("POST", "/api/v1/training/start", doc)
    assert code == 201, body
    return str(body["data"]["task_id"])


def record_state(cluster: NatsCluster, task_id: str) -> JobState | None:
    record = kv_records(cluster).get(task_id)
    return record.state if record else None


def training(fleet: Fleet, task_id: str) -> bool:
    """The trainer of ``task_id`` has started (the run oracle's ledger shows it) and its
    record says ``running``."""
    started = any(r.task == task_id for r in fleet.runs())
    return started and record_state(fleet.cluster, task_id) is JobState.RUNNING


def without_fleet(envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope["data"]
    return {k: v for k, v in data.items() if k != "fleet"} if isinstance(data, dict) else data


def sse(
    fleet: Fleet,
    host: str,
    path: str,
    last_event_id: str | None = None,
    until: Callable[[list[dict[str, Any]]], bool] | None = None,
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """The messages of an SSE stream (id, event, data) until it ends or ``until`` holds."""
    conn = http.client.HTTPConnection("127.0.0.1", fleet[host].port, timeout=timeout)
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    try:
        while True:
            raw = response.readline()
            if not raw:
                return messages
            line = raw.decode().rstrip("\n")
            if line == "":
                if "data" in current:
                    messages.append(current)
                    if until is not None and until(messages):
                        return messages
                current = {}
            elif not line.startswith((":", "retry:")):
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value
    finally:
        conn.close()


def test_fl12_reads_on_a_for_a_job_on_c_equal_cs_own_and_fall_back_when_c_is_gone(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL12: GET, progress, logs and the SSE stream with Last-Event-ID on a for a job that
    ran on c equal c's own answers (minus ``fleet``); the multiplexed stream on a carries
    c's events; with c's daemon killed, a answers from the KV record and stream DPD marked
    stale, and the SSE stream is the same, seq by seq."""
    a, c = fleet["a"], fleet["c"]
    events_on_a = []
    task_id = on_c(fleet, 2, "fl12")

    def completed_on_a(messages: list[dict[str, Any]]) -> bool:
        return any(
            m["data"].get("task_id") == task_id and m["data"]["data"].get("status") == "completed"
            for m in messages
        )

    events_on_a = sse(fleet, "a", "/api/v1/events/stream?kinds=status", until=completed_on_a)
    mine = [m["data"] for m in events_on_a if m["data"].get("task_id") == task_id]
    assert {"running", "completed"} <= {e["data"]["status"] for e in mine}
    assert all(e["node"] == "c" for e in mine if e["data"]["status"] == "running")
    wait_for(lambda: record_state(cluster, task_id) is JobState.COMPLETED, timeout=60)

    for host in ("b", "c"):  # the list on any host shows every job, with its node
        code, body = fleet[host].request("GET", "/api/v1/training/list?node=c&limit=1000")
        assert code == 200, body
        rows = {row["task_id"]: row for row in body["data"]["tasks"]}
        assert rows[task_id]["status"] == "completed" and rows[task_id]["node"] == "c"
        assert {row["node"] for row in rows.values()} == {"c"}

    base = f"/api/v1/training/{task_id}"
    for path in (base, f"{base}/progress", f"{base}/logs?tail=40", f"{base}/metrics"):
        code_c, body_c = c.request("GET", path)
        code_a, body_a = a.request("GET", path)
        assert code_a == code_c == 200, (path, body_a, body_c)
        assert body_a["data"]["fleet"]["node"] == "c"
        assert "fleet" not in body_c["data"]
        assert without_fleet(body_a) == body_c["data"], path
    metrics_c = body_c["data"]  # the last path's: c's own /metrics
    assert metrics_c["data"], metrics_c
    assert a.request("GET", "/api/v1/training/no-such-task")[0] == 404

    stream = f"{base}/logs/stream"
    from_c = sse(fleet, "c", stream, last_event_id="2")
    from_a = sse(fleet, "a", stream, last_event_id="2")
    assert from_a == from_c
    assert from_a[-1]["event"] == "end"
    seqs = sorted({int(m["id"].split(":")[0]) for m in from_a})
    assert seqs == list(range(3, seqs[-1] + 1))  # no seq missed

    async def owners_events() -> list[dict[str, Any]]:  # what fills an SSE reader's hole
        nc = await connect(cluster.urls)
        try:
            return await RpcClient(nc, "test").events("c", task_id, 2, 5.0)
        finally:
            await nc.close()

    recorded = [json.loads(line) for line in (c.spool / "jobs" / task_id / "events.jsonl")
                .read_text().splitlines()]  # fmt: skip
    assert asyncio.run(owners_events()) == [e for e in recorded if e["seq"] > 2]

    async def stream_last_seq() -> int:
        nc = await connect(cluster.urls)
        try:
            events = await fv.read_all(nc, job_subject("dpd", task_id, "*"), 5.0)
            return max((int(e["seq"]) for e in events), default=0)
        finally:
            await nc.close()

    def logs_settled() -> dict[str, Any] | None:
        """c's log answer once its follower has read the whole train.log (two reads agree)
        and stream DPD holds every event up to it: what the fallback can know."""
        first = c.request("GET", f"{base}/logs?tail=40")[1]["data"]
        time.sleep(0.3)
        second = c.request("GET", f"{base}/logs?tail=40")[1]["data"]
        if first != second or asyncio.run(stream_last_seq()) < second["last_seq"]:
            return None
        return second  # type: ignore[no-any-return]

    settled = wait_for(logs_settled, timeout=30)
    search = f"{base}/logs/search?keyword=epoch&limit=20"
    code, body = c.request("GET", search)
    assert code == 200 and body["data"]["total_matches"] > 0, body
    searched_on_c = body["data"]
    everything = sse(fleet, "c", stream, last_event_id="0")
    logged_lines = [m["data"]["message"] for m in everything if "event" not in m]
    c.kill9()
    try:
        code, body = a.request("GET", base)
        assert code == 200, body
        data = body["data"]
        assert data["stale"] is True and data["source"] == "kv"
        assert data["node_state"] == "unreachable"
        assert data["status"] == "completed" and data["task_id"] == task_id
        code, body = a.request("GET", f"{base}/logs?tail=40")
        assert code == 200, body
        assert body["data"]["stale"] is True and body["data"]["source"] == "stream"
        messages = [line["message"] for line in body["data"]["logs"]]
        assert len(messages) == min(40, settled["total_lines"])
        assert messages == logged_lines[-40:]  # the lines c's own stream sends
        assert sse(fleet, "a", stream, last_event_id="2") == from_c
        code, body = a.request("GET", f"{base}/metrics")  # from stream DPD, not a 503
        assert code == 200, body
        assert body["data"]["stale"] is True and body["data"]["source"] == "stream"
        assert body["data"]["data"] == metrics_c["data"]
        assert body["data"]["metric"] == "loss" and body["data"]["type"] == "step"
        code, body = a.request("GET", search)  # the same search over stream DPD's lines
        assert code == 200, body
        assert body["data"]["stale"] is True and body["data"]["source"] == "stream"
        marks = ("stale", "source", "node_state", "fleet")
        assert {k: v for k, v in body["data"].items() if k not in marks} == searched_on_c
    finally:
        c.start()
        wait_for(lambda: fleet._sees_all(a), timeout=60)


def test_fl11_stop_on_a_for_a_job_on_c_by_rpc_and_while_c_is_down(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL11: a stop sent to a for a job running on c is c's staged stop, answered with c's
    envelope; a stop sent while c's daemon is stopped is 202 ``pending``, recorded as
    ``desired`` and applied by c when it is back; the trainer never outlives the stop."""
    a, c = fleet["a"], fleet["c"]
    task_id = on_c(fleet, 400, "fl11")
    wait_for(lambda: training(fleet, task_id), timeout=60)

    async def smuggled() -> int:  # a stop sent on the get verb's subject: not served
        nc = await connect(cluster.urls)
        try:
            call = RpcRequest("POST", f"/api/v1/training/stop/{task_id}", permissions=("admin",))
            reply = await RpcClient(nc, "test").call("c", "job.get", call, 5.0)
            return reply.status
        finally:
            await nc.close()

    assert asyncio.run(smuggled()) == 400
    assert record_state(cluster, task_id) is JobState.RUNNING

    waiting = on_c(fleet, 1, "fl11-queued")  # c's 4 GPUs are busy: no node can take it
    assert record_state(cluster, waiting) is JobState.QUEUED
    code, body = fleet["b"].request("POST", f"/api/v1/training/stop/{waiting}")
    assert code == 200, body  # T9 + T8 on b: cancelled in the fleet's record
    assert body["data"]["status"] == "stopped" and body["data"]["fleet"]["node"] is None
    assert record_state(cluster, waiting) is JobState.STOPPED
    code, body = a.request("GET", f"/api/v1/training/{waiting}")
    assert code == 200 and body["data"]["status"] == "stopped"
    assert body["data"]["source"] == "kv" and body["data"]["stale"] is False
    code, body = a.request("POST", f"/api/v1/training/stop/{task_id}", {"force": False})
    assert code == 200, body
    assert body["message"] == "training task stopped"
    state = c.job_state(task_id)
    assert state is not None and state["status"] == "stopped"
    assert without_fleet(body) == stop_view(state)
    again_a = a.request("POST", f"/api/v1/training/stop/{task_id}")
    wait_for(lambda: record_state(cluster, task_id) is JobState.STOPPED, timeout=30)
    again_c = c.request("POST", f"/api/v1/training/stop/{task_id}")
    assert again_a[0] == again_c[0] == 409
    assert without_fleet(again_a[1]) == without_fleet(again_c[1])

    second = on_c(fleet, 400, "fl11-down")
    wait_for(lambda: training(fleet, second), timeout=60)
    c.stop()  # the daemon only: its shim keeps the training going
    try:
        code, body = a.request("POST", f"/api/v1/training/stop/{second}")
        assert code == 202, body
        assert body["data"]["task_id"] == second and body["data"]["pending"] is True
        record = kv_records(cluster)[second]
        assert record.desired is Desired.STOP and record.state is JobState.RUNNING
        assert [r.end for r in fleet.runs() if r.task == second] == [None]  # still training
    finally:
        c.start()
    wait_for(lambda: record_state(cluster, second) is JobState.STOPPED, timeout=60)
    state = c.job_state(second)
    assert state is not None and state["status"] == "stopped"
    for stopped in (task_id, second):  # no trainer outlives its stop
        wait_for(lambda t=stopped: not job_processes(t), timeout=30)  # type: ignore[misc]
    runs = [r for r in fleet.runs() if r.task in (task_id, second, waiting)]
    assert sorted(r.task for r in runs) == sorted((task_id, second))  # one run each
    assert not duplicates(runs)
    assert waiting not in fleet.local_jobs()  # never materialised anywhere
    wait_for(lambda: fleet._sees_all(a), timeout=60)
