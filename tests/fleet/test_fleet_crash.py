"""A daemon killed between two durable writes loses nothing and runs nothing twice (FLEET.md
§13.3 FL6, reduced: one job per crash point).

Hosts a and b have one GPU each on a real 3-node NATS cluster; a drains, so b places every
job. For each point of ``dpd.crashpoints``, b is started with ``DPD_TEST_CRASH_AT=<point>``,
given one job (a REST submission, or a spool file for ``commit_unlink``), kills itself there
with SIGKILL, and is started again unarmed with the same boot id (a daemon crash, not a
reboot). Then the acknowledged submission is exactly one record, the record ends
``completed``, and the run oracle (``DPD_SIM_RUN_LEDGER``) saw exactly one run of the task.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from dpd.crashpoints import POINTS
from dpd.fleet.records import JobRecord, JobState
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_fleet_hosts import kv_records
from tests.waiting import wait_for

pytestmark = pytest.mark.fleet

ORDER = ("commit_unlink", "t2_t3", "t3_state", "t3_spawn", "spawn_t5", "terminal_kv")


@pytest.fixture(scope="module")
def fleet(cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    hosts = Fleet(cluster, tmp_path_factory.mktemp("fleet-crash"), {"a": 1, "b": 1})
    try:
        hosts.up()
        code, body = hosts["a"].request("POST", "/api/v1/fleet/nodes/a/drain", {})
        assert code == 200, body
        yield hosts
    finally:
        hosts.down()


def test_every_point_is_listed() -> None:
    assert set(ORDER) == POINTS


def start(fleet: Fleet, name: str) -> None:
    """Start the host and wait until its agent is ready (reconciled, placing)."""
    host = fleet[name]
    host.start()

    def ready() -> bool:
        code, body = host.request("GET", "/api/v1/fleet/nodes")
        return code == 200 and bool(body["data"]["ready"])

    wait_for(ready, timeout=30)


def submit(fleet: Fleet, point: str) -> tuple[str | None, str | None]:
    """One job to b: (task id of an acknowledged REST submission, or the spool file's name)."""
    doc = fleet.job()
    if point == "commit_unlink":  # a spool file without task_id (its id is derived)
        name = f"crash-{uuid.uuid4().hex[:8]}.json"
        fleet["b"].drop(name, doc)
        return None, name
    doc["task_id"] = f"crash-{point.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    code, body = fleet["b"].request("POST", "/api/v1/training/start", doc)
    assert code == 201, body
    return str(body["data"]["task_id"]), None


def of_file(fleet: Fleet, name: str) -> list[JobRecord]:
    """The records whose submission was the spool file ``name``."""
    return [r for r in kv_records(fleet.cluster).values() if r.submitted_by.identity.name == name]


@pytest.mark.parametrize("point", ORDER)
def test_crash_point(fleet: Fleet, point: str) -> None:
    b = fleet["b"]
    b.stop()
    b.env["DPD_TEST_CRASH_AT"] = point
    try:
        start(fleet, "b")
        task_id, dropped = submit(fleet, point)
        assert b.process is not None
        wait_for(lambda: b.process.poll() is not None, timeout=60)  # type: ignore[union-attr]
        assert b.process.returncode == -9, b.log()[-3000:]
        assert f"crash point {point}: SIGKILL" in b.log()
    finally:
        b.env.pop("DPD_TEST_CRASH_AT")
    start(fleet, "b")

    if dropped is not None:  # the file's one record, and the file gone from incoming/
        mine = wait_for(lambda: of_file(fleet, dropped), timeout=30)
        assert len(mine) == 1, mine
        task_id = mine[0].task_id
        wait_for(lambda: not (b.incoming / dropped).exists(), timeout=30)
    assert task_id is not None
    record = wait_for(
        lambda: (lambda r: r if r is not None and r.terminal else None)(
            kv_records(fleet.cluster).get(task_id)
        ),
        timeout=60,
        interval=0.2,
    )
    assert record.state is JobState.COMPLETED, record
    runs = [r for r in fleet.runs() if r.task == task_id]
    assert len(runs) == 1 and runs[0].completed, runs
    assert not duplicates(fleet.runs())
    holders = [(h, s["status"]) for h, s in fleet.local_jobs().get(task_id, [])]
    assert holders == [("b", "completed")], holders
