"""Whole runs of the simulated trainer: output order, run-dir layout, resume, save_quit."""

from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path

from tests.simulation.conftest import write_job

STEP = re.compile(
    r"^steps: (\d+) loss: (\d+\.\d{4}) iter time \(s\): \d+\.\d{3} samples/sec: \d+\.\d{3}$"
)
DS_STEP = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[INFO\] \[logging\.py:123:log_dist\] "
    r"\[Rank 0\] step=(\d+), skipped=0, lr=\[2e-05\], mom=\[\[0\.9, 0\.99\]\]$"
)
RUN_DIR = re.compile(r"^\d{8}_\d{2}-\d{2}-\d{2}$")


def gpu_is_free(gpu_dir: Path, gpu: int) -> bool:
    path = gpu_dir / f"gpu{gpu}"
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def index_of(lines: list[str], pattern: str) -> int:
    regex = re.compile(pattern)
    return next(i for i, line in enumerate(lines) if regex.search(line))


def test_full_run_prints_the_real_lines_in_order_and_writes_the_layout(tmp_path, launch):
    job = write_job(tmp_path, images=3, epochs=2)
    sim = launch(job)
    assert sim.finish() == 0
    out = sim.stdout
    assert sim.stderr.startswith("[dpd-simulation]")
    assert sim.stderr.count("[dpd-simulation]") == 1
    assert "\rcaching latents: " in sim.stderr  # tqdm redraws go to stderr

    steps = [int(m.group(1)) for line in out if (m := STEP.match(line))]
    assert steps == [1, 2, 3, 4, 5, 6]  # 3 captioned images, batch 1 -> 3 steps per epoch
    ds_steps = [int(m.group(1)) for line in out if (m := DS_STEP.match(line))]
    assert ds_steps == steps
    losses = [float(m.group(2)) for line in out if (m := STEP.match(line))]
    assert all(0 < loss < 1 for loss in losses) and losses[-1] < losses[0]
    # Each DeepSpeed step line comes right before its `steps:` line.
    for i, line in enumerate(out):
        if STEP.match(line):
            assert DS_STEP.match(out[i - 1])

    order = [
        r"^caching latents: ",
        r"^Global batch size = 1$",
        r"^steps: 3 ",
        r"^Saving model to directory epoch1$",
        r"^Started new epoch: 2$",
        r"^steps: 4 ",
        r"^steps: 6 ",
        r"^Saving model to directory epoch2$",  # process_epoch, then the final checkpoint
        r"Saving model checkpoint: .*/global_step6/mp_rank_00_model_states\.pt$",
        r"^TRAINING COMPLETE!$",
        r"Process \d+ exits successfully\.$",
    ]
    positions = [index_of(out, pattern) for pattern in order]
    assert positions == sorted(positions)
    assert index_of(out, r"^Started new epoch: 2$") == index_of(out, r"^steps: 3 ") + 2

    (run_dir,) = job.run_dirs()
    assert RUN_DIR.match(run_dir.name)
    assert (run_dir / "config.toml").read_text() == job.config.read_text()
    assert (run_dir / "dataset.toml").exists()
    for epoch in ("epoch1", "epoch2"):
        assert (run_dir / epoch / "adapter_model.safetensors").is_file()
        assert json.loads((run_dir / epoch / "adapter_config.json").read_text())["r"] == 16
        assert (run_dir / epoch / "config.toml").is_file()
        assert not (run_dir / epoch / "tmp").exists()
    assert (run_dir / "global_step6" / "mp_rank_00_model_states.pt").is_file()
    assert (run_dir / "latest").read_text() == "global_step6"
    assert (job.data / "cache" / "wan").is_dir()
    assert gpu_is_free(job.gpu_dir, 0)


def test_options_steps_per_print_step_saves_eval_and_max_steps(tmp_path, launch):
    job = write_job(
        tmp_path,
        images=4,
        epochs=5,
        extra=(
            "save_every_n_steps = 3\nmax_steps = 5\nsteps_per_print = 2\n"
            "eval_every_n_steps = 2\n"
            f"eval_datasets = [{{name = 'ev', config = '{tmp_path / 'dataset.toml'}'}}]"
        ),
    )
    sim = launch(job)
    assert sim.finish() == 0
    out = sim.stdout
    assert [m.group(1) for line in out if (m := STEP.match(line))] == ["2", "4"]
    assert len(sim.lines_matching(r"^Running eval$")) == 3  # before step 1, after 2 and 4
    assert index_of(out, r"^Saving model to directory step3$") < index_of(out, r"^steps: 4 ")
    assert out.index("Saving model to directory step5") < out.index("TRAINING COMPLETE!")
    (run_dir,) = job.run_dirs()
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == [
        "global_step5",
        "step3",
        "step5",
    ]


