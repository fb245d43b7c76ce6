"""The output parser on recorded trainer output (tests/supervisor/recorded/, written by hand
from reference/diffusion-pipe.md §4.2-4.4 and §6.4) and on single lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dpd.jobs.states import Phase
from dpd.supervisor.output_parser import (
    CheckpointSaved,
    Completed,
    EpochEnded,
    EpochStarted,
    EvalLoss,
    EvalStarted,
    Failure,
    GlobalBatch,
    ManualQuit,
    ModelSaved,
    Observation,
    OutputParser,
    PhaseChanged,
    Resumed,
    StepDone,
    TotalSteps,
    total_steps,
)
from dpd.trainlog.follow import split_lines

RECORDED = Path(__file__).parent / "recorded"
RUN_DIR = "/srv/dpd/outputs/train_20250212_07000001/20250212_07-01-02"
LOGGED = "[2025-02-12 07:02:00,000] [INFO] [logging.py:123:log_dist] [Rank 0] "
LR_LINE = LOGGED + "step={}, skipped=0, lr=[{}], mom=[[0.9, 0.99]]"


def recorded(name: str) -> list[str]:
    return split_lines((RECORDED / name).read_bytes().decode("utf-8"))


def parse(lines: list[str], parser: OutputParser | None = None) -> list[Observation]:
    parser = parser or OutputParser(epochs=2, max_steps=None)
    found: list[Observation] = []
    for index, line in enumerate(lines):
        found.extend(parser.feed(line, 1000.0 + index))
    return found


def step(n: int, loss: float, it: float, sps: float, lr: float, epoch: int) -> StepDone:
    return StepDone(n, loss, it, sps, lr, None, epoch)


def failures(found: list[Observation]) -> list[Failure]:
    return [o for o in found if isinstance(o, Failure)]


# ---------------------------------------------------------------- recorded runs


def test_successful_two_epoch_run_gives_exactly_these_observations() -> None:
    found = parse(recorded("success_2epochs.log"))
    # nan is not equal to itself: check step 5 apart, then compare the rest exactly
    nan_step = found.pop(20)
    assert isinstance(nan_step, StepDone) and nan_step.step == 5 and math.isnan(nan_step.loss)
    assert found == [
        PhaseChanged(Phase.CACHING),
        PhaseChanged(Phase.TRAINING),
        GlobalBatch(4),
        PhaseChanged(Phase.EVAL),
        EvalStarted(0),
        PhaseChanged(Phase.TRAINING),
        step(1, 0.4567, 2.0, 2.0, 1e-05, 1),
        step(2, 0.3210, 2.1, 1.905, 2e-05, 1),
        step(3, 0.2500, 1.9, 2.105, 2e-05, 1),
        PhaseChanged(Phase.SAVING),
        CheckpointSaved("global_step3", 3, RUN_DIR),
        EpochEnded(1, 0.342567, 3),
        ModelSaved("epoch1", 3),
        PhaseChanged(Phase.TRAINING),
        TotalSteps(6, 3),
        EpochStarted(2),
        PhaseChanged(Phase.EVAL),
        EvalStarted(3),
        PhaseChanged(Phase.TRAINING),
        step(4, 0.2, 2.0, 2.0, 2e-05, 2),
        step(6, 0.1, 2.0, 2.0, 2e-05, 2),
        PhaseChanged(Phase.SAVING),
        CheckpointSaved("global_step6", 6, RUN_DIR),
        EpochEnded(2, 0.15, 6),  # the nan step is left out of the mean
        ModelSaved("epoch2", 6),
        PhaseChanged(Phase.EVAL),
        EvalStarted(6),
        Completed(),
    ]


def test_save_quit_on_two_gpus_reports_each_rank_line_once() -> None:
    found = parse(recorded("save_quit.log"))
    assert found.count(GlobalBatch(8)) == 1
    assert found.count(ManualQuit()) == 1
    assert found[-3:] == [
        PhaseChanged(Phase.SAVING),
        CheckpointSaved("global_step4", 4, RUN_DIR),
        ManualQuit(),
    ]
    assert step(4, 0.2, 3.0, 2.667, 2e-05, 2) in found
    assert Completed() not in found and not failures(found)


def test_resume_continues_numbering_and_ends_the_partial_epoch() -> None:
    found = parse(recorded("resume.log"))
    assert found == [
        PhaseChanged(Phase.CACHING),
        PhaseChanged(Phase.TRAINING),
        GlobalBatch(8),
        Resumed(2, 5),
        step(5, 0.15, 2.5, 3.2, 2e-05, 2),
        step(6, 0.13, 2.5, 3.2, 2e-05, 2),
        PhaseChanged(Phase.SAVING),
        CheckpointSaved("global_step6", 6, RUN_DIR),
        EpochEnded(2, 0.14, 6),
        ModelSaved("epoch2", 6),
        Completed(),
    ]


def test_cuda_oom_on_two_ranks_is_one_failure_with_the_traceback() -> None:
    found = parse(recorded("oom.log"))
    (failure,) = failures(found)
    assert failure.cause == "cuda_oom"
    assert failure.message.startswith("torch.OutOfMemoryError: CUDA out of memory. Tried")
    assert "GPU 0" in failure.message
    assert failure.phase is Phase.TRAINING
    assert failure.lines[0] == "Traceback (most recent call last):"
    assert failure.lines[-1] == failure.message
    assert not any(line.startswith("[rank") for line in failure.lines)
    assert len(failure.lines) == 7  # rank 1's interleaved lines are kept apart


def test_traceback_during_caching_fails_in_the_caching_phase() -> None:
    parser = OutputParser(epochs=2, max_steps=None)
    found = parse(recorded("caching_traceback.log"), parser)
    (failure,) = failures(found)
    assert failure.cause == "dataset_error"
    assert failure.message == "NotImplementedError: WebP videos are not supported."
    assert failure.phase is Phase.CACHING
    assert parser.phase is Phase.CACHING


def test_a_caching_child_failing_before_any_caching_line_is_still_caching() -> None:
    lines = [
        "Process Process-1:",
        "Traceback (most recent call last):",
        '  File "/opt/diffusion-pipe/utils/dataset.py", line 1180, in _cache_fn',
        "AssertionError: Directory /data/empty had no images/videos!",
    ]
    found = parse(lines)
    assert found[0] == PhaseChanged(Phase.CACHING)
    (failure,) = failures(found)
    assert (failure.cause, failure.phase) == ("dataset_error", Phase.CACHING)


def test_port_clash_is_port_in_use() -> None:
    (failure,) = failures(parse(recorded("port_clash.log")))
    assert failure.cause == "port_in_use"
    assert "EADDRINUSE" in failure.message
    assert failure.phase is Phase.STARTING


def test_config_error_before_dist_init_names_the_failing_assert() -> None:
    (failure,) = failures(parse(recorded("config_error.log")))
    assert failure.cause == "config_error"
    assert failure.message.startswith(
        "AssertionError at train.py:140 in set_config_defaults: assert 'save_every_n_epochs'"
    )


def test_missing_config_file_is_missing_file() -> None:
    (failure,) = failures(parse(recorded("missing_config.log")))
    assert failure.cause == "missing_file"
    assert failure.message.startswith("FileNotFoundError: [Errno 2] No such file or directory")


def test_resume_without_latest_is_checkpoint_missing_with_the_path() -> None:
    (failure,) = failures(parse(recorded("resume_missing_latest.log")))
    assert failure.cause == "checkpoint_missing"
    assert failure.message.endswith(f"Unable to find latest file at {RUN_DIR}/latest")


def test_every_recorded_line_feeds_without_error_and_unknown_lines_give_nothing() -> None:
    parser = OutputParser(epochs=2, max_steps=None)
    for path in sorted(RECORDED.glob("*.log")):
        for line in recorded(path.name):
            parser.feed(line, 0.0)
    assert parser.misread_lines == 0
    assert parser.feed("some line nobody knows", 0.0) == []
    assert parser.feed("", 0.0) == []


# ------------------------------------------------------------------- single lines


def test_lr_and_grad_norm_come_from_the_deepspeed_line_before_the_step() -> None:
    parser = OutputParser(epochs=None, max_steps=None)
    parser.feed(LR_LINE.format(7, "3.5e-05, 1e-04") + ", grad_norm=0.85", 0.0)
    found = parser.feed("steps: 7 loss: 0.1234 iter time (s): 1.500 samples/sec: 2.667", 0.0)
    assert found == [
        PhaseChanged(Phase.TRAINING),
        StepDone(7, 0.1234, 1.5, 2.667, 3.5e-05, 0.85, 1),
    ]
    assert found[-1] == StepDone(7, 0.1234, 1.5, 2.667, 3.5e-05, 0.85, 1)
    (later,) = parser.feed("steps: 8 loss: -inf iter time (s): 1.500 samples/sec: 2.667", 0.0)
    assert later.lr == 3.5e-05 and later.grad_norm is None and later.loss == -math.inf  # type: ignore[union-attr]


def test_extra_loss_pairs_and_a_grad_norm_pair_on_the_step_line() -> None:
    parser = OutputParser(epochs=None, max_steps=None)
    line = (
        "steps: 3 loss: 0.5000 grad_norm: 1.2500 aux: 0.1 iter time (s): 2.000 samples/sec: 1.000"
    )
    assert parser.feed(line, 0.0)[-1] == StepDone(3, 0.5, 2.0, 1.0, None, 1.25, 1)


def test_a_malformed_step_line_is_ignored() -> None:
    parser = OutputParser(epochs=None, max_steps=None)
    assert parser.feed("steps: 3 loss: x.y iter time (s): 2.000 samples/sec: 1.000", 0.0) == []
    assert parser.feed("steps: three", 0.0) == []
    assert parser.step == 0


def test_total_steps_from_the_hint_then_corrected_at_epoch_two() -> None:
    parser = OutputParser(epochs=10, max_steps=None, steps_per_epoch_hint=4)
    first = parser.feed("hello", 0.0)
    assert first == [TotalSteps(40, 4)]
    for n in (1, 2, 3, 4, 5):
        parser.feed(f"steps: {n} loss: 0.1000 iter time (s): 1.000 samples/sec: 1.000", 0.0)
    assert TotalSteps(50, 5) in parser.feed("Started new epoch: 2", 0.0)
    assert parser.steps_per_epoch == 5


def test_total_steps_rules() -> None:
    assert total_steps(10, None, 5) == 50
    assert total_steps(10, 30, 5) == 30
    assert total_steps(10, 300, 5) == 50
    assert total_steps(10, 30, None) == 30
    assert total_steps(10, None, None) is None
    assert total_steps(None, None, 5) is None


def test_max_steps_alone_is_the_total_until_the_epoch_length_is_known() -> None:
    parser = OutputParser(epochs=100, max_steps=7)
    assert parser.feed("x", 0.0) == [TotalSteps(7, None)]


def test_steps_per_epoch_learnt_after_a_resume() -> None:
    parser = OutputParser(epochs=5, max_steps=None)
    parser.feed("Resuming training from checkpoint. Resuming at epoch: 3, step: 9", 0.0)
    parser.feed("steps: 12 loss: 0.1000 iter time (s): 1.000 samples/sec: 1.000", 0.0)
    found = parser.feed("Started new epoch: 4", 0.0)
    assert TotalSteps(20, 4) in found
    assert EpochEnded(3, 0.1, 12) in found


def test_step_save_and_checkpoint_lines() -> None:
    parser = OutputParser(epochs=None, max_steps=None)
    parser.feed("steps: 100 loss: 0.1000 iter time (s): 1.000 samples/sec: 1.000", 0.0)
    assert parser.feed("Saving model to directory step100", 0.0) == [
        PhaseChanged(Phase.SAVING),
        ModelSaved("step100", 100),
    ]
    logged = "[2025-02-12 07:00:00,000] [INFO] [logging.py:123:log_dist] [Rank 0] "
    assert (
        parser.feed(logged + "[Torch] Checkpoint global_step100 is about to be saved!", 0.0) == []
    )
    path = "/o/r/global_step100/mp_rank_{:02d}_model_states.pt"
    assert parser.feed(logged + "Saving model checkpoint: " + path.format(0), 0.0) == [
        CheckpointSaved("global_step100", 100, "/o/r")
    ]
    assert parser.feed(logged + "Saving model checkpoint: " + path.format(1), 0.0) == []


def test_eval_loss_if_a_trainer_prints_one() -> None:
    parser = OutputParser(epochs=None, max_steps=None)
    parser.feed("steps: 10 loss: 0.1000 iter time (s): 1.000 samples/sec: 1.000", 0.0)
    assert parser.feed("eval loss: 0.2310", 0.0) == [EvalLoss(0.231, 10, None)]
    assert parser.feed("val_set eval loss: 0.5", 0.0) == [EvalLoss(0.5, 10, "val_set")]
    assert parser.feed("Evaluation - Loss: 0.231 - Eval time: 45.2s", 0.0)[0].loss == 0.231  # type: ignore[union-attr]


def test_caching_starts_at_any_caching_marker_or_bar() -> None:
    for line in (
        "caching text embeddings: /d",
        "[CACHE] Existing cache length: 4",
        "Found grouped metadata cache. Directly loading it.",
        "Map (num_proc=8):  10%|█         | 1/10 [00:00<00:01, 9.00 examples/s]",
    ):
        assert OutputParser(None, None).feed(line, 0.0) == [PhaseChanged(Phase.CACHING)]


def test_text_glued_after_a_progress_bar_is_still_parsed() -> None:
    parser = OutputParser(epochs=None, max_steps=None)
    parser.feed("Running eval", 0.0)
    glued = " 56%|█████▌    | 5/9 [00:01<00:00, 4.50it/s]TRAINING COMPLETE!"
    assert parser.feed(glued, 0.0) == [Completed()]


def test_quit_paths_that_exit_zero_without_training_are_failures() -> None:
    warning = "WARNING: You have set a lot of resolutions in the dataset config. Please read"
    (failure,) = OutputParser(None, None).feed(warning, 0.0)
    assert isinstance(failure, Failure) and failure.cause == "config_error"
    usage = "train.py: error: unrecognized arguments: --bogus"
    (failure,) = OutputParser(None, None).feed(usage, 0.0)
    assert isinstance(failure, Failure) and failure.message == usage


def test_worker_killed_by_a_signal() -> None:
    line = (
        "[2025-02-12 07:00:00,000] [ERROR] [launch.py:325:sigkill_handler] "
        "['python'] exits with return code = -9"
    )
    (failure,) = OutputParser(None, None).feed(line, 0.0)
    assert isinstance(failure, Failure)
    assert failure.cause == "worker_killed"
    assert failure.message == (
        "a trainer worker was killed by SIGKILL (out of memory?) (exit code 247)"
    )
    parser = OutputParser(None, None)
    parser.feed("Manually quitting", 0.0)
    assert parser.feed(line, 0.0) == []


SHUTDOWN_TRACEBACK = [
    "Exception ignored in atexit callback: <function _exit_function>",
    "Traceback (most recent call last):",
    '  File "/usr/lib/python3.12/multiprocessing/util.py", line 360, in _exit_function',
    "    _run_finalizers()",
    "KeyboardInterrupt: ",
]
CHAINED_TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "a.py", line 1, in f',
    "[2025-02-12 07:00:00,000] [INFO] [launch.py:1:main] unrelated logger line",
    "    g()",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "b.py", line 2, in h',
    "    raise RuntimeError('CUDA error: an illegal memory access was encountered')",
    "RuntimeError: CUDA error: an illegal memory access was encountered",
]


def test_tracebacks_at_shutdown_after_exception_ignored_are_not_failures() -> None:
    assert parse(SHUTDOWN_TRACEBACK) == []


def test_chained_tracebacks_and_foreign_lines_inside_a_traceback() -> None:
    (failure,) = failures(parse(CHAINED_TRACEBACK))
    assert failure.cause == "cuda_error"
    assert "unrelated" not in " ".join(failure.lines)


def test_a_traceback_interleaved_with_bars_keeps_only_its_last_lines() -> None:
    parser = OutputParser(epochs=1, max_steps=None)
    parse(["Traceback (most recent call last):"], parser)
    bars = [f"  {p % 100:3d}%|####      | {p}/100 [00:01<00:01, 9.1it/s]" for p in range(5000)]
    parse([*bars, '  File "train.py", line 7, in main', "    run()"], parser)
    assert len(json.dumps(parser.to_state())) < 40_000  # it goes into state.json every second
    (failure,) = failures(parse(["RuntimeError: CUDA error: device-side assert"], parser))
    assert failure.cause == "cuda_error"
    assert failure.message == "RuntimeError: CUDA error: device-side assert"
    assert failure.lines[-3:] == (
        '  File "train.py", line 7, in main',
        "    run()",
        failure.message,
    )


def test_other_failure_causes() -> None:
    cases = {
        "RuntimeError: Invalid path: /data/x": "missing_file",
        "AssertionError: Directory /d had no images/videos!": "dataset_error",
        "RuntimeError: Processed dataset was empty. Probably caused by rounding": "dataset_error",
        "NotImplementedError: This script forces alpha=rank": "config_error",
        "KeyError: 'epochs'": "config_error",
    }
    for exception, cause in cases.items():
        lines = [
            "Traceback (most recent call last):",
            '  File "t.py", line 1, in <module>',
            exception,
        ]
        (failure,) = failures(parse(lines))
        assert failure.cause == cause, exception
    training = OutputParser(None, None)
    training.feed("Global batch size = 1", 0.0)
    lines = ["Traceback (most recent call last):", "ValueError: boom"]
    assert failures(parse(lines, training))[0].cause == "traceback"


# ------------------------------------------------------------------- robustness


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=30))
def test_arbitrary_text_never_raises(lines: list[str]) -> None:
    parser = OutputParser(epochs=3, max_steps=10)
    for line in lines:
        assert isinstance(parser.feed(line, 0.0), list)
    assert parser.misread_lines == 0


PREFIXES = st.sampled_from(
    [
        "steps: ",
        "Started new epoch: ",
        "Saving model to directory ",
        "Global batch size = ",
        "Resuming training from checkpoint. Resuming at epoch: ",
        "Traceback (most recent call last):",
        "[rank0]: ",
        "[2025-02-12 07:00:00,000] [INFO] [logging.py:1:log_dist] [Rank 0] step=",
        LOGGED + "Saving model checkpoint: ",
        " 10%|█ ",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(PREFIXES, st.text(max_size=40)), max_size=30))
def test_known_prefixes_with_garbage_never_raise(pairs: list[tuple[str, str]]) -> None:
    parser = OutputParser(epochs=2, max_steps=None)
    for prefix, rest in pairs:
        assert isinstance(parser.feed(prefix + rest, 0.0), list)
    assert parser.misread_lines == 0


# ------------------------------------------------------------------ saved state


def test_a_parser_rebuilt_from_its_saved_state_goes_on_exactly_as_the_original() -> None:
    """Cut every recorded run at every line (inside tracebacks, between a step and its
    epoch's end, after the completion line...): a parser saved there, written as JSON and
    read back sees the rest exactly as one that read everything. (Compared as text: a
    trainer may print a nan loss, and nan is not equal to itself.)"""
    runs = {name: recorded(name) for name in sorted(p.name for p in RECORDED.iterdir())}
    runs["shutdown"] = recorded("success_2epochs.log") + SHUTDOWN_TRACEBACK
    runs["chained"] = CHAINED_TRACEBACK
    for name, lines in runs.items():
        for cut in range(len(lines) + 1):
            whole = OutputParser(epochs=2, max_steps=None)
            parse(lines[:cut], whole)
            saved = json.loads(json.dumps(whole.to_state()))
            rebuilt = OutputParser.from_state(saved, epochs=2, max_steps=None)
            assert rebuilt is not None
            assert json.dumps(rebuilt.to_state()) == json.dumps(whole.to_state()), (name, cut)
            rest = [(i, line) for i, line in enumerate(lines) if i >= cut]
            for index, line in rest:
                expected = repr(whole.feed(line, 1000.0 + index))
                assert repr(rebuilt.feed(line, 1000.0 + index)) == expected, (name, cut, line)
            assert json.dumps(rebuilt.to_state()) == json.dumps(whole.to_state()), (name, cut)


def test_a_saved_state_of_another_version_is_not_taken() -> None:
    state = OutputParser(epochs=1, max_steps=None).to_state()
    assert OutputParser.from_state(dict(state, version=0), epochs=1, max_steps=None) is None
