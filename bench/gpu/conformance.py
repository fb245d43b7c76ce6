"""dpd driving diffusion-pipe end to end through its REST API, checked and measured.

    python -m bench.gpu.conformance --out DIR [--simulate] [...]

(``bench/gpu/conformance.sh`` prepares the machine and calls this.) One real ``dpd serve``;
one LoRA job that is followed, stopped gracefully mid-epoch, resumed, survives a SIGKILL of
dpd and completes; one impossible job that must fail with the trainer's own error. Every
check is recorded with its evidence (bench/gpu/evaluate.py); the report goes to
``DIR/report.json`` and ``DIR/report.txt``, next to the jobs' real train.log, config.toml,
dataset.toml and metrics.jsonl. Exit status 0 only when the report passed.

``--simulate`` runs the same steps against dpd's stand-in trainer (dpd/simulation) and a
static GPU: a rehearsal of the kit's own logic on a CPU. Checks that need a real GPU are
then ``skip``, never ``pass``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make ``bench.gpu`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.gpu import evaluate as ev
from bench.gpu import jobs, media
from bench.gpu.api import wait_until
from bench.gpu.daemon import (
    Dpd,
    Layout,
    TrainerSetup,
    cpu_seconds,
    dpd_config,
    free_port,
    gpu_compute_pids,
    job_pids,
)
from bench.gpu.report import Check, Report, render_table

LORA_TASK = "conformance-lora"
IMPOSSIBLE_TASK = "conformance-impossible"
TERMINAL = ("completed", "failed", "stopped")
REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="report and kept files")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="dpd's stand-in trainer and a static GPU (a CPU rehearsal)",
    )
    parser.add_argument(
        "--dpd-python",
        default=sys.executable,
        help="the python that runs `-m dpd serve` (dpd importable)",
    )
    parser.add_argument(
        "--trainer-python",
        default=sys.executable,
        help="the python holding torch and safetensors (loads the LoRA)",
    )
    parser.add_argument("--diffusion-pipe", type=Path, help="the checkout (holds train.py)")
    parser.add_argument("--deepspeed", help="the launcher command dpd runs")
    parser.add_argument("--model", type=Path, help="the tiny diffusers-format Flux model")
    parser.add_argument(
        "--trainer-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more environment for the trainer (dpd's trainer.env)",
    )
    parser.add_argument(
        "--gpus-backend",
        choices=("nvml", "static"),
        help="dpd's gpus.backend (default: nvml, or static with --simulate)",
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--dead-seconds",
        type=float,
        default=3.0,
        help="how long dpd stays killed while the trainer runs on",
    )
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=0.1,
        help="--simulate: the stand-in's seconds per step",
    )
    parser.add_argument(
        "--timeout", type=float, default=420.0, help="the longest any one wait may take, in seconds"
    )
    args = parser.parse_args(argv)
    if not args.simulate and not (args.diffusion_pipe and args.deepspeed and args.model):
        parser.error("without --simulate, --diffusion-pipe, --deepspeed and --model are needed")
    return args


class Conformance:
    """The scenario. Each step records its checks; a step that cannot go on raises, and
    ``run`` records that as a failed check, so the report always says where it stopped."""

    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.report = report
        self.plan = jobs.Plan(images=args.images, repeats=args.repeats, epochs=args.epochs)
        self.layout = Layout(args.out / "work")
        self.dpd: Dpd | None = None
        self.samples: list[dict[str, Any]] = []
        self.phases: list[str | None] = []
        self.marks: dict[str, float] = {}
        self.stop_step: int | None = None

    # ------------------------------------------------------------ setup

    def prepare(self) -> None:
        if self.layout.root.exists():
            shutil.rmtree(self.layout.root)
        self.layout.data.mkdir(parents=True)
        self.dataset_dir = self.layout.data / "datasets" / "squares"
        media.write_dataset(self.dataset_dir, self.plan.images, self.plan.resolution)
        self.model_dir = self.layout.data / "models" / "tiny-flux"
        if self.args.simulate:  # the stand-in reads no weights; dpd wants the path to exist
            self.model_dir.mkdir(parents=True)
            (self.model_dir / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
        else:
            shutil.copytree(self.args.model, self.model_dir)
            self.report.environment["tiny_model_bytes"] = sum(
                f.stat().st_size for f in self.model_dir.rglob("*") if f.is_file()
            )
            self.report.environment["tiny_model_bytes"] = sum(
                f.stat().st_size for f in self.model_dir.rglob("*") if f.is_file()
            )
        trainer = self._trainer()
        base = 29500 + os.getpid() % 200 * 2
        config = dpd_config(
            self.layout,
            free_port(),
            trainer,
            self.args.gpus_backend or ("static" if self.args.simulate else "nvml"),
            [base, base + 40],
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_", "NOTIFY_"))}
        self.dpd = Dpd(self.layout, self.args.dpd_python, config, env)
        self.report.environment.update(
            trainer=config["trainer"],
            gpus_backend=config["gpus"]["backend"],
            plan={
                "images": self.plan.images,
                "repeats": self.plan.repeats,
                "epochs": self.plan.epochs,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "total_steps": self.plan.total_steps,
                "stop_after": self.plan.stop_after,
            },
        )

    def _trainer(self) -> TrainerSetup:
        if self.args.simulate:
            from dpd.simulation import simulation_paths

            deepspeed, directory = simulation_paths()
            env = {
                "DPD_SIM_STEP_SECONDS": str(self.args.step_seconds),
                "DPD_SIM_CACHE_SECONDS": "0.5",
                "DPD_SIM_STARTUP_SECONDS": "0.5",
                "DPD_SIM_POLL_SECONDS": "0.2",
            }
            env.update(item.split("=", 1) for item in self.args.trainer_env)
            return TrainerSetup(directory, deepspeed, env, stop_timeout=30)
        env = {
            "NCCL_P2P_DISABLE": "1",
            "NCCL_IB_DISABLE": "1",
            "HF_HUB_OFFLINE": "1",
            "WANDB_MODE": "disabled",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": "",  # never dpd's own: its venv's packages are not the trainer's
        }
        env.update(item.split("=", 1) for item in self.args.trainer_env)
        return TrainerSetup(
            self.args.diffusion_pipe.resolve(), self.args.deepspeed, env, stop_timeout=300
        )

    @property
    def api(self) -> Any:
        assert self.dpd is not None
        return self.dpd.api

    def job_file(self, task_id: str, name: str) -> Path:
        return self.layout.job_dir(task_id) / name

    def log_bytes(self, task_id: str) -> bytes:
        path = self.job_file(task_id, "train.log")
        return path.read_bytes() if path.exists() else b""

    # ------------------------------------------------------------ the LoRA job

    def run(self) -> None:
        assert self.dpd is not None
        self.report.figure("dpd_start", self.dpd.start(), "s", "until /healthz answered")
        self.submit_and_follow()
        self.stop_gracefully()
        self.resume()
        self.kill_dpd_and_reattach()
        self.finish()
        self.impossible()

    def sample(self, task_id: str) -> dict[str, Any]:
        state = self.api.task(task_id)
        progress = state.get("progress") or {}
        metrics = state.get("metrics") or {}
        sample = {
            "t": time.monotonic(),
            "status": state.get("status"),
            **progress,
            "current_loss": metrics.get("current_loss"),
        }
        if task_id == LORA_TASK:
            self.samples.append(sample)
            self.phases.append(progress.get("phase") if state.get("status") == "running" else None)
        return sample

    def follow(self, task_id: str, until: Any, what: str) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            sample = self.sample(task_id)
            if until(sample):
                return sample
            if sample["status"] in TERMINAL:
                raise RuntimeError(
                    f"{task_id} ended ({sample['status']}) while waiting for "
                    f"{what}: {self.api.task(task_id).get('error')}"
                )
            return None

        return wait_until(ready, self.args.timeout, what, interval=0.1)

    def submit_and_follow(self) -> None:
        doc = jobs.lora_job(LORA_TASK, self.model_dir, self.dataset_dir, self.plan)
        submitted = time.monotonic()
        status, body = self.api.call("POST", "/api/v1/training/start", doc)
        if not self.report.add(ev.check_submit(status, body)).verdict.value == "pass":
            raise RuntimeError(f"the LoRA job was refused: {body}")
        first = self.follow(
            LORA_TASK, lambda s: (s.get("current_step") or 0) >= 1, "the first step"
        )
        self.report.figure(
            "time_to_first_step",
            first["t"] - submitted,
            "s",
            "from POST /training/start to the API showing step 1",
        )
        assert self.dpd is not None
        cpu_start, wall_start = cpu_seconds(self.dpd.pid), time.monotonic()
        self.follow(LORA_TASK, lambda s: (s.get("current_step") or 0) >= 3, "step 3")
        self.look_at_gpu()
        self.follow(
            LORA_TASK,
            lambda s: (s.get("current_step") or 0) >= self.plan.stop_after,
            f"step {self.plan.stop_after}",
        )
        used, wall = cpu_seconds(self.dpd.pid) - cpu_start, time.monotonic() - wall_start
        self.report.figure(
            "dpd_cpu_while_following",
            ev.cpu_percent(used, wall),
            "%",
            f"dpd serve's CPU time over {wall:.1f} s of training, polled by the kit at 10/s",
        )

    def look_at_gpu(self) -> None:
        status = self.api.get("/api/v1/gpu/status")
        self.report.add(ev.check_gpu_busy(status.get("gpus") or [], LORA_TASK, 0))
        if self.args.simulate:
            self.report.add(
                Check.skipped(
                    "gpu_process_is_trainer", "simulated GPU: the driver lists no processes"
                )
            )
            return
        gpu_pids = gpu_compute_pids()
        if gpu_pids is None:
            self.report.add(
                Check.decide(
                    "gpu_process_is_trainer", False, "nvidia-smi could not list compute processes"
                )
            )
            return
        check = ev.check_gpu_process(gpu_pids, job_pids(LORA_TASK))
        fields = sorted({k for g in status.get("gpus") or [] for k in g})
        self.report.add(
            Check(
                check.name,
                check.verdict,
                check.summary,
                {**check.evidence, "gpu_status_fields": fields},
            )
        )

    def stop_gracefully(self) -> None:
        status, body = self.api.call("POST", f"/api/v1/training/stop/{LORA_TASK}", {})
        answer = body.get("data") or {}

        def ended() -> dict[str, Any] | None:
            state = self.api.task(LORA_TASK)
            return state if state["status"] in TERMINAL else None

        state = wait_until(ended, self.args.timeout, "the stop")
        run_dir = Path(state.get("run_dir") or "/nonexistent")
        latest_path = run_dir / "latest"
        latest = latest_path.read_text().strip() if latest_path.exists() else None
        named = answer.get("last_checkpoint")
        exists = bool(named) and (run_dir / str(named)).is_dir()
        log = self.log_bytes(LORA_TASK)
        check = self.report.add(
            ev.check_graceful_stop(
                answer, log, latest, exists, self.plan.steps_per_epoch, state.get("status")
            )
        )
        steps = ev.step_lines(log)
        self.stop_step = steps[-1].step if steps else None
        self.report.environment["stop_answer"] = {"status": status, **answer}
        self.leftovers("no_processes_after_stop", LORA_TASK, "after the graceful stop")
        if check.verdict.value != "pass" and state.get("status") != "stopped":
            raise RuntimeError(f"the job did not stop: {state.get('status')}")

    def leftovers(self, name: str, task_id: str, when: str) -> None:
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not job_pids(task_id), 60, f"{task_id}'s processes to end")
        self.report.add(ev.check_no_leftovers(name, job_pids(task_id), when))

    def resume(self) -> None:
        offset = len(self.log_bytes(LORA_TASK))
        status, body = self.api.call("POST", f"/api/v1/training/{LORA_TASK}/resume", {})
        if status != 200:
            self.report.add(Check.decide("resume", False, f"resume answered {status}", answer=body))
            raise RuntimeError(f"resume refused: {body}")
        stop = self.stop_step or 0
        sample = self.follow(
            LORA_TASK,
            lambda s: s["status"] == "running" and (s.get("current_step") or 0) > stop,
            "steps after the resume",
        )
        self.resume_offset = offset
        self.report.add(
            ev.check_resume(
                self.log_bytes(LORA_TASK)[offset:], self.stop_step, sample.get("current_step")
            )
        )

    def kill_dpd_and_reattach(self) -> None:
        assert self.dpd is not None
        run_before = self.api.task(LORA_TASK).get("run")
        pids_before = job_pids(LORA_TASK)
        self.dpd.kill9()
        dead_from = len(self.log_bytes(LORA_TASK))
        killed_at = time.monotonic()

        def written_while_dead() -> list[ev.StepLine]:
            return ev.step_lines(self.log_bytes(LORA_TASK)[dead_from:])

        # dpd stays dead for dead_seconds, or for a quarter of the steps left if the steps
        # are fast, so that the run is still going when it comes back
        budget = max(3, (self.plan.total_steps - (self.stop_step or 0)) // 4)

        def enough() -> bool:
            written = len(written_while_dead())
            waited = time.monotonic() - killed_at >= self.args.dead_seconds
            if written >= 3 and (waited or written >= budget):
                return True
            # ended while dpd was dead: stop waiting, the checks below say what was seen
            log = self.log_bytes(LORA_TASK)
            return ev.has_line(log, "TRAINING COMPLETE!") or not job_pids(LORA_TASK)

        wait_until(enough, self.args.timeout, "steps written while dpd is dead", interval=0.2)
        dead = written_while_dead()
        alive = job_pids(LORA_TASK)
        dead_to = len(self.log_bytes(LORA_TASK))
        self.dead_window = (dead_from, dead_to)
        self.report.add(ev.check_trainer_survives(dead, len(alive)))
        restart = self.dpd.start()
        self.report.figure(
            "dpd_restart_with_running_job",
            restart,
            "s",
            "SIGKILLed dpd started again until /healthz answered",
        )
        after = self.api.task(LORA_TASK)  # at once: the job must still be running
        pids_after = job_pids(LORA_TASK)
        last_dead = dead[-1].step if dead else None
        sample = self.follow(
            LORA_TASK,
            lambda s: (s.get("current_step") or 0) >= (last_dead or 0) or s["status"] in TERMINAL,
            "dpd to catch up with the steps it missed",
        )
        self.report.add(
            ev.check_reattach(
                after.get("status"),
                run_before,
                after.get("run"),
                pids_before,
                pids_after,
                last_dead,
                sample.get("current_step"),
            )
        )

    def finish(self) -> None:
        final = self.follow(LORA_TASK, lambda s: s["status"] in TERMINAL, "the end of training")
        state = self.api.task(LORA_TASK)
        log = self.log_bytes(LORA_TASK)
        self.report.add(ev.check_phases(self.phases))
        self.report.add(ev.check_steps_and_losses(self.samples))
        self.report.add(ev.check_progress_eta(self.samples, self.plan.total_steps))
        self.report.add(ev.check_completed(final["status"], log, self.plan.total_steps))
        self.report.add(ev.check_metrics_match_log(self._metrics(LORA_TASK), log))
        self.check_lora(state)
        self.leftovers("no_processes_after_completion", LORA_TASK, "after completion")
        self.step_time_figures(log)

    def _metrics(self, task_id: str) -> list[dict[str, Any]]:
        path = self.job_file(task_id, "metrics.jsonl")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def check_lora(self, state: dict[str, Any]) -> None:
        run_dir = Path(state.get("run_dir") or "/nonexistent")
        model = state.get("last_model") or f"epoch{self.plan.epochs}"
        path = run_dir / model / jobs.LORA_FILE
        loaded = self.load_safetensors(path) if path.exists() else None
        check = ev.check_lora(loaded, str(path))
        if self.args.simulate and check.verdict.value == "pass":
            pass
        elif self.args.simulate:  # the stand-in writes valid safetensors files with no tensors
            check = Check.skipped(
                "lora_loads", "the stand-in saves no tensors", path=str(path), loaded=loaded
            )
        self.report.add(check)

    def load_safetensors(self, path: Path) -> dict[str, Any]:
        """Load the file with safetensors in the trainer's python (torch there), or, when
        rehearsing, read its header with the standard library."""
        if self.args.simulate:
            return _safetensors_header(path)
        code = (
            "import json,sys; from safetensors.torch import load_file; "
            "t = load_file(sys.argv[1]); "
            "print(json.dumps({'loader': 'safetensors.torch.load_file', 'tensors': len(t), "
            "'keys': sorted(t)[:50], 'elements': sum(v.numel() for v in t.values())}))"
        )
        done = subprocess.run(
            [self.args.trainer_python, "-c", code, str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            return {
                "loader": "safetensors.torch.load_file",
                "tensors": 0,
                "error": done.stderr[-2000:],
            }
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def step_time_figures(self, log: bytes) -> None:
        start = getattr(self, "resume_offset", 0)
        dead_from, dead_to = getattr(self, "dead_window", (0, 0))
        steps = ev.step_lines(log[start:])
        following, dead = ev.split_step_times(steps, dead_from - start, dead_to - start)
        note = "median iter time (s) of the resumed run's steps, from train.log"
        self.report.figure(
            "step_time_with_dpd_following",
            ev.median_or_none(following),
            "s",
            f"{note}; {len(following)} steps",
        )
        self.report.figure(
            "step_time_with_dpd_dead",
            ev.median_or_none(dead),
            "s",
            f"{note}; {len(dead)} steps while dpd was SIGKILLed",
        )

    # ------------------------------------------------------------ the impossible job

    def impossible(self) -> None:
        doc = jobs.impossible_job(IMPOSSIBLE_TASK, self.model_dir, self.dataset_dir, self.plan)
        status, body = self.api.call("POST", "/api/v1/training/start", doc)
        if status not in (200, 201):
            self.report.add(
                Check.decide(
                    "impossible_config_fails",
                    False,
                    f"dpd refused the job itself ({status})",
                    answer=body,
                )
            )
            return
        wait_until(
            lambda: self.api.task(IMPOSSIBLE_TASK)["status"] in TERMINAL,
            self.args.timeout,
            "the impossible job to end",
            interval=0.2,
        )
        self.report.add(
            ev.check_impossible_fails(
                self.api.task(IMPOSSIBLE_TASK),
                self.log_bytes(IMPOSSIBLE_TASK),
                jobs.IMPOSSIBLE_MESSAGE,
            )
        )
        self.leftovers("no_processes_after_failure", IMPOSSIBLE_TASK, "after the failure")

    # ------------------------------------------------------------ the end

    def keep_files(self) -> None:
        for task_id in (LORA_TASK, IMPOSSIBLE_TASK):
            target = self.args.out / task_id
            target.mkdir(parents=True, exist_ok=True)
            for name in (
                "train.log",
                "config.toml",
                "dataset.toml",
                "metrics.jsonl",
                "events.jsonl",
                "state.json",
                "job.json",
            ):
                source = self.job_file(task_id, name)
                if source.exists():
                    shutil.copy2(source, target / name)
        if self.layout.stderr.exists():
            shutil.copy2(self.layout.stderr, self.args.out / "dpd.stderr")

    def close(self) -> None:
        if self.dpd is not None:
            self.dpd.stop()
        for task_id in (LORA_TASK, IMPOSSIBLE_TASK):  # trainings outlive dpd by design
            for pid in job_pids(task_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor names in a safetensors file's JSON header (8-byte little-endian length)."""
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    keys = sorted(k for k in header if k != "__metadata__")
    return {
        "loader": "safetensors header (standard library)",
        "tensors": len(keys),
        "keys": keys[:50],
        "metadata": header.get("__metadata__"),
    }


