"""FL14, a watcher that misses an expiry (FLEET.md §13.3, §12 row 26): host a reaches NATS
through a proxy (``tests/fleet/proxy.py``) that drops every delivery of a's watch of
``dpd_alive`` while b's daemon is killed, so a's table never sees b's key expire, nor its
marker. a must still find b gone: b's entry stops changing, which makes it suspect, and a
leader read settles it. The job b was running is held (``node_state: lost``, observed by
a, the only other host), never requeued; b, restarted, re-adopts it and it completes once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from dpd.fleet.records import JobState
from tests.fleet.hosts import Fleet
from tests.fleet.natscluster import NatsCluster
from tests.fleet.proxy import NatsProxy
from tests.fleet.test_fleet_hosts import submit
from tests.fleet.test_fleet_loss import drain, finished, held, record_of
from tests.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
def fleet(
    cluster: NatsCluster, proxy: NatsProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet14w"), {"a": 1, "b": 1})
    hosts["a"].config["nats"]["url"] = proxy.url
    with hosts:
        yield hosts


def test_fl14_a_blind_watcher_still_finds_a_dead_host_by_leader_reads(
    fleet: Fleet, cluster: NatsCluster, proxy: NatsProxy
) -> None:
    task_id = f"fl14w-{uuid.uuid4().hex[:6]}"
    assert drain(fleet, "a")["draining"] is True  # the job goes to b
    doc = fleet.job(task_id=task_id)
    doc["config"]["epochs"] = 150  # about 25 s: it trains through b's absence
    assert submit(fleet, "a", doc)[0] == 201
    wait_for(lambda: any(r.task == task_id for r in fleet.runs()), timeout=60)
    assert drain(fleet, "a", undo=True)["draining"] is False
    wait_for(lambda: (r := record_of(cluster, task_id)) is not None and r.state is JobState.RUNNING)

    proxy.mute("$KV.dpd_alive.")  # a's alive watch goes blind from here
    fleet["b"].kill9()  # its training goes on; its alive key expires after node_ttl
    killed = time.monotonic()
    record = wait_for(lambda: held(cluster, task_id), timeout=30, interval=0.3)
    found_after = time.monotonic() - killed
    assert record.lost is not None and record.lost.observed_by == "a"
    assert record.state is JobState.RUNNING and record.attempt == 1 and record.requeues == 0
    assert proxy.muted_count > 0  # a's table saw none of it
    proxy.mute()

    fleet["b"].start()
    done = wait_for(lambda: finished(cluster, task_id), timeout=120, interval=0.5)
    assert done.state is JobState.COMPLETED and done.attempt == 1 and done.requeues == 0
    runs = [r for r in fleet.runs() if r.task == task_id]
    assert len(runs) == 1 and runs[0].completed and runs[0].host == "b"
    print(f"FL14 blind watcher: b found gone by a's leader reads {found_after:.1f} s after kill")
