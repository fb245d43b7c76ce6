"""Progress, speed, metrics summary and metric points from observations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dpd.supervisor.output_parser import (
    Completed,
    EpochEnded,
    EvalLoss,
    OutputParser,
    Resumed,
    StepDone,
    TotalSteps,
)
from dpd.supervisor.progress import SPEED_WINDOW, ProgressTracker
from dpd.trainlog.follow import split_lines

RECORDED = Path(__file__).parent / "recorded"
T0 = 1739343600.0  # 2025-02-12T07:00:00Z


def run(name: str, tracker: ProgressTracker, epochs: int = 2) -> ProgressTracker:
    """Feed a recorded run; line i is read at T0 + i seconds."""
    parser = OutputParser(epochs=epochs, max_steps=None)
    lines = split_lines((RECORDED / name).read_bytes().decode("utf-8"))
    for index, line in enumerate(lines):
        for observation in parser.feed(line, T0 + index):
            tracker.observe(observation, T0 + index)
    return tracker


def json_round_trip(data: Any) -> Any:
    return json.loads(json.dumps(data, allow_nan=False))


def done(step: int, loss: float = 0.5, it: float = 2.0, epoch: int = 1) -> StepDone:
    return StepDone(step, loss, it, 4.0 / it, 1e-4, None, epoch)


def test_successful_run_final_progress_and_metrics() -> None:
    tracker = run("success_2epochs.log", ProgressTracker(epochs=2, max_steps=None))
    assert tracker.progress() == {
        "current_epoch": 2,
        "total_epochs": 2,
        "current_step": 6,
        "total_steps": 6,
        "total_steps_estimated": False,
        "current_batch": 3,
        "total_batches": 3,
        "epoch_progress": 100.0,
        "overall_progress": 100.0,
        "eta_seconds": 0,
        # first step counts its own iter time (2.0), then wall time between step lines,
        # which are lines 39 and 62 of the file: 2.0 + 23
        "training_time": 25.0,
        "steps_per_second": 0.5,
        "samples_per_second": 2.002,
        "time_per_step": 2.0,
    }
    assert tracker.metrics() == {
        "current_loss": 0.1,
        "best_loss": 0.1,
        "best_loss_step": 6,
        "learning_rate": 2e-05,
        "grad_norm": None,
        "epoch_loss": 0.15,
        "best_epoch": 2,
        "epoch_losses": [0.342567, 0.15],
        "eval_loss": None,
    }


def test_successful_run_metric_points() -> None:
    tracker = run("success_2epochs.log", ProgressTracker(epochs=2, max_steps=None))
    points = tracker.drain_metric_points()
    assert tracker.drain_metric_points() == []
    steps = [p for p in points if p["type"] == "step" and p["metric"] == "loss"]
    assert [(p["step"], p["epoch"], p["value"]) for p in steps] == [
        (1, 1, 0.4567),
        (2, 1, 0.321),
        (3, 1, 0.25),
        (4, 2, 0.2),
        (5, 2, None),  # nan is not JSON
        (6, 2, 0.1),
    ]
    lrs = [p["value"] for p in points if p["metric"] == "lr"]
    assert lrs == [1e-05, 2e-05, 2e-05, 2e-05, 2e-05, 2e-05]
    epochs = [p for p in points if p["type"] == "epoch"]
    assert epochs == [
        {
            "type": "epoch",
            "metric": "loss",
            "step": 3,
            "epoch": 1,
            "value": 0.342567,
            "timestamp": "2025-02-12T07:00:53.000Z",
        },
        {
            "type": "epoch",
            "metric": "loss",
            "step": 6,
            "epoch": 2,
            "value": 0.15,
            "timestamp": "2025-02-12T07:01:12.000Z",
        },
    ]
    assert json_round_trip(points) == points


def test_stop_then_resume_continues_the_same_numbers_through_state_json() -> None:
    first = run("save_quit.log", ProgressTracker(epochs=2, max_steps=None))
    stopped = first.progress()
    assert (stopped["current_step"], stopped["total_steps"], stopped["overall_progress"]) == (
        4,
        6,
        66.67,
    )
    assert stopped["eta_seconds"] == 6  # 2 steps left x 3.0 s
    state, progress, metrics = json_round_trip(
        [first.to_state(), first.progress(), first.metrics()]
    )
    resumed = run("resume.log", ProgressTracker.from_state(state, progress, metrics))
    progress = resumed.progress()
    assert progress["current_step"] == 6 and progress["overall_progress"] == 100.0
    assert progress["training_time"] == pytest.approx(11.0 + 4.5)  # the gap between runs is not
    metrics = resumed.metrics()
    assert metrics["epoch_losses"] == [0.4, 0.14]  # epoch 2 is partial after a resume
    assert metrics["best_epoch"] == 2
    assert metrics["best_loss"] == 0.13


def test_to_state_and_from_state_give_the_same_answers() -> None:
    tracker = run("success_2epochs.log", ProgressTracker(epochs=2, max_steps=None))
    state, progress, metrics = json_round_trip(
        [tracker.to_state(), tracker.progress(), tracker.metrics()]
    )
    copy = ProgressTracker.from_state(state, progress, metrics)
    assert copy.progress() == tracker.progress()
    assert copy.metrics() == tracker.metrics()
    assert copy.to_state() == tracker.to_state()
    # kept once: the private state holds none of the numbers the API shows (the training
    # time unrounded, and the epochs of the epoch losses, which the API lists without)
    assert set(state) & {*progress, *metrics} == {"training_time", "epoch_losses"}


def test_a_version_1_state_holding_every_number_still_loads() -> None:
    """What state.json's progress_state held up to commit c9c47b1."""
    old = json.loads((RECORDED / "state_written_by_c9c47b1.json").read_text())
    tracker = ProgressTracker.from_state(old["progress_state"])
    assert tracker.progress()["current_step"] == old["progress"]["current_step"] > 0
    assert tracker.metrics()["best_loss"] == old["metrics"]["best_loss"]
    assert tracker.total_steps == old["progress"]["total_steps"]


