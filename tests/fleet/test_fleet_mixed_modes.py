"""FL14, hosts with different ``node_loss`` settings (FLEET.md §13.3, §12 row 25): b holds,
a and c requeue. A requeue-mode reaper times a lost job from the claim's own fence
(``owner.fence``), not from its own setting: b's daemon SIGSTOPped well past
``node_ttl + lost_after`` leaves its job held (``node_state: lost``), never requeued, its
training running on; after SIGCONT the flag clears and the job completes once, on b.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from dpd.fleet.records import FenceMode, JobState
from tests.fleet.hosts import FLEET_TIMING, Fleet
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_loss import finished, held, record_of, run_on_b
from tests.fleet.test_fleet_requeue import REQUEUE
from tests.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet-mixed"), {"a": 1, "b": 1, "c": 1})
    for name in ("a", "c"):
        hosts[name].config["fleet"].update(REQUEUE["fleet"])
        hosts[name].config["trainer"].update(REQUEUE["trainer"])
    try:
        yield hosts.up()
    finally:
        process = hosts["b"].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
        hosts.down()


def test_fl14_a_hold_owner_is_not_requeued_by_reapers_in_requeue_mode(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    task_id = run_on_b(fleet, cluster, epochs=200)  # about 35 s: it outlives the pause
    record = record_of(cluster, task_id)
    assert record is not None and record.owner is not None
    assert record.owner.fence is not None and record.owner.fence.mode is FenceMode.HOLD
    process = fleet["b"].process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    paused = time.monotonic()
    try:
        wait_for(lambda: held(cluster, task_id), timeout=30, interval=0.3)
        lost_after = float(REQUEUE["fleet"]["lost_after"])
        past = FLEET_TIMING["node_ttl"] + lost_after + FLEET_TIMING["fence_margin"] + 3
        time.sleep(max(0.0, past - (time.monotonic() - paused)))
        record = record_of(cluster, task_id)
        assert record is not None and record.state is JobState.RUNNING, record
        assert record.lost is not None and record.attempt == 1 and record.requeues == 0
        assert [(r.host, r.end) for r in fleet.runs() if r.task == task_id] == [("b", None)]
    finally:
        process.send_signal(signal.SIGCONT)
    wait_for(
        lambda: (lambda r: r if r is not None and r.lost is None else None)(
            record_of(cluster, task_id)
        ),
        timeout=30,
        interval=0.3,
    )
    done = wait_for(lambda: finished(cluster, task_id), timeout=120, interval=0.5)
    assert done.state is JobState.COMPLETED and done.attempt == 1 and done.requeues == 0
    runs = [r for r in fleet.runs() if r.task == task_id]
    assert len(runs) == 1 and runs[0].completed and runs[0].host == "b"
