"""A dead host neither loses a job nor lets one run twice (FLEET.md §13.3 FL3, FL4 hold, the
operator's drain and node-down), with three real hosts on a real 3-node NATS cluster.

Hosts a, b, c have one GPU each; ``node_ttl`` is 3 s. A job is put on b by draining a and c
while it is placed (which is also the drain test). The run oracle (``DPD_SIM_RUN_LEDGER``)
sees every run of every trainer: a second run of a task, at any time, shows there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest

from dpd.events.acks import acks_path
from dpd.events.subjects import job_subject
from dpd.fleet.kv import Bucket, Entry, jobs_spec
from dpd.fleet.records import Fence, JobRecord, JobState, enc
from dpd.fleet.transitions import Actor, ClaimFacts, NodeFacts, claim
from dpd.fleet.transitions import start as start_run
from dpd.supervisor import outputs
from tests.daemon_harness import job_processes
from tests.fleet.conftest import connect
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_hosts import kv_records
from tests.waiting import wait_for

pytestmark = pytest.mark.fleet

LONG_EPOCHS = 120  # about 20 s: outlives 2 x node_ttl away and a daemon restart


@pytest.fixture(scope="module")
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet-loss"), {"a": 1, "b": 1, "c": 1})
    try:
        yield hosts.up()
    finally:
        hosts.down()


@pytest.fixture(autouse=True)
def whole_fleet(fleet: Fleet) -> Iterator[None]:
    """Every host up and draining nothing after each test, whatever the test left."""
    yield
    for name, host in fleet.hosts.items():
        if host.process is None or host.process.poll() is not None:
            back(fleet, name)
    for name in fleet.hosts:
        fleet["a"].request("POST", f"/api/v1/fleet/nodes/{name}/drain", {"undo": True})


def record_of(cluster: NatsCluster, task_id: str) -> JobRecord | None:
    return kv_records(cluster).get(task_id)


def stream_events(cluster: NatsCluster, task_id: str) -> list[dict[str, Any]]:
    """Every event of the task that stream ``DPD`` holds, in stream order."""

    async def read() -> list[dict[str, Any]]:
        nc = await connect(cluster.urls)
        try:
            js = nc.jetstream()
            last = (await js.stream_info("DPD")).state.last_seq  # a running job adds more
            sub = await js.pull_subscribe(job_subject("dpd", task_id, ">"), stream="DPD")
            found: list[dict[str, Any]] = []
            done = False
            while not done:
                try:
                    batch = await sub.fetch(500, timeout=1)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                for msg in batch:
                    found.append(json.loads(msg.data))
                    await msg.ack()
                    done = done or msg.metadata.sequence.stream >= last
            await sub.unsubscribe()
            return found
        finally:
            await nc.close()

    return asyncio.run(read())


def ack_record(fleet: Fleet, name: str) -> dict[str, Any]:
    path = acks_path(fleet[name].root / "state")
    return json.loads(path.read_text()) if path.exists() else {}


def nodes(fleet: Fleet, host: str = "a") -> dict[str, dict[str, Any]]:
    code, body = fleet[host].request("GET", "/api/v1/fleet/nodes")
    assert code == 200, body
    return {n["node"]: n for n in body["data"]["nodes"]}


def drain(fleet: Fleet, node: str, undo: bool = False, via: str = "a") -> dict[str, Any]:
    code, body = fleet[via].request("POST", f"/api/v1/fleet/nodes/{node}/drain", {"undo": undo})
    assert code == 200, body
    return body["data"]  # type: ignore[no-any-return]


def dpd_fleet(fleet: Fleet, via: str, *argv: str) -> str:
    """``dpd fleet ARGV --url <via's url>`` as an operator types it; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "dpd", "fleet", *argv, "--url", fleet[via].url],
        capture_output=True, text=True, timeout=30, env={**os.environ, "DPD_API_KEY": "unused"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_on_b(fleet: Fleet, cluster: NatsCluster, epochs: int = LONG_EPOCHS, **config: Any) -> str:
    """Submit a job (not pinned) while a and c drain: b takes it; then a and c take jobs
    again. Returns once b's trainer runs."""
    for node in ("a", "c"):
        assert drain(fleet, node)["draining"] is True
    wait_for(lambda: all(nodes(fleet, "b")[n]["state"] == "draining" for n in ("a", "c")))
    task_id = f"loss-{uuid.uuid4().hex[:8]}"
    doc = fleet.job(task_id=task_id)
    doc["config"]["epochs"] = epochs
    doc["config"].update(config)
    code, body = fleet["a"].request("POST", "/api/v1/training/start", doc)
    assert code == 201, body
    b = fleet["b"]
    wait_for(lambda: (b.job_state(task_id) or {}).get("status") == "running", timeout=60)
    wait_for(lambda: any(r.task == task_id for r in fleet.runs()), timeout=30)
    for node in ("a", "c"):
        assert drain(fleet, node, undo=True)["draining"] is False
    record = wait_for(  # the owner reported the run (T5): the record says running
        lambda: (lambda r: r if r is not None and r.state is JobState.RUNNING else None)(
            record_of(cluster, task_id)
        ),
        timeout=30,
        interval=0.2,
    )
    assert record.owner is not None and record.owner.node == "b"
    return task_id


def power_off(fleet: Fleet, name: str, task_id: str) -> None:
    """kill -9 the host's daemon and every process of its job, the shim first (so that no
    exit is recorded, as when the power goes), then the trainer's process group."""
    host = fleet[name]
    host.kill9()
    shim = json.loads((host.spool / "jobs" / task_id / "shim.json").read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(shim["shim_pid"]), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(shim["trainer_pgid"]), signal.SIGKILL)
    for pid in job_processes(task_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not job_processes(task_id), timeout=10)


def checkpointed(fleet: Fleet, task_id: str) -> bool:
    run_dir = outputs.latest_run_dir(fleet.shared / "training_runs" / task_id)
    return run_dir is not None and outputs.latest_checkpoint(run_dir) is not None


def held(cluster: NatsCluster, task_id: str) -> JobRecord | None:
    record = record_of(cluster, task_id)
    return record if record is not None and record.lost is not None else None


def finished(cluster: NatsCluster, task_id: str) -> JobRecord | None:
    record = record_of(cluster, task_id)
    return record if record is not None and record.terminal else None


def back(fleet: Fleet, name: str) -> None:
    """Start the host again and wait until every host sees it alive."""
    fleet[name].start()
    for host in fleet.hosts.values():
        wait_for(lambda h=host: fleet._sees_all(h), timeout=30)  # type: ignore[misc]


def test_drain_stops_new_placements_and_undo_restores_them(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """Drain b: a job submitted on b runs elsewhere; b's drained state shows in ``dpd fleet
    nodes`` on every host; undone, b takes jobs again (a and c drained meanwhile)."""
    assert drain(fleet, "b", via="c")["draining"] is True
    wait_for(lambda: all(nodes(fleet, h)["b"]["state"] == "draining" for h in fleet.hosts))
    task_id = f"drain-{uuid.uuid4().hex[:8]}"
    code, body = fleet["b"].request("POST", "/api/v1/training/start", fleet.job(task_id=task_id))
    assert code == 201, body
    done = wait_for(lambda: finished(cluster, task_id), timeout=60, interval=0.5)
    assert done.state is JobState.COMPLETED and done.owner is not None
    assert done.owner.node in ("a", "c")
    table = dpd_fleet(fleet, "a", "nodes")  # the operator's view: b draining
    assert any(line.split()[:2] == ["b", "draining"] for line in table.splitlines()), table
    undone = json.loads(dpd_fleet(fleet, "c", "drain", "b", "--undo", "--json"))
    assert undone["draining"] is False
    again = run_on_b(fleet, cluster, epochs=1)  # a and c drained: b takes it
    done = wait_for(lambda: finished(cluster, again), timeout=60, interval=0.5)
    assert done.state is JobState.COMPLETED and done.owner and done.owner.node == "b"
    code, body = fleet["a"].request("POST", "/api/v1/fleet/nodes/nobody/drain", {})
    assert code == 404, body
    code, body = fleet["a"].request("POST", "/api/v1/fleet/nodes/b/drain", {"undo": "yes"})
    assert code == 400, body


@pytest.mark.slow
def test_fl3_daemon_away_past_the_ttl_its_training_goes_on_held_then_readopted(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL3 (the 1 s restart is test_fleet_hosts.py's FL3): kill -9 b's daemon while its
    training runs and restart it after 2 x node_ttl (hold). The training is never
    interrupted; meanwhile the others show the job ``node_state: lost`` (held, not
    requeued) and b lost; back, b re-adopts the run and clears the flag while it still
    runs; the job completes once, on b."""
    task_id = run_on_b(fleet, cluster)
    fleet["b"].kill9()
    started = time.monotonic()
    record = wait_for(lambda: held(cluster, task_id), timeout=30, interval=0.3)
    assert record.state is JobState.RUNNING and record.attempt == 1  # held, not requeued
    assert record.lost is not None and record.lost.node == "b"
    assert record.lost.observed_by in ("a", "c")
    view = nodes(fleet, "a")["b"]
    assert view["state"] == "lost" and task_id in view["held"] and view["lost_since"]
    time.sleep(max(0.0, 2 * 3.0 - (time.monotonic() - started)))
    assert [r.end for r in fleet.runs() if r.task == task_id] == [None]  # still training
    back(fleet, "b")
    cleared = wait_for(
        lambda: (lambda r: r if r is not None and r.lost is None else None)(
            record_of(cluster, task_id)
        ),
        timeout=30,
        interval=0.3,
    )
    assert cleared.state is JobState.RUNNING  # cleared by the re-adoption, not by the end
    assert cleared.attempt == 1 and cleared.owner is not None and cleared.owner.node == "b"
    record = wait_for(lambda: finished(cluster, task_id), timeout=120, interval=0.5)
    assert record.state is JobState.COMPLETED and record.attempt == 1, record.result
    assert record.requeues == 0
    runs = [r for r in fleet.runs() if r.task == task_id]
    assert len(runs) == 1 and runs[0].completed and runs[0].host == "b"
    assert not duplicates(runs)


@pytest.mark.slow
def test_fl4_hold_a_host_back_on_a_new_boot_has_its_job_requeued_once(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL4 (hold): "power off" b (kill -9 its daemon and every process of the job): the
    job is held while b is away; b returns with a new boot id: the job is requeued right
    away and completes once, from its checkpoint, on some host; no two runs overlap."""
    task_id = run_on_b(fleet, cluster, epochs=60, checkpoint_every_n_epochs=5)
    wait_for(lambda: checkpointed(fleet, task_id), timeout=30)
    power_off(fleet, "b", task_id)
    record = wait_for(lambda: held(cluster, task_id), timeout=30, interval=0.3)
    assert record.state is JobState.RUNNING and record.requeues == 0
    fleet["b"].env["DPD_TEST_BOOT_ID"] = str(uuid.uuid4())  # a reboot
    back(fleet, "b")
    requeued = wait_for(
        lambda: (lambda r: r if r is not None and r.requeues == 1 else None)(
            record_of(cluster, task_id)
        ),
        timeout=30,
        interval=0.3,
    )
    assert any(h.outcome == "node_lost" for h in requeued.history)
    record = wait_for(lambda: finished(cluster, task_id), timeout=120, interval=0.5)
    assert record.state is JobState.COMPLETED and record.attempt == 2, record.result
    assert (record.spec or {}).get("resume_from_checkpoint") is True
    runs = sorted((r for r in fleet.runs() if r.task == task_id), key=lambda r: r.start)
    assert len(runs) == 2 and not runs[0].completed and runs[1].completed, runs
    assert runs[0].end is None or runs[0].end <= runs[1].start  # never two at once
    assert not any(r.violation for r in runs)
    assert runs[1].host == record.owner.node if record.owner else False


@pytest.mark.slow
def test_node_down_requeues_the_held_job_of_a_dead_host(fleet: Fleet, cluster: NatsCluster) -> None:
    """An operator marks a powered-off host down: its held job is requeued and completes
    elsewhere, once (from the beginning: the lost run saved no checkpoint). Refused (409)
    while the host heartbeats. The host, back on a new boot, clears the mark itself."""
    code, body = fleet["a"].request("POST", "/api/v1/fleet/nodes/b/down", {"reason": "test"})
    assert code == 409, body
    task_id = run_on_b(fleet, cluster, epochs=40)
    power_off(fleet, "b", task_id)
    wait_for(lambda: held(cluster, task_id), timeout=30, interval=0.3)
    code, body = fleet["c"].request("POST", "/api/v1/fleet/nodes/b/down", {"reason": "psu"})
    assert code == 200, body
    assert body["data"]["down"]["reason"] == "psu"
    record = wait_for(lambda: finished(cluster, task_id), timeout=120, interval=0.5)
    assert record.state is JobState.COMPLETED and record.attempt == 2, record.result
    assert record.owner is not None and record.owner.node in ("a", "c")
    assert any(h.outcome == "node_lost" for h in record.history)
    runs = sorted((r for r in fleet.runs() if r.task == task_id), key=lambda r: r.start)
    assert len(runs) == 2 and runs[1].completed and not any(r.violation for r in runs)
    fleet["b"].env["DPD_TEST_BOOT_ID"] = str(uuid.uuid4())
    back(fleet, "b")
    wait_for(lambda: nodes(fleet, "a")["b"]["down"] is None, timeout=30)


def test_self_audit_resolves_records_left_under_a_live_owner(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL14's self-audit: records that name b (its node, this boot) as owner but that no
    claim, launch or job directory of b's stands behind (a lost reply, a crash between two
    writes of an earlier daemon) are resolved by b itself, though b is alive and no reaper
    may touch them: a claim is given back (T4a) and runs once, elsewhere or on b; a started
    run with no local job is failed ``node_state_lost``."""
    for node in ("a", "b", "c"):
        drain(fleet, node)
    wait_for(lambda: all(n["state"] == "draining" for n in nodes(fleet, "b").values()))
    claimed_id, started_id = (f"audit-{k}-{uuid.uuid4().hex[:6]}" for k in ("c", "s"))
    for task_id in (claimed_id, started_id):
        code, body = fleet["a"].request(
            "POST", "/api/v1/training/start", fleet.job(task_id=task_id)
        )
        assert code == 201, body
    ghost = Actor("b", "an-earlier-daemon", fleet["b"].env["DPD_TEST_BOOT_ID"], "machine-b")
    asyncio.run(claim_as(cluster, ghost, claimed_id, start=False))
    asyncio.run(claim_as(cluster, ghost, started_id, start=True))
    given_back = wait_for(
        lambda: (lambda r: r if r and r.state is JobState.QUEUED and r.attempt == 1 else None)(
            record_of(cluster, claimed_id)
        ),
        timeout=30,
        interval=0.3,
    )
    assert given_back.history[-1].outcome == "declined" and given_back.owner is None
    lost = wait_for(lambda: finished(cluster, started_id), timeout=30, interval=0.3)
    assert lost.state is JobState.FAILED and lost.result is not None
    assert lost.result.reason == "node_state_lost" and lost.requeues == 0
    for node in ("a", "b", "c"):
        drain(fleet, node, undo=True)
    done = wait_for(lambda: finished(cluster, claimed_id), timeout=60, interval=0.5)
    assert done.state is JobState.COMPLETED and done.attempt == 2
    assert [r.task for r in fleet.runs()].count(claimed_id) == 1
    assert started_id not in [r.task for r in fleet.runs()]


async def claim_as(cluster: NatsCluster, actor: Actor, task_id: str, start: bool) -> None:
    """T2 (and T3) of ``task_id`` written as ``actor`` would have: an earlier daemon of b."""
    nc = await connect(cluster.urls)
    try:
        jobs = Bucket(nc.jetstream(), jobs_spec("dpd", 3))
        facts = ClaimFacts(NodeFacts("b", "t", {}, {0: 81920}), Fence(), (0,), 0.0, 3.0)

        def fn(entry: Entry | None) -> bytes:
            assert entry is not None
            record = claim(JobRecord.from_json(entry.value), actor, facts, time.time())
            return (start_run(record, actor, 1, time.time()) if start else record).to_json()

        await jobs.cas_update(enc(task_id), fn)
    finally:
        await nc.close()


@pytest.mark.slow
def test_fl5_hold_a_paused_daemon_keeps_its_job_and_clears_the_flag(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    """FL5 (hold, reduced): b's daemon SIGSTOPped past 2 x node_ttl while its training runs
    (a pause or a partition, as the others see it): the job is held, not requeued; after
    SIGCONT b heartbeats again, its self-audit clears ``node_state`` while the job still
    runs, and the job completes once, on b."""
    task_id = run_on_b(fleet, cluster)
    process = fleet["b"].process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        record = wait_for(lambda: held(cluster, task_id), timeout=30, interval=0.3)
        assert record.state is JobState.RUNNING and record.requeues == 0
        time.sleep(3.0)  # well past the ttl: still held, never requeued in hold mode
        record = record_of(cluster, task_id)
        assert record is not None and record.lost is not None and record.attempt == 1
        published_by_b = max(e["seq"] for e in stream_events(cluster, task_id) if e["node"] == "b")
    finally:
        process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    # §9.7: b still owns attempt 1: its gate holds the events written since the pause only
    # until a renewal and the table read after it, then lets them out, in order
    wait_for(
        lambda: any(e["node"] == "b" and e["seq"] > published_by_b
                    for e in stream_events(cluster, task_id)),
        timeout=30,
        interval=0.2,
    )  # fmt: skip
    released_after = time.monotonic() - resumed
    cleared = wait_for(
        lambda: (lambda r: r if r is not None and r.lost is None else None)(
            record_of(cluster, task_id)
        ),
        timeout=30,
        interval=0.3,
    )
    assert cleared.state is JobState.RUNNING and cleared.attempt == 1
    done = wait_for(lambda: finished(cluster, task_id), timeout=120, interval=0.5)
    assert done.state is JobState.COMPLETED and done.attempt == 1 and done.requeues == 0
    runs = [r for r in fleet.runs() if r.task == task_id]
    assert len(runs) == 1 and runs[0].completed and runs[0].host == "b"
    last = json.loads(
        (fleet["b"].spool / "jobs" / task_id / "events.jsonl").read_text().splitlines()[-1]
    )
    wait_for(lambda: ack_record(fleet, "b")["tasks"].get(task_id) == last["seq"], timeout=30)
    assert task_id not in ack_record(fleet, "b").get("muted", {})
    seqs = sorted(e["seq"] for e in stream_events(cluster, task_id) if e["node"] == "b")
    assert seqs[-1] == last["seq"]
    print(f"FL5 hold: b's events since the pause published {released_after:.1f} s after SIGCONT")
