"""The opt-in requeue policy (``node_loss = "requeue"``) with self-fencing (FLEET.md §9.4,
§13.3 FL4 and FL5 in requeue mode), with three real hosts on a real 3-node NATS cluster.

Timings (every host): ``node_ttl`` 3 s, ``fence_after`` 4 s, ``fence_check`` 0.5 s, stop 2 s,
SIGTERM wait 1 s, kill wait 1 s: a claim's fence deadline is 8.5 s; with ``fence_margin`` 1 s
and ``lost_after`` 8 s (8.5 + 1 < 3 + 8) the others requeue a lost owner's running job 8 s
after they confirmed its alive key gone. The run oracle (``DPD_SIM_RUN_LEDGER``) sees every
run of every trainer: two runs of a task at once would show there.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator

import pytest

from dpd.fleet.records import FenceMode, JobRecord, JobState, enc
from tests.fleet.conftest import connect
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_loss import (
    ack_record,
    back,
    checkpointed,
    drain,
    finished,
    power_off,
    record_of,
    run_on_b,
    stream_events,
)
from tests.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

REQUEUE = {
    "fleet": {"node_loss": "requeue", "fence_check": 0.5, "lost_after": 8.0},
    "trainer": {"term_timeout": 1, "kill_timeout": 1},
}
DEADLINE = 4 + 0.5 + 2 + 1 + 1  # fence_after + fence_check + stop + term + kill


@pytest.fixture(scope="module")
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(
        cluster, tmp_path_factory.mktemp("fleet-requeue"), {"a": 1, "b": 1, "c": 1},
        overrides=REQUEUE,
    )  # fmt: skip
    try:
        yield hosts.up()
    finally:
        hosts.down()


@pytest.fixture(autouse=True)
def whole_fleet(fleet: Fleet) -> Iterator[None]:
    """Every host up, running and draining nothing after each test."""
    yield
    process = fleet["b"].process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGCONT)
    for name, host in fleet.hosts.items():
        if host.process is None or host.process.poll() is not None:
            back(fleet, name)
    for name in fleet.hosts:
        drain(fleet, name, undo=True)


def requeued(cluster: NatsCluster, task_id: str) -> JobRecord | None:
    record = record_of(cluster, task_id)
    return record if record is not None and record.requeues >= 1 else None


def history(cluster: NatsCluster, task_id: str) -> list[JobRecord]:
    """Every stored revision of the task's record, oldest first."""

    async def read() -> list[JobRecord]:
        nc = await connect(cluster.urls)
        try:
            kv = await nc.jetstream().key_value("dpd_jobs")
            entries = await kv.history(enc(task_id))
            return [JobRecord.from_json(e.value) for e in entries if e.value]
        finally:
            await nc.close()

    return asyncio.run(read())