def environment(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dpd_python": args.dpd_python,
        "trainer_python": args.trainer_python,
    }
    if not args.simulate:
        try:
            done = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=name,memory.total,driver_version",
                    "--format=csv,noheader",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            found["gpu"] = done.stdout.strip() or done.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as err:
            found["gpu"] = f"nvidia-smi failed: {err}"
        found["diffusion_pipe"] = str(args.diffusion_pipe)
        found["deepspeed"] = args.deepspeed
        commit = args.diffusion_pipe / "COMMIT"
        if commit.exists():
            found["diffusion_pipe_commit"] = commit.read_text().strip()
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    report = Report("simulate" if args.simulate else "gpu", environment(args))
    scenario = Conformance(args, report)
    try:
        scenario.prepare()
        scenario.run()
    except Exception as err:  # the report says where it stopped, then the run fails
        report.add(
            Check.decide(
                "scenario_ran_to_the_end",
                False,
                f"stopped: {err}",
                traceback=traceback.format_exc()[-4000:],
            )
        )
    else:
        report.add(Check.decide("scenario_ran_to_the_end", True, "every step ran"))
    finally:
        scenario.close()
        scenario.keep_files()
    (args.out / "report.json").write_text(report.to_json())
    table = render_table(report)
    (args.out / "report.txt").write_text(table)
    print(table, end="")
    print(f"report: {args.out / 'report.json'}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
