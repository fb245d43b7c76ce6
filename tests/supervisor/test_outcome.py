from __future__ import annotations

import signal

import pytest

from dpd.jobs.states import Status
from dpd.supervisor.outcome import RunFacts, judge_run
from dpd.supervisor.outcome import StopReason as Stop


def test_training_complete_is_success() -> None:
    assert judge_run(RunFacts(completed=True, returncode=0)).status is Status.COMPLETED


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (RunFacts(returncode=0), "exited 0 without printing TRAINING COMPLETE!"),
        (RunFacts(returncode=1), "exited with code 1"),
        (RunFacts(returncode=247), "killed by SIGKILL (out of memory?) (exit code 247)"),
        (RunFacts(returncode=241), "killed by SIGTERM (exit code 241)"),
        (RunFacts(signal=int(signal.SIGKILL)), "killed by SIGKILL (out of memory?)"),
        (RunFacts(signal=int(signal.SIGSEGV)), "killed by SIGSEGV"),
        (
            RunFacts(returncode=1, failure_cause="cuda_oom", failure_message="CUDA out of memory"),
            "CUDA out of memory",
        ),
        (RunFacts(reason="no output for 1800 s during caching"), "no output for 1800 s"),
    ],
)
def test_exit_zero_is_not_proof_and_failures_say_why(facts: RunFacts, reason: str) -> None:
    outcome = judge_run(facts)
    assert outcome.status is Status.FAILED
    assert outcome.error is not None and reason in outcome.error["reason"]


def test_a_requested_stop_is_stopped_whatever_the_exit_code() -> None:
    assert judge_run(RunFacts(stop_requested=Stop.GRACEFUL, returncode=0)).status is Status.STOPPED
    assert judge_run(RunFacts(stop_requested=Stop.FORCE, signal=9)).status is Status.STOPPED
    assert judge_run(RunFacts(stop_requested=Stop.GRACEFUL, returncode=1)).status is Status.STOPPED


def test_a_completed_run_stopped_by_force_is_stopped_and_one_the_daemon_ended_failed() -> None:
    assert judge_run(RunFacts(completed=True, stop_requested=Stop.FORCE)).status is (Status.STOPPED)
    ended = judge_run(RunFacts(completed=True, stop_requested=Stop.FAILURE, reason="hung"))
    assert ended.status is Status.FAILED


def test_user_created_save_quit_counts_as_a_stop() -> None:
    assert judge_run(RunFacts(manual_quit=True, returncode=0)).status is Status.STOPPED


def test_a_stop_forced_by_a_failure_is_a_failure() -> None:
    outcome = judge_run(RunFacts(stop_requested=Stop.FAILURE, reason="a traceback during caching"))
    assert outcome.status is Status.FAILED
    assert outcome.error["reason"] == "a traceback during caching"


def test_error_keeps_only_the_last_lines() -> None:
    lines = [f"line {i}" for i in range(100)]
    error = judge_run(RunFacts(returncode=1, last_lines=lines)).error
    assert error is not None and error["last_lines"] == lines[-20:]
