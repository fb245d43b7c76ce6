"""Failure injection, config acceptance and the runner's argument rules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpd.simulation import simulation_paths
from tests.simulation.conftest import FAST, group_members, write_job
from tests.waiting import wait_for


def test_port_clash_fails_rank0_with_the_torch_error(tmp_path, launch):
    job = write_job(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        sim = launch(job, port=port)
        assert sim.finish() == 1
    assert "[rank0]: Traceback (most recent call last):" in sim.stderr
    assert (
        "[rank0]: torch.distributed.DistNetworkError: The server socket has failed to listen on "
        f"any local network address. port: {port}, useIpv6: false, code: -98, name: EADDRINUSE"
    ) in sim.stderr
    assert sim.lines_matching(r"exits with return code = 1$")


def test_oom_at_step_k_exits_1_after_k_minus_1_steps(tmp_path, launch):
    job = write_job(tmp_path, images=10, epochs=1)
    sim = launch(job, env={"DPD_SIM_FAIL": "oom:3"})
    assert sim.finish() == 1
    assert [line.split()[1] for line in sim.lines_matching(r"^steps: ")] == ["1", "2"]
    assert "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in sim.stderr
    assert "TRAINING COMPLETE!" not in sim.stdout


def test_crash_at_step_k_is_a_cuda_runtime_error(tmp_path, launch):
    job = write_job(tmp_path, images=10, epochs=1)
    sim = launch(job, env={"DPD_SIM_FAIL": "crash:2"})
    assert sim.finish() == 1
    assert "[rank0]: RuntimeError: CUDA error: an illegal memory access" in sim.stderr


@pytest.mark.parametrize(
    ("env", "images", "message"),
    [
        (
            {"DPD_SIM_FAIL": "caching_hang"},
            3,
            "NotImplementedError: WebP videos are not supported.",
        ),
        ({}, 0, "had no images/videos!"),
    ],
    ids=["knob", "empty-dataset"],
)
def test_caching_failure_prints_a_traceback_then_hangs(tmp_path, launch, env, images, message):
    job = write_job(tmp_path, images=images)
    if images == 0:
        (job.data / "only-a-caption.txt").write_text("no media here")
    sim = launch(job, env=env)
    sim.wait_stderr(message)
    assert "Traceback (most recent call last):" in sim.stderr
    lines = len(sim.stdout)
    time.sleep(1.5)  # many step paces: a hang must not exit nor print anything
    assert sim.proc.poll() is None
    assert len(sim.stdout) == lines
    assert not job.run_dirs()


def test_caching_crash_exits_1(tmp_path, launch):
    sim = launch(write_job(tmp_path), env={"DPD_SIM_FAIL": "caching_crash"})
    assert sim.finish() == 1
    assert "[rank0]: RuntimeError: CUDA error" in sim.stderr


def test_exit_zero_early_has_no_marker(tmp_path, launch):
    sim = launch(write_job(tmp_path, images=5), env={"DPD_SIM_FAIL": "exit_zero_early"})
    assert sim.finish() == 0
    assert "TRAINING COMPLETE!" not in sim.stdout
    assert "Manually quitting" not in sim.stdout


def test_unknown_flag_is_a_usage_error(tmp_path, launch):
    sim = launch(write_job(tmp_path), train_args=["--no_such_flag"])
    assert sim.finish() == 2
    assert "train.py: error: unrecognized arguments: --no_such_flag" in sim.stderr


def test_more_than_three_resolutions_quits_with_zero(tmp_path, launch):
    job = write_job(tmp_path, dataset_extra="resolutions = [256, 512, 768, 1024]")
    sim = launch(job)
    assert sim.finish() == 0
    assert any(line.startswith("WARNING: You have set a lot of resolutions") for line in sim.stdout)
    assert "TRAINING COMPLETE!" not in sim.stdout
    assert not job.run_dirs()


def test_cache_only_caches_and_exits_zero(tmp_path, launch):
    job = write_job(tmp_path)
    sim = launch(job, train_args=["--cache_only"])
    assert sim.finish() == 0
    assert (job.data / "cache" / "wan").is_dir()
    assert not job.run_dirs()
    assert "TRAINING COMPLETE!" not in sim.stdout


# ------------------------------------------------------------ train.py run directly


def run_train(job_root: Path, config_text: str, *args: str) -> subprocess.CompletedProcess[str]:
    _, pipe_dir = simulation_paths()
    config = job_root / "bad.toml"
    config.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_SIM_", "RANK"))}
    env.pop("LOCAL_RANK", None)
    env.update(FAST)
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()
    return subprocess.run(
        [sys.executable, "train.py", "--config", str(config), f"--master_port={number}", *args],
        cwd=pipe_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )


def _edit(job_config: str, old: str, new: str) -> str:
    assert old in job_config
    return job_config.replace(old, new)


CONFIG_ERRORS = [
    ("save_every_n_epochs = 1", "", "\nAssertionError\n", False),
    (
        "rank = 16",
        "rank = 16\nalpha = 16",
        "NotImplementedError: This script forces alpha=rank",
        False,
    ),
    (
        "type = 'lora'",
        "type = 'dora'",
        "NotImplementedError: Adapter type dora is not implemented",
        False,
    ),
    ("dtype = 'bfloat16'\n[adapter]", "dtype = 'bf16'\n[adapter]", "KeyError: 'bf16'", False),
    (
        "type = 'wan'",
        "type = 'wan3'",
        "NotImplementedError: Model type wan3 is not implemented",
        True,
    ),
    ("ckpt_path = '/models/Wan2.1-T2V-1.3B'\n", "", "KeyError: 'ckpt_path'", True),
    (
        "epochs = 2",
        "epochs = 2\nlr_scheduler = 'step'",
        "NotImplementedError: Unknown lr_scheduler: step",
        True,
    ),
    (
        "epochs = 2",
        "epochs = 2\nactivation_checkpointing = 'yes'",
        "NotImplementedError: activation_checkpointing=yes is not implemented",
        True,
    ),
    ("epochs = 2", "epochs = 2\neval_datasets = ['{dataset}']", "TypeError: string indices", True),
]


@pytest.mark.parametrize(("old", "new", "error", "prefixed"), CONFIG_ERRORS)
def test_config_errors_match_the_real_trainer(tmp_path, old, new, error, prefixed):
    job = write_job(tmp_path)
    text = _edit(job.config.read_text(), old, new.format(dataset=job.dataset))
    result = run_train(tmp_path, text)
    assert result.returncode == 1, result.stderr
    assert error in result.stderr
    # Errors after process-group init carry torch's `[rank0]: ` prefix, earlier ones do not.
    assert ("[rank0]: Traceback" in result.stderr) == prefixed


def test_missing_dataset_dir_is_invalid_path(tmp_path):
    job = write_job(tmp_path)
    job.dataset.write_text(f"resolutions = [512]\n[[directory]]\npath = '{tmp_path / 'nope'}'\n")
    result = run_train(tmp_path, job.config.read_text())
    assert result.returncode == 1
    assert f"[rank0]: RuntimeError: Invalid path: {tmp_path / 'nope'}" in result.stderr


def test_missing_config_file_is_file_not_found(tmp_path):
    _, pipe_dir = simulation_paths()
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(tmp_path / "absent.toml")],
        cwd=pipe_dir,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 1
    assert "FileNotFoundError: [Errno 2] No such file or directory" in result.stderr
    assert result.stderr.startswith("[dpd-simulation]")  # run directly: it labels itself


# ----------------------------------------------------------------- runner arguments


def run_runner(tmp_path: Path, launcher_args: list[str], env: dict[str, str]) -> tuple[int, str]:
    job = write_job(tmp_path)
    command, pipe_dir = simulation_paths()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DPD_SIM_")}
    full_env.pop("CUDA_VISIBLE_DEVICES", None)
    full_env.update(FAST, **env)
    result = subprocess.run(
        [*command.split(), *launcher_args, "train.py", "--config", str(job.config), "--cache_only"],
        cwd=pipe_dir,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.returncode, result.stdout + result.stderr


def test_include_and_num_gpus_are_exclusive(tmp_path):
    code, output = run_runner(tmp_path, ["--num_gpus", "1", "--include", "localhost:0"], {})
    assert code == 1
    assert "ValueError: Cannot specify num_nodes/gpus with include/exclude" in output


def test_visible_devices_are_ignored_and_deleted_with_num_gpus(tmp_path):
    code, output = run_runner(tmp_path, ["--num_gpus", "1"], {"CUDA_VISIBLE_DEVICES": "3"})
    assert code == 0
    assert "Detected VISIBLE_DEVICES=3 but ignoring it" in output
    assert "Setting CUDA_VISIBLE_DEVICES=0" in output


def test_visible_devices_alone_become_include(tmp_path):
    code, output = run_runner(tmp_path, [], {"CUDA_VISIBLE_DEVICES": "2,3"})
    assert code == 0
    assert "Detected VISIBLE_DEVICES=2,3: setting --include=localhost:2,3" in output
    assert "Setting CUDA_VISIBLE_DEVICES=2,3" in output
    assert output.count("spawned with command") == 2


def test_no_gpu_at_all_is_the_real_error(tmp_path):
    code, output = run_runner(tmp_path, [], {"DPD_SIM_GPU_COUNT": "0"})
    assert code == 1
    assert "RuntimeError: Unable to proceed, no GPU resources available" in output


def test_busy_gpu_gives_cuda_oom(tmp_path, launch):
    import fcntl

    job = write_job(tmp_path)
    job.gpu_dir.mkdir()
    with open(job.gpu_dir / "gpu0", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        sim = launch(job)
        assert sim.finish() == 1
    assert "[rank0]: torch.OutOfMemoryError: CUDA out of memory." in sim.stderr
    wait_for(lambda: not group_members(sim.proc.pid), 5, what="the group to empty")