def test_from_state_tolerates_an_empty_or_old_document() -> None:
    tracker = ProgressTracker.from_state({})
    assert tracker.progress()["current_step"] is None
    assert tracker.metrics()["epoch_losses"] == []


def test_eta_follows_recent_step_times_not_the_whole_run_mean() -> None:
    tracker = ProgressTracker(epochs=None, max_steps=1000)
    now = T0
    for n in range(1, 101):
        now += 1.0
        tracker.observe(done(n, it=1.0), now)
    for n in range(101, 101 + SPEED_WINDOW):
        now += 3.0
        tracker.observe(done(n, it=3.0), now)
    progress = tracker.progress()
    assert progress["time_per_step"] == 3.0
    assert progress["eta_seconds"] == (1000 - 120) * 3
    assert progress["steps_per_second"] == pytest.approx(0.3333)


def test_batches_and_epoch_progress_from_steps_per_epoch() -> None:
    tracker = ProgressTracker(epochs=4, max_steps=None, steps_per_epoch_hint=10)
    assert tracker.progress()["total_steps"] == 40
    tracker.observe(done(13, epoch=2), T0)
    progress = tracker.progress()
    assert (progress["current_batch"], progress["total_batches"]) == (3, 10)
    assert progress["epoch_progress"] == 30.0
    assert progress["overall_progress"] == 32.5
    tracker.observe(TotalSteps(48, 12), T0)
    assert tracker.progress()["current_batch"] == 1


def test_without_a_known_total_there_is_no_eta() -> None:
    tracker = ProgressTracker(epochs=3, max_steps=None)
    tracker.observe(done(1), T0)
    progress = tracker.progress()
    assert progress["eta_seconds"] is None
    assert progress["overall_progress"] == 0.0
    assert progress["current_batch"] is None


def test_steps_per_print_first_step_covers_the_unprinted_ones() -> None:
    tracker = ProgressTracker(epochs=None, max_steps=None)
    tracker.observe(done(10, it=2.0), T0)  # steps_per_print = 10: ten steps of 2 s
    assert tracker.progress()["training_time"] == 20.0
    tracker.observe(done(20, it=2.0), T0 + 21.0)
    assert tracker.progress()["training_time"] == 41.0


def test_resumed_sets_the_position_and_restarts_the_wall_clock() -> None:
    tracker = ProgressTracker(epochs=None, max_steps=None)
    tracker.observe(done(1), T0)
    tracker.observe(done(2), T0 + 2.5)
    tracker.observe(Resumed(1, 3), T0 + 3600)
    assert tracker.progress()["current_step"] == 2
    tracker.observe(done(3), T0 + 3605)
    assert tracker.progress()["training_time"] == 6.5  # 2 + 2.5 + 2, not the hour between


