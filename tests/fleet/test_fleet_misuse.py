"""FL13 (FLEET.md §13.3, §12 case 20): an operator marks a live host down. b's daemon is
paused (SIGSTOP) while its trainer runs, so the others see b lost; ``dpd fleet node-down b``
then requeues b's job although b's trainer still runs. The run lock on the shared output
dir (§10.2) refuses the second trainer, and b, resumed, stops its superseded run within one
reconciliation pass. The run oracle shows the overlap: none.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from dpd.fleet.records import JobState
from tests.daemon_harness import job_processes
from tests.fleet.hosts import Fleet
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_loss import dpd_fleet, finished, nodes, record_of, run_on_b
from tests.waiting import wait_for

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet-misuse"), {"a": 1, "b": 1, "c": 1})
    try:
        yield hosts.up()
    finally:
        hosts.down()


def test_fl13_node_down_of_a_live_host_the_run_lock_refuses_the_second_trainer(
    fleet: Fleet, cluster: NatsCluster
) -> None:
    task_id = run_on_b(fleet, cluster)
    process = fleet["b"].process
    assert process is not None
    process.send_signal(signal.SIGSTOP)  # the daemon only: b's shim and trainer run on
    try:
        wait_for(lambda: nodes(fleet, "a")["b"]["state"] == "lost", timeout=30, interval=0.3)
        dpd_fleet(fleet, "a", "node-down", "b", "--reason", "misuse test")
        second = wait_for(
            lambda: (lambda r: r if r is not None and r.attempt == 2 and r.terminal else None)(
                record_of(cluster, task_id)
            ),
            timeout=60,
            interval=0.3,
        )
        assert second.state is JobState.FAILED, second
        assert second.owner is not None and second.owner.node in ("a", "c")
        assert second.result is not None and second.result.reason == "duplicate_prevented", (
            second.result
        )
        runs = [r for r in fleet.runs() if r.task == task_id]
        assert [r.host for r in runs] == ["b"] and runs[0].end is None  # b's alone, running
    finally:
        process.send_signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    # b, back, finds its attempt superseded and stops its run (the orphan)
    wait_for(lambda: not job_processes(task_id), timeout=60, interval=0.3)
    stopped_after = time.monotonic() - resumed_at
    runs = [r for r in fleet.runs() if r.task == task_id]
    assert len(runs) == 1 and runs[0].host == "b" and not runs[0].completed, runs
    assert not any(r.violation for r in runs), runs
    assert finished(cluster, task_id) is not None
    print(f"FL13: overlap 0 s (the run lock refused the second trainer); b stopped its "
          f"superseded run {stopped_after:.1f} s after SIGCONT")  # fmt: skip
