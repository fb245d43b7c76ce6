"""Resume from any host (FLEET.md §8.2 T12, §9.6): a job stopped on c is resumed through a,
as a new attempt in the fleet's record that any eligible node may claim; it runs once more,
from its checkpoint, and the run oracle sees exactly two runs of it, one after the other.

Hosts a (2 GPUs), b (1) and c (4) on a real 3-node NATS cluster; the job needs 4 GPUs, so
only c can run it, both times (c takes over its own ended job directory). A second job is
resumed on another host than its first run's: its events go on in stream ``DPD`` after the
first host's (§9.7), none dropped as a duplicate of the other host's message ids.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dpd.fleet.records import JobRecord, JobState
from dpd.supervisor import outputs
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_hosts import kv_records
from tests.fleet.test_fleet_loss import drain, stream_events
from tests.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]  # 30 s; its pieces have unit tests in CI


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


def local_events(fleet: Fleet, host: str, task_id: str) -> list[dict[str, Any]]:
    path = fleet[host].spool / "jobs" / task_id / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_job_resumed_on_another_host_numbers_its_events_on_in_the_stream(
    fleet: Fleet,
) -> None:
    """Run 1 on a (c drained), stopped; resumed through b with a drained: run 2 on c. c's
    events.jsonl starts after the last seq a published, so stream ``DPD`` holds every event
    of both hosts once, under distinct seqs: a's, then c's (the ``completed`` among them)."""
    task_id = f"moved-{uuid.uuid4().hex[:8]}"
    doc = fleet.job(task_id=task_id, data_parallel=2)  # a (2 GPUs) or c (4)
    doc["config"].update(epochs=60, checkpoint_every_n_epochs=2)
    assert drain(fleet, "c")["draining"]
    try:
        code, body = fleet["a"].request("POST", "/api/v1/training/start", doc)
        assert code == 201, body
        wait_for(lambda: record_in(fleet, task_id, JobState.RUNNING), timeout=60, interval=0.2)
        wait_for(lambda: checkpointed(fleet, task_id), timeout=60, interval=0.2)
        code, body = fleet["b"].request("POST", f"/api/v1/training/stop/{task_id}")
        assert code in (200, 202), body
        wait_for(lambda: record_in(fleet, task_id, JobState.STOPPED), timeout=30)
    finally:
        assert not drain(fleet, "c", undo=True)["draining"]
    assert drain(fleet, "a")["draining"]
    try:
        code, body = fleet["b"].request("POST", f"/api/v1/training/{task_id}/resume")
        assert code == 200, body
        done = wait_for(
            lambda: record_in(fleet, task_id, JobState.COMPLETED, JobState.FAILED),
            timeout=90,
            interval=0.2,
        )
    finally:
        assert not drain(fleet, "a", undo=True)["draining"]
    assert done.state is JobState.COMPLETED and done.owner is not None, done
    assert done.owner.node == "c", done

    on_a, on_c = local_events(fleet, "a", task_id), local_events(fleet, "c", task_id)
    assert on_c[0]["seq"] > on_a[-1]["seq"], (on_a[-1], on_c[0])  # c numbered on from a
    expected = {(e["node"], e["seq"]) for e in on_a + on_c}

    def all_stored() -> list[dict[str, Any]] | None:
        stored = stream_events(fleet.cluster, task_id)
        nodes = {e["node"] for e in stored}
        seen = {(e["node"], e["seq"]) for e in stored}
        return stored if seen >= expected and "b" in nodes else None

    stored = wait_for(all_stored, timeout=30, interval=0.5)
    seqs = [e["seq"] for e in stored]
    # each once, none shared: a's events, b's announcement of the resume, c's events
    assert len(seqs) == len(set(seqs)) == len(on_a) + 1 + len(on_c)
    [resumed] = [e for e in stored if e["node"] == "b"]
    assert resumed["data"]["status"] == "queued" and resumed["data"]["resumed"] is True
    assert on_a[-1]["seq"] < resumed["seq"] < on_c[0]["seq"], (on_a[-1], resumed, on_c[0])
    assert [e for e in stored if e["node"] == "c"] == on_c  # c's very records, in order
    last = stored[-1]
    assert last["type"] == "status" and last["data"]["status"] == "completed", last


def test_a_queued_job_cancelled_through_another_host_shows_stopped_in_the_stream(
    fleet: Fleet,
) -> None:
    """T8 (§9.7): no host holds the job (every one drains), so the host that takes the stop
    records it in the fleet's record and publishes its ``stopped`` to stream ``DPD``."""
    task_id = f"cancel-{uuid.uuid4().hex[:8]}"
    for node in ("a", "b", "c"):
        assert drain(fleet, node)["draining"]
    try:
        code, body = fleet["a"].request(
            "POST", "/api/v1/training/start", fleet.job(task_id=task_id)
        )
        assert code == 201, body
        code, body = fleet["c"].request("POST", f"/api/v1/training/stop/{task_id}")
        assert code == 200 and body["data"]["status"] == "stopped", body
    finally:
        for node in ("a", "b", "c"):
            assert not drain(fleet, node, undo=True)["draining"]
    stored = wait_for(lambda: stream_events(fleet.cluster, task_id), timeout=30, interval=0.5)
    assert [(e["node"], e["seq"], e["data"]["status"]) for e in stored] == [("c", 2, "stopped")]
    assert stored[0]["data"]["previous"] == "queued"
    assert record_in(fleet, task_id, JobState.STOPPED) is not None
