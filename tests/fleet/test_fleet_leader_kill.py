"""FL8 reduced (FLEET.md §13.3): the leader of ``KV_dpd_jobs`` is killed with SIGKILL in the
middle of a burst of submissions to three dpd hosts. Every acknowledged submission becomes
exactly one job that completes, and the run oracle sees one run per task.

Clients retry a 503 (the queue without a leader for a few seconds) with the same task_id,
as the API asks them to; a 200 on a retry is the acknowledgement of an earlier attempt whose
answer was lost.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from dpd.fleet.records import JobState
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_hosts import HOSTS, all_done, kv_records, submit
from tests.waiting import wait_for

pytestmark = pytest.mark.fleet

JOBS = 24
KILL_AFTER = 6


@pytest.fixture
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet8"), {"a": 2, "b": 1, "c": 4})
    try:
        yield hosts.up()
    finally:
        hosts.down()


@pytest.mark.timeout(300)  # 15 s here; a leader election on a loaded machine can take longer
def test_fl8_killing_the_kv_leader_mid_burst_loses_and_duplicates_nothing(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    tag = uuid.uuid4().hex[:6]
    ids = [f"fl8-{tag}-{i}" for i in range(JOBS)]
    acked: dict[str, int] = {}
    unavailable = 0
    lock = threading.Lock()

    def client(host: str, mine: list[str]) -> None:
        nonlocal unavailable
        for task_id in mine:
            doc = fleet.job(task_id=task_id)
            if int(task_id.rsplit("-", 1)[1]) % 3 == 2:
                doc["data_parallel"] = 2
            deadline = time.monotonic() + 90
            while True:
                try:
                    code, body = submit(fleet, host, doc)
                except OSError:  # the answer itself was lost: same task_id again
                    code, body = 0, {}
                if code in (200, 201):
                    with lock:
                        acked[task_id] = code
                    break
                assert code in (0, 503), (task_id, code, body)
                with lock:
                    unavailable += 1
                assert time.monotonic() < deadline, f"{task_id}: still refused after 90 s"
                time.sleep(0.3)

    leader = cluster.leader_of("KV_dpd_jobs")
    threads = [
        threading.Thread(target=client, args=(h, ids[i :: len(HOSTS)])) for i, h in enumerate(HOSTS)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acked) >= KILL_AFTER, timeout=60)
    cluster.kill(leader)
    killed_at = time.monotonic()
    for thread in threads:
        thread.join(120)
    assert set(acked) == set(ids)
    cluster.start(leader)
    records = wait_for(lambda: all_done(cluster, set(ids)), timeout=240, interval=1)
    runs = fleet.runs()
    for task_id in ids:
        assert records[task_id].state is JobState.COMPLETED, records[task_id]
        mine = [r for r in runs if r.task == task_id]
        assert len(mine) == 1 and mine[0].completed, mine
        owner = records[task_id].owner
        assert owner is not None
        assert [h for h, _ in fleet.local_jobs()[task_id]] == [owner.node]
    assert not duplicates([r for r in runs if r.task in records])
    print(
        f"FL8: {JOBS} jobs, leader {leader} killed after {KILL_AFTER} acks; "
        f"{unavailable} submissions answered 503 and retried; "
        f"all done {time.monotonic() - killed_at:.1f} s after the kill"
    )


@pytest.mark.slow
@pytest.mark.parametrize("down", [(0, 1, 2), (1, 2)], ids=["whole-cluster", "quorum-lost"])
def test_nats_down_rest_answers_503_spool_files_wait_and_a_running_job_goes_on(
    fleet: Fleet, cluster: NatsCluster, down: tuple[int, ...]
) -> None:
    """FL9: the whole cluster down, or two of three servers (no quorum: the one left
    answers, but nothing can be written). A REST submission answers 503 with retry_after
    and creates nothing; a dropped file stays in incoming/; a job already running trains
    on. Once the servers are back, the client's retry with the same task_id is a 201, the
    file is ingested, and each job runs exactly once to completion."""
    tag = uuid.uuid4().hex[:6]
    task_id = f"outage-{tag}"
    running_id = f"outage-running-{tag}"
    long_job = fleet.job(task_id=running_id)
    long_job["config"]["epochs"] = 60  # about 10 s: it runs through the outage
    assert submit(fleet, "a", long_job)[0] == 201
    wait_for(lambda: any(r.task == running_id for r in fleet.runs()), timeout=60)
    for i in down:
        cluster.kill(i)
    code, body = submit(fleet, "b", fleet.job(task_id=task_id))
    assert code == 503, body
    assert body["data"]["retry_after"] == 5
    dropped = fleet["a"].drop(f"outage-{tag}.json", fleet.job(description=f"outage-{tag}"))
    wait_for(lambda: "stay in incoming/" in fleet["a"].log(), timeout=60)
    assert dropped.exists()
    for i in down:
        cluster.start(i, wait=False)
    cluster.wait_healthy()
    deadline = time.monotonic() + 90
    while (code := submit(fleet, "b", fleet.job(task_id=task_id))[0]) == 503:
        assert time.monotonic() < deadline, "still 503 after the servers came back"
        time.sleep(0.5)
    assert code == 201
    wait_for(lambda: not dropped.exists(), timeout=60)

    def from_spool() -> list[str]:
        return [
            t
            for t, r in kv_records(cluster).items()
            if (r.spec or {}).get("description") == f"outage-{tag}"
        ]

    # the file is removed only after its record is committed: the record is there now
    spool_ids = from_spool()
    assert len(spool_ids) == 1, spool_ids
    ids = {task_id, running_id, *spool_ids}
    done = wait_for(lambda: all_done(cluster, ids), timeout=120, interval=1)
    runs = fleet.runs()
    for tid in ids:
        assert done[tid].state is JobState.COMPLETED
        assert len([r for r in runs if r.task == tid]) == 1, tid  # the running one: never cut