def test_two_workers_hold_their_gpus_and_print_per_rank_lines(tmp_path, launch):
    job = write_job(tmp_path, images=8, epochs=2)
    sim = launch(
        job, launcher_args=["--include", "localhost:0,1"], env={"DPD_SIM_STEP_SECONDS": "0.1"}
    )
    sim.wait_line(r"^steps: 1 ")
    assert not gpu_is_free(job.gpu_dir, 0) and not gpu_is_free(job.gpu_dir, 1)
    assert sim.finish() == 0
    assert len(sim.lines_matching(r"^Global batch size = 2$")) == 2  # every rank, DP=2
    assert len(sim.lines_matching(r"process \d+ spawned with command: ")) == 2
    assert len(sim.lines_matching(r"Process \d+ exits successfully\.$")) == 2
    assert sim.lines_matching(r"^steps: \d+ ")[-1].startswith("steps: 8 ")  # 8 / 2 x 2 epochs
    assert "Setting CUDA_VISIBLE_DEVICES=0,1" in "\n".join(sim.stdout)
    assert gpu_is_free(job.gpu_dir, 0) and gpu_is_free(job.gpu_dir, 1)


def test_save_quit_then_resume_continues_the_numbering(tmp_path, launch):
    job = write_job(tmp_path, images=5, epochs=2, extra="save_every_n_epochs = 1")
    sim = launch(job, env={"DPD_SIM_STEP_SECONDS": "0.1"})
    sim.wait_line(r"^steps: 2 ")
    (run_dir,) = job.run_dirs()
    (run_dir / "save_quit").touch()
    assert sim.finish() == 0
    assert "Manually quitting" in sim.stdout
    assert "TRAINING COMPLETE!" not in sim.stdout
    assert not (run_dir / "save_quit").exists()
    tag = (run_dir / "latest").read_text()
    saved = int(tag.removeprefix("global_step"))
    assert (run_dir / tag / "mp_rank_00_model_states.pt").is_file()

    copy_before = (run_dir / "config.toml").read_text()
    job.config.write_text(job.config.read_text() + "\n# edited after the first run\n")
    resumed = launch(job, train_args=["--resume_from_checkpoint", run_dir.name])
    assert resumed.finish() == 0
    out = resumed.stdout
    epoch = 1 if saved < 5 else 2
    assert (
        f"Resuming training from checkpoint. Resuming at epoch: {epoch}, step: {saved + 1}" in out
    )
    first = next(m.group(1) for line in out if (m := STEP.match(line)))
    assert int(first) == saved + 1
    assert "TRAINING COMPLETE!" in out
    assert job.run_dirs() == [run_dir]
    assert (run_dir / "config.toml").read_text() == copy_before  # no re-copy on resume
    assert (run_dir / "latest").read_text() == "global_step10"


def test_save_signal_file_checkpoints_and_training_goes_on(tmp_path, launch):
    job = write_job(tmp_path, images=6, epochs=1)
    sim = launch(job, env={"DPD_SIM_STEP_SECONDS": "0.1"})
    sim.wait_line(r"^steps: 1 ")
    (run_dir,) = job.run_dirs()
    (run_dir / "save").touch()
    assert sim.finish() == 0
    assert not (run_dir / "save").exists()
    checkpoints = sorted(p.name for p in run_dir.glob("global_step*"))
    assert len(checkpoints) == 2 and "global_step6" in checkpoints
    assert "TRAINING COMPLETE!" in sim.stdout


def test_resume_without_latest_warns_then_fails(tmp_path, launch):
    job = write_job(tmp_path)
    (job.out / "20240101_00-00-00").mkdir(parents=True)
    sim = launch(job, train_args=["--resume_from_checkpoint", "20240101_00-00-00"])
    assert sim.finish() == 1
    assert any("Unable to find latest file at " in line for line in sim.stdout)
    assert "[rank0]: AssertionError" in sim.stderr
    assert os.listdir(job.out / "20240101_00-00-00") == []
