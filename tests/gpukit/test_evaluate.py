"""The kit's judgement: each check passes on what proves it and fails on what does not."""

from __future__ import annotations

import math

from bench.gpu import evaluate as ev
from bench.gpu.report import Verdict

STEP = "steps: {n} loss: {loss:.4f} iter time (s): {t:.3f} samples/sec: 1.000\n"


def log(*lines: str) -> bytes:
    return "".join(lines).encode()


def steps(first: int, last: int, loss: float = 0.1, t: float = 0.2) -> str:
    return "".join(STEP.format(n=n, loss=loss + n / 1000, t=t) for n in range(first, last + 1))


def test_step_lines_read_steps_losses_and_offsets_between_other_output() -> None:
    data = log(
        "[2026-01-01 00:00:00,000] [INFO] [x.py:1:f] hi\n",
        "bar 10%\rbar 20%\r",
        steps(1, 2),
        "Started new epoch: 2\n",
        "steps: 3 loss: nan iter time (s): 0.500 samples/sec: 2.000\n",
    )
    found = ev.step_lines(data)
    assert [s.step for s in found] == [1, 2, 3]
    assert found[0].loss == 0.101 and math.isnan(found[2].loss)
    assert found[2].iter_time == 0.5
    assert all(data[s.offset :].startswith(b"steps: ") for s in found)


def test_phases_need_training_after_an_earlier_phase_in_order() -> None:
    ok = ev.check_phases([None, "starting", "starting", "caching", "training", "saving"])
    assert ok.verdict is Verdict.PASS
    assert ok.evidence["sequence"] == ["starting", "caching", "training", "saving"]
    assert ev.check_phases(["training", "training"]).verdict is Verdict.FAIL
    assert ev.check_phases(["starting", "caching"]).verdict is Verdict.FAIL
    assert ev.check_phases(["training", "caching", "starting"]).verdict is Verdict.FAIL


def test_steps_and_losses_need_three_rising_steps_with_finite_losses() -> None:
    samples = [{"current_step": n, "current_loss": 0.1} for n in (1, 2, 2, 3)]
    assert ev.check_steps_and_losses(samples).verdict is Verdict.PASS
    assert ev.check_steps_and_losses(samples[:2]).verdict is Verdict.FAIL
    falling = [{"current_step": n, "current_loss": 0.1} for n in (3, 2, 1)]
    assert ev.check_steps_and_losses(falling).verdict is Verdict.FAIL
    nan = [{"current_step": n, "current_loss": float("nan")} for n in (1, 2, 3)]
    assert ev.check_steps_and_losses(nan).verdict is Verdict.FAIL


def test_progress_needs_the_right_total_a_percentage_and_an_eta() -> None:
    good = {"total_steps": 24, "overall_progress": 12.5, "eta_seconds": 30.0}
    assert ev.check_progress_eta([{"total_steps": None}, good], 24).verdict is Verdict.PASS
    assert ev.check_progress_eta([good], 25).verdict is Verdict.FAIL
    assert ev.check_progress_eta([{**good, "eta_seconds": None}], 24).verdict is Verdict.FAIL
    assert ev.check_progress_eta([], 24).verdict is Verdict.FAIL


def metric(step: int, value: float) -> dict:
    return {"type": "step", "metric": "loss", "step": step, "value": value}


def test_metrics_must_hold_every_logged_loss_exactly_once() -> None:
    data = log(steps(1, 3))
    exact = [metric(n, 0.1 + n / 1000) for n in (1, 2, 3)]
    lr = [{"type": "step", "metric": "lr", "step": 1, "value": 1e-4}]
    assert ev.check_metrics_match_log(exact + lr, data).verdict is Verdict.PASS
    assert ev.check_metrics_match_log([*exact, exact[1]], data).verdict is Verdict.FAIL
    assert ev.check_metrics_match_log(exact[:2], data).verdict is Verdict.FAIL
    wrong = [*exact[:2], metric(3, 0.5)]
    assert ev.check_metrics_match_log(wrong, data).evidence["mismatched"] == [(3, 0.5, 0.103)]
    assert ev.check_metrics_match_log([], b"").verdict is Verdict.FAIL


def test_gpu_busy_needs_the_task_on_that_gpu() -> None:
    busy = [{"gpu_id": 0, "status": "training", "current_task": "t"}]
    assert ev.check_gpu_busy(busy, "t", 0).verdict is Verdict.PASS
    assert ev.check_gpu_busy(busy, "other", 0).verdict is Verdict.FAIL
    assert ev.check_gpu_busy(busy, "t", 1).verdict is Verdict.FAIL
    idle = [{"gpu_id": 0, "status": "available", "current_task": "t"}]
    assert ev.check_gpu_busy(idle, "t", 0).verdict is Verdict.FAIL


def test_gpu_process_must_be_one_of_the_job() -> None:
    assert ev.check_gpu_process([10, 11], [11, 12]).verdict is Verdict.PASS
    assert ev.check_gpu_process([10], [11, 12]).verdict is Verdict.FAIL
    assert ev.check_gpu_process([], [11]).verdict is Verdict.FAIL


def stop(log_data: bytes, **changes: object) -> Verdict:
    arguments = dict(
        answer={"last_checkpoint": "global_step10"},
        log=log_data,
        latest="global_step10",
        checkpoint_exists=True,
        steps_per_epoch=8,
        status="stopped",
    )
    arguments.update(changes)
    return ev.check_graceful_stop(**arguments).verdict  # type: ignore[arg-type]


