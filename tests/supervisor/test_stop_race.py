"""A stop during a launch (issue 14 item 4), against a real ``dpd serve`` and the stand-in.

Many rounds of "submit with queue=true, then stop at once" on one GPU, with varied delays
between the two and graceful and forced stops mixed: every job ends in exactly one terminal
status, no trainer runs for a stopped job, the GPU is free afterwards (a later job starts),
the scheduler never failed a pass, and a restarted daemon agrees.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import time
from pathlib import Path
from typing import Any

from tests.daemon_harness import DaemonProcess, job_processes, wait_for
from tests.jobfiles import job_document
from tests.supervisor.test_lifecycle import TERMINAL, make_daemon, status, wait_status

ROUNDS = 40
# seconds between the submit's answer and the stop: at once (the launch's first steps),
# within the launch, and once the trainer runs
DELAYS = (0.0, 0.0, 0.0, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.02, 0.1)


class Client:
    """Two kept-alive connections, so a stop follows a submit within a fraction of a
    millisecond (a new connection per request would leave the launch time to get ahead)."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.submits = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        self.stops = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)

    @staticmethod
    def call(
        connection: http.client.HTTPConnection, path: str, body: Any = None
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        connection.request("POST", path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    def close(self) -> None:
        self.submits.close()
        self.stops.close()


def submit(client: Client, daemon: DaemonProcess, task_id: str) -> None:
    document = {**job_document(daemon.data, task_id=task_id), "queue": True}
    document["config"] = {**document["config"], "epochs": 50}
    code, body = client.call(client.submits, "/api/v1/training/start", document)
    assert code == 201, body


def stop(client: Client, task_id: str, force: bool) -> tuple[int, dict[str, Any]]:
    query = "?force=true" if force else ""
    return client.call(client.stops, f"/api/v1/training/stop/{task_id}{query}")


def pause(seconds: float) -> None:
    """The delay IS the variable under test (where in a launch the stop lands), not a wait."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # sleep() oversleeps by more than the shorter delays
        pass


def status_events(daemon: DaemonProcess, task_id: str) -> list[str]:
    path = daemon.spool / "jobs" / task_id / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["data"]["status"] for e in events if e["type"] == "status"]


def gpu_tasks(daemon: DaemonProcess) -> list[Any]:
    code, body = daemon.request("GET", "/api/v1/gpu/status")
    assert code == 200, body
    return [(g.get("status"), g.get("current_task")) for g in body["data"]["gpus"]]


def check_settled(daemon: DaemonProcess, task_ids: list[str]) -> None:
    for task_id in task_ids:
        state = wait_status(daemon, task_id, TERMINAL, timeout=60)
        assert state["status"] == "stopped", (task_id, state["status"], state.get("error"))
        told = status_events(daemon, task_id)
        assert [s for s in told if s in TERMINAL] == ["stopped"], (task_id, told)
        assert told[-1] == "stopped", (task_id, told)
    wait_for(lambda: not any(job_processes(t) for t in task_ids), timeout=30)
    with contextlib.suppress(AssertionError):
        wait_for(lambda: all(s != "training" for s, _ in gpu_tasks(daemon)), timeout=10)
    assert all(s != "training" for s, _ in gpu_tasks(daemon)), (gpu_tasks(daemon), daemon.log())


def test_stop_at_once_after_a_queued_submit_never_strands_the_gpu(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, gpus=1, step_seconds=0.05)
    daemon.config["ratelimit"] = {"training": "0"}  # forty submits and stops in seconds
    daemons.append(daemon)
    daemon.start()
    client = Client(daemon)
    rng = random.Random(14)
    task_ids = []
    try:
        for round_ in range(ROUNDS):
            task_id = f"race{round_:02d}"
            submit(client, daemon, task_id)
            pause(rng.choice(DELAYS))
            code, body = stop(client, task_id, force=round_ % 3 == 2)
            assert code == 200, (task_id, body)
            task_ids.append(task_id)
        check_settled(daemon, task_ids)

        # the GPU is free: a later job starts instead of staying queued forever
        submit(client, daemon, "after")
        wait_status(daemon, "after", ("running",), timeout=30)
        code, body = stop(client, "after", force=True)
        assert code == 200, body
    finally:
        client.close()
    assert "scheduling pass failed" not in daemon.log()

    daemon.stop()  # a restarted daemon agrees: nothing is re-run, the GPU is free
    daemon.start()
    check_settled(daemon, task_ids)
    assert all(status(daemon, t) == "stopped" for t in task_ids)