def test_eval_loss_and_grad_norm_points_and_nan_epoch() -> None:
    tracker = ProgressTracker(epochs=None, max_steps=None)
    tracker.observe(StepDone(5, float("nan"), 1.0, 1.0, None, 0.75, 1), T0)
    tracker.observe(EvalLoss(0.3, 5), T0)
    tracker.observe(EpochEnded(1, None, 5), T0)
    points = tracker.drain_metric_points()
    assert [(p["type"], p["metric"], p["value"]) for p in points] == [
        ("step", "loss", None),
        ("step", "grad_norm", 0.75),
        ("eval", "loss", 0.3),
        ("epoch", "loss", None),
    ]
    metrics = tracker.metrics()
    assert metrics["grad_norm"] == 0.75 and metrics["eval_loss"] == 0.3
    assert metrics["best_loss"] is None and metrics["best_epoch"] is None
    assert json_round_trip(tracker.to_state()) == tracker.to_state()


def test_completed_means_full_progress() -> None:
    tracker = ProgressTracker(epochs=None, max_steps=10)
    tracker.observe(done(7), T0)
    tracker.observe(Completed(), T0)
    progress = tracker.progress()
    assert progress["overall_progress"] == 100.0 and progress["eta_seconds"] == 0


def feed(parser: OutputParser, tracker: ProgressTracker, line: str, now: float = T0) -> None:
    for observation in parser.feed(line, now):
        tracker.observe(observation, now)


def step_line(step: int, iter_time: float = 2.0) -> str:
    return f"steps: {step} loss: 0.1000 iter time (s): {iter_time:.3f} samples/sec: 1.000"


def test_an_estimate_gives_an_eta_at_step_one_and_the_trainer_corrects_it() -> None:
    parser, tracker = OutputParser(epochs=3, max_steps=None), ProgressTracker(3, None)
    tracker.estimate_steps_per_epoch(10)  # the dataset says 10; the trainer will do 4
    feed(parser, tracker, step_line(1))
    progress = tracker.progress()
    assert (progress["total_steps"], progress["total_steps_estimated"]) == (30, True)
    assert progress["eta_seconds"] == 58  # (30 - 1) x 2.0 s
    assert progress["overall_progress"] == 3.33
    assert (progress["current_batch"], progress["total_batches"]) == (1, 10)
    for step in (2, 3, 4):
        feed(parser, tracker, step_line(step))
    feed(parser, tracker, "Started new epoch: 2")
    progress = tracker.progress()
    assert (progress["total_steps"], progress["total_steps_estimated"]) == (12, False)
    assert progress["eta_seconds"] == 16  # (12 - 4) x 2.0 s
    assert progress["total_batches"] == 4
    tracker.estimate_steps_per_epoch(10)  # a late estimate never replaces what was learnt
    assert (tracker.progress()["total_steps"], tracker.steps_per_epoch) == (12, 4)


def test_max_steps_caps_an_estimate_and_the_learnt_value_still_replaces_it() -> None:
    parser, tracker = OutputParser(epochs=10, max_steps=25), ProgressTracker(10, 25)
    tracker.estimate_steps_per_epoch(2)
    feed(parser, tracker, step_line(1))  # the parser's first total is max_steps alone
    assert tracker.progress()["total_steps"] == 20  # 10 epochs x 2 is below max_steps
    for step in (2, 3):
        feed(parser, tracker, step_line(step))
    feed(parser, tracker, "Started new epoch: 2")  # 3 per epoch: 30, capped at 25
    progress = tracker.progress()
    assert (progress["total_steps"], progress["total_steps_estimated"]) == (25, False)
    assert progress["total_batches"] == 3


def test_an_estimate_survives_a_restart_as_an_estimate() -> None:
    tracker = ProgressTracker(epochs=2, max_steps=None)
    tracker.estimate_steps_per_epoch(6)
    tracker.observe(done(1), T0)
    state = json_round_trip(tracker.to_state())
    again = ProgressTracker.from_state(state, json_round_trip(tracker.progress()), {})
    assert again.progress() == tracker.progress()
    assert again.progress()["total_steps_estimated"] is True