def test_graceful_stop_needs_save_quit_mid_epoch_and_the_named_checkpoint() -> None:
    quit_at_10 = log(steps(1, 10), "Manually quitting\n")
    assert stop(quit_at_10) is Verdict.PASS
    assert stop(log(steps(1, 10))) is Verdict.FAIL  # no "Manually quitting"
    assert stop(log(steps(1, 8), "Manually quitting\n")) is Verdict.FAIL  # at an epoch's end
    assert stop(quit_at_10, latest="global_step8") is Verdict.FAIL
    assert stop(quit_at_10, checkpoint_exists=False) is Verdict.FAIL
    assert stop(quit_at_10, status="failed") is Verdict.FAIL


def test_resume_must_restart_at_the_step_after_the_stop() -> None:
    after = log(
        "Resuming training from checkpoint. Resuming at epoch: 2, step: 11\n", steps(11, 13)
    )
    assert ev.check_resume(after, 10, 13).verdict is Verdict.PASS
    assert ev.check_resume(after, 9, 13).verdict is Verdict.FAIL
    assert ev.check_resume(log(steps(1, 3)), 10, 13).verdict is Verdict.FAIL  # started over
    assert ev.check_resume(after, 10, 10).verdict is Verdict.FAIL  # API never moved on


def test_reattach_needs_the_same_run_and_processes_and_caught_up_steps() -> None:
    def verdict(**changes: object) -> Verdict:
        arguments = dict(
            status_after="running",
            run_before=2,
            run_after=2,
            pids_before=[5, 6],
            pids_after=[5, 6],
            last_dead_step=40,
            api_step_after=41,
        )
        arguments.update(changes)
        return ev.check_reattach(**arguments).verdict  # type: ignore[arg-type]

    assert verdict() is Verdict.PASS
    assert verdict(run_after=3) is Verdict.FAIL  # relaunched
    assert verdict(pids_after=[7]) is Verdict.FAIL
    assert verdict(api_step_after=39) is Verdict.FAIL
    assert verdict(status_after="failed") is Verdict.FAIL


def test_trainer_survival_needs_steps_written_while_dpd_was_dead() -> None:
    written = ev.step_lines(log(steps(5, 7)))
    assert ev.check_trainer_survives(written, 3).verdict is Verdict.PASS
    assert ev.check_trainer_survives([], 3).verdict is Verdict.FAIL
    assert ev.check_trainer_survives(written, 0).verdict is Verdict.FAIL


def test_completed_needs_the_marker_and_the_last_step() -> None:
    done = log(steps(1, 24), "TRAINING COMPLETE!\n")
    assert ev.check_completed("completed", done, 24).verdict is Verdict.PASS
    assert ev.check_completed("completed", log(steps(1, 24)), 24).verdict is Verdict.FAIL
    assert ev.check_completed("completed", done, 32).verdict is Verdict.FAIL
    assert ev.check_completed("failed", done, 24).verdict is Verdict.FAIL


def test_lora_must_hold_lora_tensors() -> None:
    loaded = {"loader": "x", "tensors": 4, "keys": ["transformer.a.lora_A.weight"]}
    assert ev.check_lora(loaded, "f").verdict is Verdict.PASS
    assert ev.check_lora({**loaded, "tensors": 0}, "f").verdict is Verdict.FAIL
    assert ev.check_lora({**loaded, "keys": ["weight"]}, "f").verdict is Verdict.FAIL
    assert ev.check_lora(None, None).verdict is Verdict.FAIL


def test_impossible_job_must_fail_with_the_trainers_words_in_dpds_error() -> None:
    message = "Processed dataset was empty"
    data = log("[rank0]: RuntimeError: Processed dataset was empty. Probably caused\n")
    failed = {"status": "failed", "error": {"exit_code": 1, "lines": [f"RuntimeError: {message}"]}}
    assert ev.check_impossible_fails(failed, data, message).verdict is Verdict.PASS
    assert (
        ev.check_impossible_fails({**failed, "error": {"exit_code": 1}}, data, message).verdict
        is Verdict.FAIL
    )
    assert (
        ev.check_impossible_fails({**failed, "status": "completed"}, data, message).verdict
        is Verdict.FAIL
    )
    assert ev.check_impossible_fails(failed, b"", message).verdict is Verdict.FAIL
    assert ev.check_impossible_fails(None, data, message).verdict is Verdict.FAIL


def test_step_times_split_by_the_log_window_when_dpd_was_dead() -> None:
    data = log(steps(1, 3, t=9.0), steps(4, 6, t=0.3), steps(7, 8, t=0.2))
    lines = ev.step_lines(data)
    dead_from, dead_to = lines[3].offset, lines[6].offset
    following, dead = ev.split_step_times(lines, dead_from, dead_to)
    assert dead == [0.3, 0.3, 0.3]
    assert following == [9.0, 9.0, 0.2, 0.2]  # the first step (warm-up) left out
    assert ev.median_or_none(dead) == 0.3 and ev.median_or_none([]) is None


def test_cpu_percent() -> None:
    assert ev.cpu_percent(0.5, 10.0) == 5.0
    assert ev.cpu_percent(1.0, 0.0) is None


def test_no_leftovers() -> None:
    assert ev.check_no_leftovers("x", [], "now").verdict is Verdict.PASS
    assert ev.check_no_leftovers("x", [4], "now").verdict is Verdict.FAIL
