"""A trainer killed by SIGKILL, as the kernel's OOM killer does it: a real ``dpd serve`` with
the stand-in trainer; the trainer's python process (the worker running train.py) is killed.
The job ends ``failed`` with an error that names SIGKILL, no process of the job is left, the
GPU is free again and the next job runs on it; the daemon itself goes on (OOMPolicy=continue
in the unit relies on that)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.daemon_harness import DaemonProcess, job_processes, kill_daemons, wait_for
from tests.jobfiles import job_document
from tests.test_client import KEY, start_daemon

OOM_WORDING = "killed by SIGKILL (out of memory?)"


def trainer_worker(task_id: str) -> int | None:
    """The pid of the python process that runs train.py for the task (not the launcher)."""
    for pid in job_processes(task_id):
        try:
            command = psutil.Process(pid).cmdline()
        except psutil.Error:
            continue
        if any(arg.endswith("train.py") for arg in command) and any(
            arg.startswith("--local_rank=") for arg in command
        ):
            return pid
    return None


def gpu_zero(daemon: DaemonProcess) -> dict[str, Any]:
    status, body = daemon.request("GET", "/api/v1/gpu/status", key=KEY)
    assert status == 200, body
    return dict(body["data"]["gpus"][0])


def submit(daemon: DaemonProcess, task_id: str, epochs: int) -> None:
    document = job_document(daemon.data, task_id=task_id, gpu_id=0, queue=True)
    document["config"]["epochs"] = epochs
    status, body = daemon.request("POST", "/api/v1/training/start", document, key=KEY)
    assert status in (200, 201), body


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, dict]]:
    """The daemon and the state of the job whose trainer was SIGKILLed."""
    daemon = start_daemon(Path(tmp_path_factory.mktemp("sigkill")))
    try:
        submit(daemon, "oom-victim", epochs=500)
        wait_for(lambda: steps_done(daemon, "oom-victim") >= 2, timeout=30)
        assert gpu_zero(daemon)["current_task"] == "oom-victim"
        worker = wait_for(lambda: trainer_worker("oom-victim"), timeout=10)
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: status_of(daemon, "oom-victim") == "failed", timeout=30)
        yield daemon, daemon.job_state("oom-victim") or {}
    finally:
        kill_daemons([daemon])


def steps_done(daemon: DaemonProcess, task_id: str) -> int:
    progress = (daemon.job_state(task_id) or {}).get("progress") or {}
    return int(progress.get("current_step") or 0)


def status_of(daemon: DaemonProcess, task_id: str) -> str | None:
    return (daemon.job_state(task_id) or {}).get("status")


def reason_of(state: dict[str, Any]) -> str:
    error = state.get("error") or {}
    return str(error.get("reason") if isinstance(error, dict) else error)


def test_a_sigkilled_trainer_fails_its_job_and_frees_the_gpu(
    killed: tuple[DaemonProcess, dict],
) -> None:
    daemon, state = killed
    assert state["status"] == "failed"
    assert "killed by" in reason_of(state) and state["error"]["exit_code"] == 256 - signal.SIGKILL
    wait_for(lambda: not job_processes("oom-victim"), timeout=15)
    wait_for(lambda: gpu_zero(daemon)["current_task"] is None, timeout=15)
    assert daemon.healthy()  # the daemon itself goes on
    submit(daemon, "after-oom", epochs=1)
    wait_for(lambda: status_of(daemon, "after-oom") == "completed", timeout=60)


def test_the_error_suggests_out_of_memory(killed: tuple[DaemonProcess, dict]) -> None:
    _, state = killed
    assert OOM_WORDING in reason_of(state), state.get("error")
