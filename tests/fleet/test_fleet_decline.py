"""FL10 (FLEET.md §13.3): a job whose data one host cannot read. Host c's data roots leave
out the shared dataset (as a host that lacks a mount would), hosts a (1 GPU) and c (2).

- A 1-GPU job that c claims while a is busy: c checks the paths before it builds anything,
  declines (T4a, the reason recorded), and a runs the job once its GPU is free.
- A 2-GPU job only c can hold: c declines it, and since no other live node could run it,
  the job fails at once with the 422 a submission on c would have had (T4c), its
  ``failed`` published in stream ``DPD``; no host claims and declines it around the fleet.

The run oracle sees one run of the first job, on a, and none of the second.
"""

from __future__ import annotations

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
    try:
        yield hosts.up()
    finally:
        hosts.down()


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
    assert error["reason"] == "missing_file" and error["code"] == 422, error
    assert "dataset.directories[0].path" in error["message"]
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
