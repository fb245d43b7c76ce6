"""classify_line: level, type, time, epoch and step of trainer output lines."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dpd.trainlog.follow import split_lines
from dpd.trainlog.lines import LogLine, classify_line, split_logger, split_rank

RECORDED = Path(__file__).parents[1] / "supervisor" / "recorded"
TS = "[2025-02-12 07:02:00,123]"


def test_deepspeed_logger_line_gives_level_time_and_step() -> None:
    text = (
        f"{TS} [INFO] [logging.py:123:log_dist] [Rank 0] "
        "step=42, skipped=0, lr=[2e-05], mom=[[0.9, 0.99]]"
    )
    assert classify_line(text) == LogLine(
        message=text,
        level="INFO",
        type="train",
        timestamp="2025-02-12T07:02:00.123",
        epoch=None,
        step=42,
        rank=None,
    )


def test_plain_training_lines() -> None:
    step = classify_line("steps: 7 loss: 0.1234 iter time (s): 1.500 samples/sec: 2.667")
    assert (step.level, step.type, step.step, step.epoch, step.timestamp) == (
        "INFO",
        "train",
        7,
        None,
        None,
    )
    epoch = classify_line("Started new epoch: 3")
    assert (epoch.type, epoch.epoch) == ("train", 3)
    resumed = classify_line("Resuming training from checkpoint. Resuming at epoch: 2, step: 5")
    assert (resumed.epoch, resumed.step) == (2, 5)
    assert classify_line("Saving model to directory epoch4").epoch == 4
    assert classify_line("Saving model to directory step100").step == 100
    assert classify_line("TRAINING COMPLETE!").type == "train"
    assert classify_line("caching latents: /data/x").type == "train"


def test_checkpoint_lines_are_training_and_carry_the_step() -> None:
    line = classify_line(
        f"{TS} [INFO] [logging.py:123:log_dist] [Rank 0] "
        "[Torch] Checkpoint global_step6 is about to be saved!"
    )
    assert (line.type, line.step) == ("train", 6)


def test_eval_lines_and_eval_bars() -> None:
    assert classify_line("Running eval").type == "eval"
    bar = " 56%|█████▌    | 5/9 [00:01<00:00, 4.50it/s]"
    assert classify_line(bar, phase="eval").type == "eval"
    assert classify_line(bar, phase="caching").type == "system"


def test_launcher_and_deepspeed_noise_is_system() -> None:
    for text in (
        f"{TS} [INFO] [launch.py:256:main] process 4242 spawned with command: ['python']",
        f"{TS} [INFO] [config.py:1007:print]   train_batch_size ............. 4",
        f"{TS} [INFO] [logging.py:123:log_dist] [Rank 0] DeepSpeed Final Optimizer = adamw",
    ):
        assert classify_line(text).type == "system", text


def test_levels() -> None:
    assert (
        classify_line(f"{TS} [WARNING] [runner.py:220:fetch_hostfile] no hostfile").level
        == "WARNING"
    )
    assert (
        classify_line(f"{TS} [ERROR] [launch.py:325:x] exits with return code = 1").level == "ERROR"
    )
    assert classify_line("[rank0]: Traceback (most recent call last):").level == "ERROR"
    assert classify_line('  File "/opt/train.py", line 5, in <module>').level == "ERROR"
    oom = classify_line("[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert (oom.level, oom.rank) == ("ERROR", 1)
    assert classify_line("AssertionError").level == "ERROR"
    assert classify_line("train.py: error: unrecognized arguments: --x").level == "ERROR"
    assert classify_line("WARNING: You have set a lot of resolutions").level == "WARNING"
    assert classify_line("/x/y.py:10: UserWarning: something").level == "WARNING"
    assert classify_line("FutureWarning: deprecated").level == "WARNING"
    native = "[W212 07:00:05.120000000 socket.cpp:759] [c10d] The server socket has failed to bind"
    assert classify_line(native).level == "WARNING"
    assert (
        classify_line("steps: 1 loss: 0.1 iter time (s): 1.000 samples/sec: 1.000").level == "INFO"
    )


def test_every_recorded_line_classifies_with_known_values() -> None:
    seen_levels: set[str] = set()
    seen_types: set[str] = set()
    for path in sorted(RECORDED.glob("*.log")):
        for text in split_lines(path.read_bytes().decode("utf-8")):
            line = classify_line(text)
            assert line.level in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
            assert line.type in {"train", "eval", "system"}
            seen_levels.add(line.level)
            seen_types.add(line.type)
    assert seen_levels == {"INFO", "WARNING", "ERROR"}
    assert seen_types == {"train", "eval", "system"}


def test_splitters() -> None:
    assert split_rank("[rank12]: x") == (12, "x")
    assert split_rank("[ranked]: x") == (None, "[ranked]: x")
    assert split_logger("[2025-02-12 07:02:00,123] nothing else") is None
    parts = split_logger(f"{TS} [DEBUG] [engine.py:1:f] hello")
    assert parts is not None and (parts.level, parts.source, parts.message) == (
        "DEBUG",
        "engine.py",
        "hello",
    )


@given(st.text(max_size=300), st.sampled_from([None, "eval", "training"]))
def test_arbitrary_text_never_raises(text: str, phase: str | None) -> None:
    assert isinstance(classify_line(text, phase), LogLine)
