"""Three real ``dpd serve`` hosts on a real 3-node NATS cluster (FLEET.md §13.3 FL1, FL2).

Hosts a (2 GPUs), b (1), c (4), the stand-in trainer, and the run oracle: every run of the
trainer appends its start and end to one ledger, and a second run of a task, at any time and
of any length, shows there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dpd.fleet.kv import Bucket, jobs_spec
from dpd.fleet.records import JobRecord, JobState
from dpd.fleet.table import WatchedTable
from tests.fleet.conftest import connect
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.waiting import wait_for

pytestmark = pytest.mark.fleet

SIZES = (1, 2, 4)
HOSTS = ("a", "b", "c")


@pytest.fixture(scope="module")
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet"), {"a": 2, "b": 1, "c": 4})
    try:
        yield hosts.up()
    finally:
        hosts.down()


def kv_records(cluster: NatsCluster) -> dict[str, JobRecord]:
    """Every job record in ``dpd_jobs``, read from the cluster through dpd's own watched
    table: a listing with nats-py's ``keys()`` can end before a just-acknowledged write is
    in it (its "no more" comes from a pending count that can read 0), the table waits for
    the stream's last message. A read that fails (a cluster just restarted, a leader
    election) is tried again for up to 30 s."""

    async def read() -> dict[str, JobRecord]:
        async with asyncio.timeout(10):
            nc = await connect(cluster.urls)
        table = WatchedTable(Bucket(nc.jetstream(), jobs_spec("dpd", cluster.n)))
        watching = asyncio.create_task(table.run())
        try:
            async with asyncio.timeout(20):
                await table.ready.wait()
            records = (JobRecord.from_json(e.entry.value) for e in table.entries.values())
            return {r.task_id: r for r in records}
        finally:
            # bounded: after a server restart nats-py's unsubscribe or close can wait for
            # good (seen once in the chaos run, the reader then hung for minutes)
            watching.cancel()
            await asyncio.wait({watching}, timeout=5)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await nc.close()

    deadline = time.monotonic() + 30
    while True:
        loop = asyncio.new_event_loop()  # closed without waiting on what may still hang
        try:
            return loop.run_until_complete(read())
        except Exception:  # timeouts, no responders while the cluster elects a leader
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        finally:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left, timeout=2))
            loop.close()


def submit(fleet: Fleet, host: str, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return fleet[host].request("POST", "/api/v1/training/start", doc)


def all_done(cluster: NatsCluster, ids: set[str]) -> dict[str, JobRecord]:
    """The records once every one of ``ids`` is terminal; empty (falsy) until then."""
    records = kv_records(cluster)
    if ids <= set(records) and all(records[t].terminal for t in ids):
        return records
    return {}


def test_fl1_jobs_from_every_host_run_once_each_on_a_host_that_fits(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL1 reduced: 30 jobs of 1, 2 and 4 GPUs, priorities 0-2, submitted round-robin over
    a, b, c, half by REST and half as spool files: all complete, the 4-GPU ones on c only,
    each on exactly one host, and the oracle sees exactly one run per task."""
    tag = uuid.uuid4().hex[:6]
    rest_ids: list[str] = []
    size_of: dict[str, int] = {}
    for i in range(30):
        size = SIZES[i % 3]
        host = HOSTS[(i // 3) % 3]
        description = f"fl1-{tag}-{i}"
        size_of[description] = size
        doc = fleet.job(description=description, priority=i % 3)
        if size > 1:
            doc["data_parallel"] = size
        if i % 2 == 0:
            code, body = submit(fleet, host, doc)
            assert code == 201, body
            rest_ids.append(body["data"]["task_id"])
        else:
            fleet[host].drop(f"fl1-{tag}-{i}.json", doc)
    for name in HOSTS:  # every spool file acknowledged (removed) by its host
        wait_for(lambda h=fleet[name]: not list(h.incoming.iterdir()), timeout=60)  # type: ignore[misc]

    def ours() -> dict[str, JobRecord]:
        return {
            t: r
            for t, r in kv_records(cluster).items()
            if (r.spec or {}).get("description", "").startswith(f"fl1-{tag}-")
        }

    wait_for(lambda: len(ours()) == 30, timeout=30, what=lambda: f"{len(ours())} records")
    records = wait_for(
        lambda: (lambda rs: rs if all(r.terminal for r in rs.values()) else {})(ours()),
        timeout=240,
        interval=1,
        what=lambda: str(
            sorted((r.state.value, r.owner and r.owner.node) for r in ours().values())
        ),
    )
    assert set(rest_ids) <= set(records)
    descriptions = sorted((r.spec or {})["description"] for r in records.values())
    assert descriptions == sorted(size_of)  # each submission became exactly one job
    local = fleet.local_jobs()
    runs = fleet.runs()
    for task_id, record in records.items():
        assert record.state is JobState.COMPLETED, (task_id, record.result)
        assert record.owner is not None and record.attempt == 1
        size = size_of[(record.spec or {})["description"]]
        assert len(record.owner.gpus) == size
        if size == 4:
            assert record.owner.node == "c"
        holders = local[task_id]
        assert [h for h, _ in holders] == [record.owner.node]  # materialised on its owner only
        assert holders[0][1]["status"] == "completed"
        assert holders[0][1]["gpu_ids"] == list(record.owner.gpus)
        task_runs = [r for r in runs if r.task == task_id]
        assert len(task_runs) == 1 and task_runs[0].completed, task_runs
        assert task_runs[0].host == record.owner.node
    assert not duplicates([r for r in runs if r.task in records])


def test_fl2_same_task_id_posted_to_every_host_at_once_creates_one_job(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL2: the same client task_id POSTed to a, b and c concurrently, 10 ids: exactly one
    201 per id (the others 200 with the same task), one record, one run."""
    ids = [f"fl2-{uuid.uuid4().hex[:8]}-{k}" for k in range(10)]
    answers: dict[str, list[tuple[int, str]]] = {t: [] for t in ids}
    lock = threading.Lock()

    def post(task_id: str, host: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        code, body = submit(fleet, host, fleet.job(task_id=task_id))
        with lock:
            answers[task_id].append((code, (body.get("data") or {}).get("task_id", str(body))))

    for task_id in ids:
        barrier = threading.Barrier(len(HOSTS))
        threads = [threading.Thread(target=post, args=(task_id, h, barrier)) for h in HOSTS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    for task_id, got in answers.items():
        codes = sorted(code for code, _ in got)
        assert codes == [200, 200, 201], (task_id, got)
        assert {t for _, t in got} == {task_id}
    records = wait_for(lambda: all_done(cluster, set(ids)), timeout=120, interval=1)
    runs = fleet.runs()
    for task_id in ids:
        assert records[task_id].state is JobState.COMPLETED
        assert len([r for r in runs if r.task == task_id]) == 1
        holders = fleet.local_jobs()[task_id]
        assert len(holders) == 1


def test_fleet_nodes_lists_every_host_with_its_gpus(fleet: Fleet) -> None:
    code, body = fleet["b"].request("GET", "/api/v1/fleet/nodes")
    assert code == 200
    nodes = {n["node"]: n for n in body["data"]["nodes"]}
    assert {name: n["gpus"] for name, n in nodes.items()} == {"a": 2, "b": 1, "c": 4}
    assert all(n["alive"] for n in nodes.values())


def test_a_job_no_node_can_hold_is_refused_with_507_and_nothing_is_queued(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    task_id = f"fl-507-{uuid.uuid4().hex[:8]}"
    doc = fleet.job(task_id=task_id, data_parallel=8)
    code, body = submit(fleet, "a", doc)
    assert code == 507, body
    assert body["data"]["fleet"] == {"largest_node_gpus": 4}
    assert task_id not in kv_records(cluster)


def test_fl2_a_second_host_with_a_taken_node_name_exits_1_and_the_first_goes_on(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL2, second part: a daemon on another machine configured with node name "a" refuses
    to run (exit status 1, the reason in its log); host a keeps placing jobs."""
    impostor = fleet.make_host("a", 1, index=7, directory="impostor")
    impostor.env["DPD_TEST_MACHINE_ID"] = "machine-elsewhere"
    impostor.start(wait=False)
    assert impostor.process is not None
    assert impostor.process.wait(60) == 1
    assert "is registered by machine machine-a" in impostor.log()
    task_id = f"fl2-after-{uuid.uuid4().hex[:8]}"
    code, body = submit(fleet, "a", fleet.job(task_id=task_id, data_parallel=2))
    assert code == 201, body
    records = wait_for(lambda: all_done(cluster, {task_id}), timeout=60, interval=0.5)
    owner = records[task_id].owner
    assert records[task_id].state is JobState.COMPLETED and owner is not None
    assert owner.node in ("a", "c") and owner.machine_id == f"machine-{owner.node}"


def test_fl3_reduced_a_host_killed_mid_run_and_restarted_finishes_its_job_once(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL3, first case, reduced: kill -9 b's daemon while its training runs, restart it a
    moment later (same boot): the training was never interrupted, the restarted daemon
    re-adopts it and reports its end to the fleet record; one run. (The ``node_state: lost``
    flag while b is away is phase 3's reaper.)"""
    task_id = f"fl3-{uuid.uuid4().hex[:8]}"
    doc = fleet.job(task_id=task_id, gpu_ids=[0])  # explicit GPUs pin the job to b
    doc["config"]["epochs"] = 40
    code, body = submit(fleet, "b", doc)
    assert code == 201, body
    b = fleet["b"]
    wait_for(lambda: (b.job_state(task_id) or {}).get("status") == "running", timeout=60)
    wait_for(lambda: any(r.task == task_id for r in fleet.runs()), timeout=30)
    b.kill9()
    assert [r.end for r in fleet.runs() if r.task == task_id] == [None]  # still training
    b.start()
    records = wait_for(lambda: all_done(cluster, {task_id}), timeout=120, interval=0.5)
    record = records[task_id]
    assert record.state is JobState.COMPLETED and record.attempt == 1, record
    assert record.owner is not None and record.owner.node == "b"
    runs = [r for r in fleet.runs() if r.task == task_id]
    assert len(runs) == 1 and runs[0].completed and runs[0].host == "b"
    wait_for(lambda: fleet._sees_all(b), timeout=30)  # the fleet is whole for the next test
