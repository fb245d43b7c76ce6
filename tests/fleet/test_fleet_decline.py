"""FL10 (FLEET.md §13.3): a job whose data one host cannot read. Host c's data roots leave
out the shared dataset (as a host that lacks a mount would), hosts a (1 GPU) and c (2).

- A 1-GPU job that c claims while a is busy: c checks the paths before it builds anything,
  declines (T4a, the reason recorded), and a runs the job once its GPU is free.
- A 2-GPU job only c can hold: c declines it, and since no other live node could run it,
  the job fails at once with the 422 a submission on c would have had (T4c), its
  ``failed`` published in stream ``DPD``; no host claims and declines it around the fleet.
- A GPU a foreign process takes between plan and spawn (the second test).

The run oracle sees one run of the first job, on a, and none of the second.
"""

from __future__ import annotations

import fcntl
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dpd.fleet.records import JobState
from tests.fleet.hosts import Fleet
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_hosts import all_done, kv_records, submit
from tests.fleet.test_fleet_loss import stream_events
from tests.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet10"), {"a": 1, "c": 2})
    elsewhere = hosts.root / "c-data"
    elsewhere.mkdir()
    hosts["c"].config["daemon"]["data_roots"] = [str(elsewhere)]  # the dataset is not here
    with hosts:
        yield hosts


def declines(fleet: Fleet, task_id: str) -> int:
    return fleet["c"].log().count(f"{task_id}: cannot run here")


def test_fl10_a_host_without_the_data_declines_and_the_job_runs_elsewhere_or_fails_422(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    tag = uuid.uuid4().hex[:6]
    busy, moved, nowhere = f"fl10-busy-{tag}", f"fl10-moved-{tag}", f"fl10-nowhere-{tag}"
    long_job = fleet.job(task_id=busy, gpu_ids=[0])  # pinned to a, where it is submitted
    long_job["config"]["epochs"] = 30
    assert submit(fleet, "a", long_job)[0] == 201
    wait_for(lambda: any(r.task == busy for r in fleet.runs()), timeout=60)

    big = fleet.job(task_id=nowhere)
    big["data_parallel"] = 2  # only c has two GPUs
    assert submit(fleet, "a", big)[0] == 201
    assert submit(fleet, "a", fleet.job(task_id=moved))[0] == 201  # a is busy: c claims it
    wait_for(lambda: declines(fleet, moved) >= 1, timeout=60)

    records = wait_for(lambda: all_done(cluster, {busy, moved, nowhere}), timeout=120)
    first = records[moved]
    assert first.state is JobState.COMPLETED
    assert first.owner is not None and first.owner.node == "a"
    assert [d.node for d in first.declined] == ["c"]
    assert "dataset.directories[0].path" in first.declined[0].reason
    assert [h.outcome for h in first.history] == ["declined", "completed"]

    failed = records[nowhere]
    assert failed.state is JobState.FAILED and failed.result is not None
    error = failed.result.error or {}
    assert error["cause"] == "missing_file" and error["code"] == 422, error
    assert "dataset.directories[0].path" in error["reason"]
    assert error["errors"][0]["field"] == "dataset.directories[0].path"
    assert failed.attempt == 1 and [h.outcome for h in failed.history] == ["declined_everywhere"]
    code, body = fleet["a"].request("GET", f"/api/v1/training/{nowhere}")
    assert code == 200 and body["data"]["status"] == "failed", body
    statuses = [
        e["data"]["status"]
        for e in wait_for(lambda: _with_failed(cluster, nowhere), timeout=30)
        if e["type"] == "status"
    ]
    assert statuses[-1] == "failed", statuses

    runs = fleet.runs()
    assert [(r.task, r.host, r.completed) for r in runs if r.task == moved] == [(moved, "a", True)]
    assert not [r for r in runs if r.task == nowhere]
    assert (declines(fleet, moved), declines(fleet, nowhere)) == (1, 1)  # no loop
    assert "fl10" not in " ".join(fleet["c"].job_ids())  # nothing was built on c
    assert set(kv_records(cluster)) >= {busy, moved, nowhere}


def _with_failed(cluster: NatsCluster, task_id: str) -> list[dict[str, Any]]:
    events = stream_events(cluster, task_id)
    failed = [e for e in events if e.get("type") == "status" and e["data"]["status"] == "failed"]
    return events if failed else []


@pytest.fixture
def lone(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet10b")
    hosts = Fleet(cluster, root, {"c": 1})
    hosts["c"].config["trainer"]["env"]["DPD_SIM_GPU_DIR"] = str(root / "gpus")
    with hosts:
        yield hosts


def test_fl10_a_gpu_taken_between_plan_and_spawn_fails_the_run_not_the_job(
    lone: Fleet, cluster: NatsCluster
) -> None:
    """FL10's second half: a foreign process takes c's GPU after c planned the job (the
    static backend cannot see it; the stand-in's CUDA context is a flock on
    ``$DPD_SIM_GPU_DIR/gpu0``, and a held one is CUDA's out-of-memory error). The run fails
    with that cause, the GPU is free again, nothing is requeued behind the user's back,
    and once the foreign process lets go the next job runs on that GPU."""
    gpus = lone.root / "gpus"
    gpus.mkdir(exist_ok=True)
    task_id = f"fl10-gpu-{uuid.uuid4().hex[:6]}"
    with (gpus / "gpu0").open("a") as foreign:
        fcntl.flock(foreign, fcntl.LOCK_EX)  # the foreign process holds GPU 0
        assert submit(lone, "c", lone.job(task_id=task_id))[0] == 201
        failed = wait_for(lambda: all_done(cluster, {task_id}), timeout=60)[task_id]
        fcntl.flock(foreign, fcntl.LOCK_UN)
    assert failed.state is JobState.FAILED and failed.result is not None
    assert (failed.result.error or {}).get("cause") == "cuda_oom", failed.result
    assert failed.attempt == 1 and failed.requeues == 0
    wait_for(lambda: _free_gpus(lone) == [0], timeout=30)  # no GPU stays with the ended run

    again = f"{task_id}-again"  # the GPU released: the next job runs on it
    assert submit(lone, "c", lone.job(task_id=again))[0] == 201
    done = wait_for(lambda: all_done(cluster, {again}), timeout=60)[again]
    assert done.state is JobState.COMPLETED and done.owner is not None
    assert done.owner.node == "c" and done.owner.gpus == (0,)
    assert [r.completed for r in lone.runs() if r.task == again] == [True]
    later = kv_records(cluster)[task_id]  # still failed: never requeued behind the user
    assert (later.state, later.attempt, later.requeues) == (JobState.FAILED, 1, 0)


def _free_gpus(fleet: Fleet) -> list[int]:
    code, body = fleet["c"].request("GET", "/api/v1/fleet/nodes")
    assert code == 200, body
    return list(next(n for n in body["data"]["nodes"] if n["node"] == "c")["free_gpus"])
