"""The first epoch has a total and an ETA: a real daemon estimates the steps per epoch of a
stand-in trainer's run from its dataset, and the trainer's own number confirms it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.daemon_harness import DaemonProcess
from tests.jobfiles import job_document
from tests.supervisor.test_lifecycle import TERMINAL, make_daemon, wait_status
from tests.waiting import wait_for


def test_eta_exists_from_the_first_step_and_the_trainer_confirms_the_total(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.5)  # 8 steps per epoch: 4 s in epoch 1
    daemons.append(daemon)
    daemon.start()
    daemon.drop("cats.json", job_document(daemon.data, task_id="cats"))

    def first_steps() -> dict[str, Any] | None:
        code, body = daemon.request("GET", "/api/v1/training/cats/progress")
        progress: dict[str, Any] = body["data"]["progress"] if code == 200 else {}
        return progress if progress.get("current_step") else None

    progress = wait_for(first_steps, timeout=30)
    assert progress is not None
    # 4 captioned images x num_repeats 2, batch 1: 8 per epoch, 2 epochs (reference §4.5)
    assert progress["current_epoch"] == 1 and progress["current_step"] < 8, progress
    assert (progress["total_steps"], progress["total_steps_estimated"]) == (16, True)
    assert progress["eta_seconds"] is not None and progress["eta_seconds"] > 0
    assert progress["overall_progress"] > 0
    state = wait_status(daemon, "cats", TERMINAL)
    assert state["status"] == "completed", state.get("error")
    # the trainer's own steps per epoch (learnt at "Started new epoch: 2") replaced it
    assert (state["progress"]["total_steps"], state["progress"]["total_batches"]) == (16, 8)
    assert state["progress"]["total_steps_estimated"] is False
    assert "8 steps per epoch from the dataset (exact)" in daemon.log()
