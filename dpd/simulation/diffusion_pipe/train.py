"""Stand-in for diffusion-pipe's train.py: a SIMULATION that trains nothing. STDLIB ONLY.

It takes the real command line (§1.2), reads the real config and dataset TOML, raises the
real errors for the checks of §7.1, prints the real lines on the real streams (§4), writes
the real run-directory layout (§5) and honours the signal files (§6.1). Run by the stand-in
launcher (`dpd/simulation/deepspeed.py`), which prints the one `[dpd-simulation]` label
line; run directly (no LOCAL_RANK in the environment) it prints that line itself.

Environment knobs (simulation only):

- DPD_SIM_STEP_SECONDS: seconds per training step (default 0.05).
- DPD_SIM_CACHE_SECONDS: seconds the caching phase takes (default 0.1).
- DPD_SIM_STARTUP_SECONDS: seconds of "model loading" before caching (default 0).
- DPD_SIM_STEPS_PER_EPOCH: override the steps per epoch computed from the dataset.
- DPD_SIM_FAIL: one of `oom:<step>` (torch OutOfMemoryError at that step, exit 1),
  `crash:<step>` (a CUDA RuntimeError at that step, exit 1), `caching_crash` (the
  RuntimeError during caching, exit 1), `caching_hang` (the caching child prints a
  traceback and dies; the ranks then block forever with no output, like the real hang),
  `exit_zero_early` (every rank exits 0 after the first step, without a marker line),
  `hang_after_batch` (after `Global batch size = N` and the computed settings every rank
  blocks forever with no output: diffusion-pipe issue 417, a hang before step 1),
  `hang:<step>` (every rank blocks forever before printing that step, as an NCCL
  collective that never completes does mid-training).
- DPD_SIM_IGNORE_SIGTERM=1: workers ignore SIGTERM (to test SIGKILL escalation).
- DPD_SIM_GRANDCHILD=1: each worker forks a dataloader-like child at training start; it
  holds no "GPU" and exits within a second once its parent is gone.
- DPD_SIM_LOSS_START (default 0.12) and DPD_SIM_LOSS_DECAY (per step, default 0.97).
- DPD_SIM_RUN_LEDGER: a directory shared by every host of a test fleet (the run oracle,
  FLEET.md §13.2): rank 0 appends a `start` and an `end` record (task, host from
  DPD_SIM_HOST, pid, CLOCK_MONOTONIC, outcome) to `<dir>/ledger.jsonl` with O_APPEND, and
  holds a flock on `<dir>/<task>.lock` while it runs, writing a `violation` record when
  another run of the task holds it.
- DPD_SIM_GPU_DIR: each worker flock()s `<dir>/gpu<id>` while it lives (a held lock raises
  the CUDA OOM error, as a busy GPU would).

A problem found during caching (no media, DPD_SIM_FAIL=caching_hang) is reported by the
forked caching child, after which the ranks hang: reference §6.4.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
import tomllib
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

# The siblings below are found even under -I/-P (which leave the script's folder off sys.path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import simconfig
import simfiles
from simconfig import DirectoryCount, DirectorySpec, Knobs, Plan
from simloop import Run, TrainingLoop, follow_rank0, read_resume_point
from simoutput import (
    CUDA_CRASH_MESSAGE,
    OutOfMemoryError,
    install_rank_excepthook,
    log,
    log_dist,
    oom_message,
    out,
    paced_bar,
)
from simstore import ProcessGroup, block_forever

LABEL = "[dpd-simulation] simulated diffusion-pipe trainer: no GPU is used and nothing is trained"


def build_parser() -> argparse.ArgumentParser:
    """Exactly the real flag set, so an unknown flag is a usage error (exit 2)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", help="Path to TOML configuration file.")
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--resume_from_checkpoint", nargs="?", const=True, default=None)
    parser.add_argument("--reset_dataloader", action="store_true")
    parser.add_argument("--reset_optimizer", action="store_true")
    parser.add_argument("--reset_optimizer_params", action="store_true")
    parser.add_argument("--regenerate_cache", action="store_true", default=None)
    parser.add_argument("--cache_only", action="store_true", default=None)
    parser.add_argument("--trust_cache", action="store_true")
    parser.add_argument("--i_know_what_i_am_doing", action="store_true", default=None)
    parser.add_argument("--master_port", type=int, default=29500)
    parser.add_argument("--dump_dataset", type=Path, default=None)
    parser.add_argument("--test_sample", action="store_true")
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed configurations")
    group.add_argument("--deepspeed", default=False, action="store_true")
    group.add_argument("--deepspeed_config", default=None, type=str)
    group.add_argument("--deepscale", default=False, action="store_true")
    group.add_argument("--deepscale_config", default=None, type=str)
    return parser


