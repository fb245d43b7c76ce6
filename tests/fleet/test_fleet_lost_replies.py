"""FL14, its first part (FLEET.md §13.3): lost replies. Host b reaches NATS through a proxy
(``tests/fleet/proxy.py``) that swallows the PubAck of b's next write to ``dpd_jobs``: the
write is stored, b never hears so, as when a leader changes or a connection drops between
the two. Lost in turn: the create of a REST submission, the create of a spool file, and the
claim (T2), fence (T3) and running (T5) of a job only b can hold.

Each write is resolved (sent again with the same message id; the stream's answer settles
it): the REST client gets its 201, the spool file becomes one job, the claimed job starts
once and completes; no record is left claimed or starting, and the run oracle sees one run
per task.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dpd.fleet.records import JobState
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.proxy import NatsProxy, puback_of
from tests.fleet.test_fleet_hosts import all_done, kv_records, submit
from tests.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

LOST = puback_of("KV_dpd_jobs")


@pytest.fixture
def fleet(
    cluster: NatsCluster, proxy: NatsProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet14"), {"a": 1, "b": 2})
    hosts["b"].config["nats"]["url"] = proxy.url
    with hosts:
        yield hosts


def test_fl14_writes_whose_replies_are_lost_are_resolved_never_doubled(
    fleet: Fleet, cluster: NatsCluster, proxy: NatsProxy
) -> None:
    tag = uuid.uuid4().hex[:6]
    rest_id, big_id = f"fl14-rest-{tag}", f"fl14-big-{tag}"

    proxy.drop(LOST)  # the create of a REST submission on b
    code, body = submit(fleet, "b", fleet.job(task_id=rest_id))
    assert code == 201, body
    assert len(proxy.dropped) == 1

    proxy.drop(LOST)  # the create of a spool file on b
    dropped = fleet["b"].drop(f"fl14-{tag}.json", fleet.job(description=f"fl14-spool-{tag}"))
    wait_for(lambda: not dropped.exists(), timeout=60)
    assert len(proxy.dropped) == 2

    wait_for(lambda: all_done(cluster, {rest_id}), timeout=90)  # b idle again
    for _ in range(3):  # T2, T3, T5 of a job only b (2 GPUs) can hold
        proxy.drop(LOST)
    big = fleet.job(task_id=big_id)
    big["data_parallel"] = 2
    assert submit(fleet, "a", big)[0] == 201
    wait_for(lambda: proxy.armed() == 0, timeout=90)
    assert len(proxy.dropped) == 5

    records = kv_records(cluster)
    spooled = [
        r for r in records.values() if (r.spec or {}).get("description") == f"fl14-spool-{tag}"
    ]
    assert len(spooled) == 1, spooled
    ids = {rest_id, big_id, spooled[0].task_id}
    records = wait_for(lambda: all_done(cluster, ids), timeout=120)
    for task_id in ids:
        assert records[task_id].state is JobState.COMPLETED, records[task_id]
    assert records[big_id].attempt == 1 and records[big_id].owner is not None
    assert records[big_id].owner.node == "b"
    assert not [r for r in kv_records(cluster).values() if r.state in (
        JobState.CLAIMED, JobState.STARTING)]  # fmt: skip
    runs = [r for r in fleet.runs() if r.task in ids]
    assert sorted(r.task for r in runs) == sorted(ids) and all(r.completed for r in runs)
    assert not duplicates(runs)
    assert fleet["b"].log().count("reply of a write lost") >= 5
