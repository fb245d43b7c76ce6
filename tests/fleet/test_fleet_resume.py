"""Resume from any host (FLEET.md §8.2 T12, §9.6): a job stopped on c is resumed through a,
as a new attempt in the fleet's record that any eligible node may claim; it runs once more,
from its checkpoint, and the run oracle sees exactly two runs of it, one after the other.

Hosts a (2 GPUs), b (1) and c (4) on a real 3-node NATS cluster; the job needs 4 GPUs, so
only c can run it, both times (c takes over its own ended job directory).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from dpd.fleet.records import JobRecord, JobState
from dpd.supervisor import outputs
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_hosts import kv_records
from tests.waiting import wait_for

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(
        cluster, tmp_path_factory.mktemp("resume"), {"a": 2, "b": 1, "c": 4}, step_seconds=0.05
    )
    try:
        yield hosts.up()
    finally:
        hosts.down()


def record_in(fleet: Fleet, task_id: str, *states: JobState) -> JobRecord | None:
    record = kv_records(fleet.cluster).get(task_id)
    return record if record is not None and record.state in states else None


def checkpointed(fleet: Fleet, task_id: str) -> bool:
    run_dir = outputs.latest_run_dir(fleet.shared / "training_runs" / task_id)
    return run_dir is not None and outputs.latest_checkpoint(run_dir) is not None


def test_a_job_stopped_on_c_is_resumed_through_a_and_runs_once_more(fleet: Fleet) -> None:
    task_id = f"resume-{uuid.uuid4().hex[:8]}"
    doc = fleet.job(task_id=task_id, data_parallel=4)
    doc["config"].update(epochs=60, checkpoint_every_n_epochs=2)  # about 6 s
    code, body = fleet["a"].request("POST", "/api/v1/training/start", doc)
    assert code == 201, body
    wait_for(lambda: record_in(fleet, task_id, JobState.RUNNING), timeout=60, interval=0.2)
    wait_for(lambda: checkpointed(fleet, task_id), timeout=60, interval=0.2)

    # a running job cannot be resumed: the single-host refusal, from a
    code, body = fleet["a"].request("POST", f"/api/v1/training/{task_id}/resume")
    assert code == 409 and body["data"]["status"] == "running", body

    code, body = fleet["c"].request("POST", f"/api/v1/training/stop/{task_id}")
    assert code == 200, body
    stopped = wait_for(lambda: record_in(fleet, task_id, JobState.STOPPED), timeout=30)
    assert fleet["c"].job_state(task_id)["status"] == "stopped"  # type: ignore[index]

    code, body = fleet["a"].request("POST", f"/api/v1/training/{task_id}/resume")
    assert code == 200, body
    assert body["message"] == "training task queued for resume"
    assert body["data"]["task_id"] == task_id and body["data"]["status"] == "queued", body
    assert body["data"]["fleet"]["state"] == "queued"

    done = wait_for(
        lambda: record_in(fleet, task_id, JobState.COMPLETED, JobState.FAILED),
        timeout=90,
        interval=0.2,
    )
    assert done.state is JobState.COMPLETED, done
    assert done.attempt == stopped.attempt + 1
    assert done.owner is not None and done.owner.node == "c"
    state = fleet["c"].job_state(task_id)
    assert state is not None and state["status"] == "completed", state
    events = (fleet["c"].spool / "jobs" / task_id / "events.jsonl").read_text().splitlines()
    statuses = [json.loads(e)["data"] for e in events if '"type":"status"' in e]
    resumed = [d for d in statuses if d["status"] == "queued" and d.get("resume_from")]
    assert len(resumed) == 1, statuses  # the second run resumed the first one's checkpoint

    runs = sorted((r for r in fleet.runs() if r.task == task_id), key=lambda r: r.start)
    assert len(runs) == 2, runs
    first, second = runs
    # never two at once: the second run found the task's lock free (the first held it to its
    # death) and began after the first's recorded end (absent when its exit was cut short)
    assert not any(r.violation for r in runs), runs
    assert first.end is None or first.end <= second.start, runs
    assert second.completed, runs
    assert not duplicates([r for r in fleet.runs() if r.task != task_id])

    # resuming it again: it completed, so the single-host refusal
    code, body = fleet["b"].request("POST", f"/api/v1/training/{task_id}/resume")
    assert code == 409 and body["data"]["status"] == "completed", body