def load_toml(path: str) -> dict[str, Any]:
    with open(path, "rb") as handle:
        return dict(json.loads(json.dumps(tomllib.load(handle))))


def _cache_fn(work: Callable[[], None]) -> None:
    work()


def caching_child_fails(work: Callable[[], None]) -> NoReturn:
    """The forked caching process dies with a traceback; the ranks wait for it forever."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _cache_fn(work)
        except BaseException:
            sys.stderr.write("Process Process-1:\n")
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(1)
    os.waitpid(pid, 0)
    while True:  # the parent ranks wait on a queue that never gets its end marker
        time.sleep(3600)


def _raiser(err: BaseException) -> Callable[[], None]:
    def work() -> None:
        raise err

    return work


def _webp_video() -> None:
    raise NotImplementedError("WebP videos are not supported.")


def start_dataloader_child() -> None:
    """A forked child that lives as long as its parent (like a DataLoader worker)."""
    parent = os.getpid()
    if os.fork() != 0:
        return
    os.closerange(3, 65536)
    try:
        while os.getppid() == parent:
            time.sleep(0.2)
    finally:
        os._exit(0)


class Trainer:
    """One worker. Rank 0 does the work and the talking; other ranks follow its decisions."""

    def __init__(self, args: argparse.Namespace, config: dict[str, Any], knobs: Knobs) -> None:
        self.args = args
        self.config = config
        self.knobs = knobs
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = self.rank == 0
        self.group: ProcessGroup
        self.model: simconfig.ModelSpec
        self.run_dir = ""
        self.plan: Plan
        self.scheduler = "constant"
        self.stages = int(config.get("pipeline_stages", 1))
        self.total_steps = 0
        self.eval_batches = 0
        self.gpu_fd: int | None = None

    # ------------------------------------------------------------------ startup phases

    def start(self) -> None:
        install_rank_excepthook(self.rank)
        token = os.path.abspath(self.args.config)
        self.group = ProcessGroup(self.rank, self.world, self.args.master_port, token)
        self._take_gpu()
        self.model = simconfig.check_model(self.config)
        time.sleep(self.knobs.startup_seconds)
        train_specs = self._dataset_specs(self.config["dataset"])
        eval_specs = [self._dataset_specs(self._eval_config(i, e)) for i, e in self._evals()]
        counts = self._cache([*train_specs, *(s for specs in eval_specs for s in specs)])
        if self.args.cache_only or self.args.dump_dataset or self.args.test_sample:
            sys.exit(0)
        if self.is_main and "adapter" in self.config:
            self._print_trainable_params()
        self._open_run_dir()
        simconfig.check_activation_checkpointing(self.config)
        self._initialize(counts[: len(train_specs)], counts[len(train_specs) :])

    def _take_gpu(self) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")
        local_rank = max(0, self.args.local_rank)
        gpu = int(visible[local_rank]) if local_rank < len(visible) else local_rank
        try:
            self.gpu_fd = simfiles.hold_gpu(gpu)
        except BlockingIOError:
            raise OutOfMemoryError(oom_message(local_rank, 0.5)) from None

    def _evals(self) -> list[tuple[int, Any]]:
        return list(enumerate(self.config["eval_datasets"]))

    @staticmethod
    def _eval_config(index: int, entry: Any) -> str:
        return str(entry if isinstance(entry, str) else entry["config"])

    def _dataset_specs(self, path: str) -> list[DirectorySpec]:
        specs = simconfig.directory_specs(load_toml(path))
        for spec in specs:
            simfiles.check_directory(spec)
        if simconfig.too_many_resolutions(specs) and not self.args.i_know_what_i_am_doing:
            out(simconfig.TOO_MANY_RESOLUTIONS_WARNING)
            sys.exit(0)  # quit(): exit code 0, nothing trained
        return list(specs)

    def _cache(self, specs: list[DirectorySpec]) -> list[DirectoryCount]:
        """Rank 0 scans and caches; every rank then knows the counts."""
        if self.is_main:
            counts = [self._cache_directory(spec) for spec in specs]
            out("Building iteration order")
            self.group.broadcast([[c.images, c.videos] for c in counts])
            return counts
        numbers = self.group.broadcast()
        return [DirectoryCount(s, n[0], n[1]) for s, n in zip(specs, numbers, strict=True)]

    def _cache_directory(self, spec: DirectorySpec) -> DirectoryCount:
        try:
            count, missing = simfiles.scan_directory(spec)
        except AssertionError as err:
            caching_child_fails(_raiser(err))
        if self.knobs.fail == "caching_hang":
            caching_child_fails(_webp_video)
        for media in missing:
            how = "Skipping image" if spec.skip_empty_caption else "Using empty caption"
            log(
                "WARNING",
                "dataset.py:235:_get_ungrouped_metadata",
                f"Cound not find caption for {media}. {how}.",
            )
        name = simconfig.cache_name(self.config["model"])
        fp = simfiles.fingerprint(spec, str(self.config["model"]["type"]))
        existing = simfiles.read_cache_fingerprint(spec, name)
        items = count.images + count.videos
        if existing == fp and not self.args.regenerate_cache:
            out("Found grouped metadata cache. Directly loading it.")
            out(f"[CACHE] Existing cache has fingerprint {fp}")
            out(f"[CACHE] Existing cache length: {items}")
            return count
        if existing is not None:
            out("[CACHE] Fingerprint changed, deleting existing cache files")
        out("Grouped metadata is not cached. Caching it now.")
        for what in ("latents", "text embeddings"):
            out(f"caching {what}: {spec.path}")
            out("[CACHE] Initializing")
            out(f"[CACHE] Storing new fingerprint: {fp}")
            out("[CACHE] Creating new shard: shard_0")
            if self.knobs.fail == "caching_crash":
                raise RuntimeError(CUDA_CRASH_MESSAGE)
            paced_bar(items, self.knobs.cache_seconds / 2, f"caching {what}")
        simfiles.write_cache(spec, name, fp, count)
        return count

    def _print_trainable_params(self) -> None:
        trainable = int(self.config["adapter"]["rank"]) * 1_228_800
        total = 1_418_939_904 + trainable
        out(
            f"trainable params: {trainable:,} || all params: {total:,} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    def _open_run_dir(self) -> None:
        resume = self._resume_request()
        output_dir = self.config["output_dir"]
        if not resume and self.is_main:
            run_dir = simfiles.new_run_dir(output_dir)
            simfiles.copy_configs(run_dir, self.args.config, self.config)
        self.group.barrier()
        if resume is True:
            self.run_dir = simfiles.most_recent_run_dir(output_dir)
        elif isinstance(resume, str):
            self.run_dir = os.path.join(output_dir, resume)
            if not os.path.exists(self.run_dir):
                raise ValueError(f"Checkpoint directory {self.run_dir} does not exist")
        else:
            self.run_dir = simfiles.most_recent_run_dir(output_dir)

    def _resume_request(self) -> bool | str:
        if self.args.resume_from_checkpoint is not None:
            return self.args.resume_from_checkpoint  # type: ignore[no-any-return]
        return self.config.get("resume_from_checkpoint", False)  # type: ignore[no-any-return]

    def _initialize(self, counts: list[DirectoryCount], eval_counts: list[DirectoryCount]) -> None:
        """deepspeed.initialize and what follows it, up to the first step."""
        if self.is_main:
            log_dist("DeepSpeed info: version=0.18.4, git-hash=unknown, git-branch=unknown")
            log(
                "INFO",
                "topology.py:367:_build_mesh",
                "Using topology: {ProcessCoord(pipe=0, data=0): 0}",
            )
            log_dist(f"DeepSpeed Final Optimizer = {self.config['optimizer']['type']}")
        spe = self._steps_per_epoch(counts)
        self.plan = simconfig.make_plan(self.config, self.world, spe)
        out(f"Global batch size = {self.plan.global_batch}")
        for line in self.plan.computed:
            out(line)
        if self.knobs.fail == "hang_after_batch":
            block_forever()
        self.scheduler = simconfig.check_lr_scheduler(self.config)
        if self.scheduler != "constant":
            self.total_steps = spe * int(self.config["epochs"])
        self.eval_batches = self._eval_batches(eval_counts)
        if self.plan.steps_per_epoch == 0:
            raise RuntimeError(
                "Processed dataset was empty. "
                "Probably caused by rounding down for each size bucket."
            )

    def _steps_per_epoch(self, counts: list[DirectoryCount]) -> int:
        if self.knobs.steps_per_epoch is not None:
            return int(self.knobs.steps_per_epoch)
        mbs = self.config.get("micro_batch_size_per_gpu", 1)
        return int(
            simconfig.batches_per_epoch(
                counts,
                mbs,
                self.config.get("image_micro_batch_size_per_gpu", mbs),
                int(self.config.get("gradient_accumulation_steps", 1)),
                self.world // self.stages,
                self.config.get("subsample_ratio"),
            )
        )

    def _eval_batches(self, counts: list[DirectoryCount]) -> int:
        if not counts:
            return 0
        mbs = self.config.get(
            "eval_micro_batch_size_per_gpu", self.config.get("micro_batch_size_per_gpu", 1)
        )
        gas = int(self.config["eval_gradient_accumulation_steps"])
        batches = simconfig.batches_per_epoch(counts, mbs, mbs, 1, self.world // self.stages)
        return int(max(1, batches) * simconfig.EVAL_QUANTILES // gas)

    # ------------------------------------------------------------------ training

    def train(self) -> None:
        run = Run(
            config=self.config,
            config_path=self.args.config,
            run_dir=self.run_dir,
            plan=self.plan,
            model=self.model,
            group=self.group,
            knobs=self.knobs,
            scheduler=self.scheduler,
            total_steps=self.total_steps,
            eval_batches=self.eval_batches,
        )
        resumed = bool(self._resume_request())
        epoch, step = read_resume_point(run) if resumed else (1, 1)
        if resumed and self.is_main:
            out(f"Resuming training from checkpoint. Resuming at epoch: {epoch}, step: {step}")
        if self.knobs.grandchild:
            start_dataloader_child()
        if not self.is_main:
            follow_rank0(run)
        loop = TrainingLoop(run)
        if self.config["eval_before_first_step"] and not resumed:
            loop.evaluate()
        loop.train(epoch, step)


def main() -> None:
    args = build_parser().parse_args()
    if "LOCAL_RANK" not in os.environ:
        sys.stderr.write(LABEL + "\n")
        sys.stderr.flush()
    if os.environ.get("DPD_SIM_IGNORE_SIGTERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(args.config, "rb") as handle:
        config = json.loads(json.dumps(tomllib.load(handle)))
    simconfig.set_config_defaults(config)
    trainer = Trainer(args, config, Knobs.from_env(os.environ))
    with RunLedger.open(os.environ):
        trainer.start()
        trainer.train()


class RunLedger:
    """The run oracle's records (DPD_SIM_RUN_LEDGER): one start, one end per run of rank 0."""

    def __init__(self, directory: str, task: str) -> None:
        self.directory = directory
        self.task = task
        self.lock_fd: int | None = None
        self.outcome = "exited"

    @classmethod
    def open(cls, env: Any) -> Any:
        directory = env.get("DPD_SIM_RUN_LEDGER")
        if not directory or env.get("RANK", "0") != "0":
            return contextlib.nullcontext()
        return cls(directory, env.get("DPD_TASK_ID", "?"))

    def record(self, kind: str, **extra: Any) -> None:
        entry = {
            "kind": kind,
            "task": self.task,
            "host": os.environ.get("DPD_SIM_HOST", ""),
            "pid": os.getpid(),
            "t": time.clock_gettime(time.CLOCK_MONOTONIC),
            **extra,
        }
        fd = os.open(
            os.path.join(self.directory, "ledger.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
        finally:
            os.close(fd)

    def __enter__(self) -> RunLedger:
        os.makedirs(self.directory, exist_ok=True)
        self.lock_fd = os.open(
            os.path.join(self.directory, f"{self.task}.lock"), os.O_RDWR | os.O_CREAT
        )
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.record("violation")
        self.record("start")
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        code = value.code if isinstance(value, SystemExit) else (1 if value else 0)
        self.record("end", code=code, completed=code in (0, None) and kind in (None, SystemExit))


if __name__ == "__main__":
    main()
