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
from tests.fleet.test_fleet_hosts import HOSTS, all_done, submit
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