def test_fl4_requeue_a_powered_off_host_s_job_resumes_elsewhere_after_ttl_and_lost_after(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL4 (requeue): b's claim carries its fence contract; "power off" b (kill -9 its
    daemon, shim and trainer): the job is held, then requeued by a or c once b's alive key
    has been gone ``lost_after`` (not before), resumed from its checkpoint on a or c and
    completed; no two runs ever overlap."""
    task_id = run_on_b(fleet, cluster, epochs=60, checkpoint_every_n_epochs=5)
    record = record_of(cluster, task_id)
    assert record is not None and record.owner is not None
    assert record.owner.fence.mode is FenceMode.REQUEUE
    assert record.owner.fence.deadline_s == DEADLINE
    wait_for(lambda: checkpointed(fleet, task_id), timeout=30)
    power_off(fleet, "b", task_id)
    killed = time.monotonic()
    again = wait_for(lambda: requeued(cluster, task_id), timeout=40, interval=0.3)
    took = time.monotonic() - killed
    assert took >= 3 + 8  # node_ttl + lost_after: the fence had time to fire first
    assert any(h.outcome == "node_lost" and h.node == "b" for h in again.history)
    done = wait_for(lambda: finished(cluster, task_id), timeout=60, interval=0.5)
    assert done.state is JobState.COMPLETED and done.attempt == 2, done.result
    assert done.owner is not None and done.owner.node in ("a", "c")
    assert (done.spec or {}).get("resume_from_checkpoint") is True
    runs = sorted((r for r in fleet.runs() if r.task == task_id), key=lambda r: r.start)
    assert len(runs) == 2 and runs[0].host == "b" and runs[1].completed, runs
    assert runs[0].end is None or runs[0].end <= runs[1].start
    assert not any(r.violation for r in runs)
    print(f"FL4 requeue: requeued {took:.1f} s after the power-off")  # the figure


def test_fl5_requeue_a_paused_daemon_s_shim_fences_its_trainer_before_the_requeue(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL5 (requeue): b's daemon SIGSTOPped past ``node_ttl + lost_after``: b's shim (its
    daemon cannot) stops the trainer staged once the lease is older than ``fence_after``
    (save_quit: a checkpoint), before a or c requeue the job; the job resumes elsewhere and
    the oracle shows no overlap. After SIGCONT b starts nothing, writes nothing to the
    record, and its local job ends failed ``fenced``."""
    task_id = run_on_b(fleet, cluster)
    process = fleet["b"].process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        fenced = wait_for(
            lambda: [r for r in fleet.runs() if r.task == task_id and r.end is not None],
            timeout=30,
            interval=0.2,
        )
        stopped_after = time.monotonic() - paused
        assert record_of(cluster, task_id).attempt == 1  # type: ignore[union-attr]
        again = wait_for(
            lambda: (lambda r: r if r and r.state is JobState.RUNNING and r.attempt == 2
                     else None)(record_of(cluster, task_id)),
            timeout=40,
            interval=0.3,
        )  # fmt: skip
        requeued_after = time.monotonic() - paused
        assert again.owner is not None and again.owner.node in ("a", "c")
        assert fenced[0].host == "b"
        log = (fleet["b"].spool / "jobs" / task_id / "train.log").read_text()
        assert "Manually quitting" in log  # the shim's save_quit: it saved, then quit
        published_by_b = max(e["seq"] for e in stream_events(cluster, task_id) if e["node"] == "b")
    finally:
        process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    local = wait_for(
        lambda: (lambda s: s if s and s.get("status") == "failed" else None)(
            fleet["b"].job_state(task_id)
        ),
        timeout=30,
        interval=0.3,
    )
    assert (local.get("error") or {}).get("reason") == "fenced", local.get("error")
    # §9.7: b's gate held the superseded attempt's events until its table, confirmed after
    # a renewal, showed attempt 2, then muted the task; nothing of it left b after SIGCONT
    # (without the gate, b's ack record shows it publishing them instead)
    decided = wait_for(
        lambda: (lambda r: r if r.get("muted", {}).get(task_id) == 1
                 or r.get("tasks", {}).get(task_id, 0) > published_by_b else None)(
            ack_record(fleet, "b")
        ),
        timeout=30,
    )  # fmt: skip
    muted_after = time.monotonic() - resumed
    late = [(e["seq"], e["type"]) for e in stream_events(cluster, task_id)
            if e["node"] == "b" and e["seq"] > published_by_b]  # fmt: skip
    assert not late, late
    assert decided["tasks"].get(task_id, 0) <= published_by_b, decided
    assert decided["muted"].get(task_id) == 1, decided  # (FL4's task may be muted too)
    events = (fleet["b"].spool / "jobs" / task_id / "events.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["seq"] > published_by_b  # they exist, on b's disk
    done = wait_for(lambda: finished(cluster, task_id), timeout=90, interval=0.5)
    assert done.state is JobState.COMPLETED and done.attempt == 2, done.result
    runs = sorted((r for r in fleet.runs() if r.task == task_id), key=lambda r: r.start)
    assert len(runs) == 2 and runs[0].host == "b" and runs[1].host != "b", runs
    assert runs[0].end is not None and runs[0].end <= runs[1].start  # fenced first
    assert not duplicates([r for r in runs if r.violation])
    revisions = history(cluster, task_id)
    first_of_2 = next(i for i, r in enumerate(revisions) if r.attempt == 2)
    assert all(r.updated_by != "b" for r in revisions[first_of_2:]), [
        (r.updated_by, r.state.value) for r in revisions[first_of_2:]
    ]
    late = [e["seq"] for e in stream_events(cluster, task_id)
            if e["node"] == "b" and e["seq"] > published_by_b]  # fmt: skip
    assert not late, late  # still nothing, the job done on another host
    print(f"FL5 requeue: trainer fenced {stopped_after:.1f} s into the pause, "
          f"job requeued and running again after {requeued_after:.1f} s; "
          f"b's stale events muted {muted_after:.1f} s after SIGCONT")  # fmt: skip
