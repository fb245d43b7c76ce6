"""Scheduler rule 6 across hosts: two hosts on one shared dataset build its cache one at a
time. Hosts a and b have one GPU each on a real 3-node NATS cluster; caching takes the
stand-in 3 s. The first job runs on one host; the second, submitted while the first caches,
can only run on the other host's free GPU, and waits there until the first trains (its
owner's heartbeat says so), so it finds the cache built instead of building it beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fleet.hosts import Fleet
from tests.fleet.natscluster import NatsCluster
from tests.jobfiles import job_document
from tests.waiting import wait_for

pytestmark = pytest.mark.fleet


def test_a_job_waits_for_another_hosts_caching_of_its_dataset(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    fleet = Fleet(cluster, tmp_path, {"a": 1, "b": 1})
    for host in fleet.hosts.values():
        host.config["trainer"]["env"]["DPD_SIM_CACHE_SECONDS"] = "3"
    shared = {"dataset": job_document(fleet.shared)["dataset"]}  # one dataset for both
    with fleet as hosts:

        def view(task_id: str) -> dict[str, Any]:
            code, body = hosts["a"].request("GET", f"/api/v1/training/{task_id}")
            return body["data"] if code == 200 else {}

        first = hosts.job(task_id="first", **shared)
        first["config"]["epochs"] = 25  # trains about 4 s: its GPU is busy when the wait ends
        code, body = hosts["a"].request("POST", "/api/v1/training/start", first)
        assert code == 201, body
        wait_for(lambda: (view("first").get("progress") or {}).get("phase") == "caching")
        code, body = hosts["b"].request(
            "POST", "/api/v1/training/start", hosts.job(task_id="second", **shared)
        )
        assert code == 201, body
        for task_id in ("first", "second"):
            wait_for(lambda t=task_id: view(t).get("status") == "completed", timeout=60)
        where = {
            t: h
            for t, runs in hosts.local_jobs().items()
            for h, state in runs
            if state["status"] == "completed"
        }
        assert where["first"] != where["second"]  # one GPU each: the wait was across hosts
        logs = {
            t: (hosts[where[t]].spool / "jobs" / t / "train.log").read_text()
            for t in ("first", "second")
        }
    assert "Grouped metadata is not cached. Caching it now." in logs["first"]
    assert "Found grouped metadata cache. Directly loading it." in logs["second"], logs["second"]
