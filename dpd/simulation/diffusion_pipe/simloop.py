"""The simulated training loop: one iteration in the order of reference §4.3. STDLIB ONLY.

Rank 0 runs the loop and tells the other ranks, after every step, whether to go on, quit
(`Manually quitting` on every rank) or end. Saves and checkpoints are written by rank 0.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import simconfig
import simfiles
from simconfig import Knobs, ModelSpec, Plan
from simoutput import (
    CUDA_CRASH_MESSAGE,
    OutOfMemoryError,
    log,
    log_dist,
    oom_message,
    out,
    paced_bar,
    step_line,
)
from simstore import ProcessGroup, block_forever

CHECKPOINT_ENGINE = "torch_checkpoint_engine.py"


@dataclass
class Run:
    """Everything the loop needs, fixed before the first step."""

    config: dict[str, Any]
    config_path: str
    run_dir: str
    plan: Plan
    model: ModelSpec
    group: ProcessGroup
    knobs: Knobs
    scheduler: str
    total_steps: int
    eval_batches: int  # eval progress-bar total (batches x 9 quantiles / eval GAS)

    @property
    def stages(self) -> int:
        return int(self.config.get("pipeline_stages", 1))


def read_resume_point(run: Run) -> tuple[int, int]:
    """(epoch, step) to continue from; every rank reads it, as load_checkpoint does."""
    latest = os.path.join(run.run_dir, "latest")
    load_path = None
    if os.path.isfile(latest):
        with open(latest) as handle:
            load_path = handle.read().strip()
    else:
        log(
            "WARNING",
            "engine.py:3032:_get_all_ckpt_names",
            f"Unable to find latest file at {latest}, if trying to load latest checkpoint please "
            "ensure this file exists or pass an explicit checkpoint tag when loading a checkpoint.",
        )
    assert load_path is not None
    saved_step = simfiles.read_checkpoint_step(run.run_dir, load_path)
    epoch, step = simconfig.resume_position(saved_step, run.plan.steps_per_epoch)
    return int(epoch), int(step)


def follow_rank0(run: Run) -> NoReturn:
    """Ranks other than 0: do what rank 0 decided after each step."""
    while True:
        decision = run.group.broadcast()
        if decision == "quit":
            out("Manually quitting")
            sys.exit(0)
        if decision in ("end", "exit"):
            sys.exit(0)


class TrainingLoop:
    """Rank 0's loop, its saver and its checkpointer."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.config = run.config
        self.checkpointed_at: int | None = None
        self.saved_at: int | None = None
        self.last_checkpoint_time: float | None = None

    # ---------------------------------------------------------------------- the loop

    def train(self, epoch: int, step: int) -> None:
        window = time.monotonic()
        spp = int(self.config.get("steps_per_print", 1))
        spe = self.run.plan.steps_per_epoch
        max_steps = self.config.get("max_steps")
        while True:
            self._fail_if_asked(step)
            time.sleep(self.run.knobs.step_seconds)
            if step % spp == 0:
                now = time.monotonic()
                self._report(step, (now - window) / spp)
                window = now
            finished = step % spe == 0
            ended = self.process_epoch(epoch, step) if finished else False
            if self._eval_due(step, epoch, finished):
                self.evaluate()
            if ended:
                break
            epoch += 1 if finished else 0
            if self.process_step(step):
                self.run.group.broadcast("quit")
                out("Manually quitting")
                sys.exit(0)
            if self.run.knobs.fail == "exit_zero_early":
                self.run.group.broadcast("exit")
                sys.exit(0)
            if max_steps and step >= int(max_steps):
                break
            self.run.group.broadcast("step")
            step += 1
        self._finish(f"epoch{epoch}" if ended else f"step{step}", step)

    def _finish(self, final_name: str, step: int) -> None:
        if self.checkpointed_at != step:
            self.checkpoint(step)
        if self.saved_at != step:
            self.save_model(final_name, step)
        out("TRAINING COMPLETE!")
        self.run.group.broadcast("end")

    def _fail_if_asked(self, step: int) -> None:
        knobs = self.run.knobs
        if knobs.fail_step != step:
            return
        if knobs.fail == "oom":
            raise OutOfMemoryError(oom_message(0))
        if knobs.fail == "crash":
            raise RuntimeError(CUDA_CRASH_MESSAGE)
        if knobs.fail == "hang":
            block_forever()  # a collective that never completes: no output, no exit

    def _report(self, step: int, iter_time: float) -> None:
        run = self.run
        lr = simconfig.learning_rate(self.config, run.scheduler, step, run.total_steps)
        mom = simconfig.momentum(self.config)
        log_dist(f"step={step}, skipped=0, lr={[lr]}, mom={mom}")
        loss = simconfig.loss_at(step, run.knobs.loss_start, run.knobs.loss_decay)
        rate = run.plan.global_batch / iter_time if iter_time > 0 else 0.0
        out(step_line(step, loss, iter_time, rate))

    # ---------------------------------------------------------------- saver decisions

    def process_epoch(self, epoch: int, step: int) -> bool:
        """End of epoch `epoch`; True when it was the last one."""
        every = self.config.get("checkpoint_every_n_epochs")
        if every and epoch % int(every) == 0:
            self.last_checkpoint_time = time.monotonic()
            self.checkpoint(step)
        every = self.config.get("save_every_n_epochs")
        if every and epoch % int(every) == 0:
            self.save_model(f"epoch{epoch}", step)
        if epoch + 1 > int(self.config["epochs"]):
            return True
        out(f"Started new epoch: {epoch + 1}")
        return False

    def process_step(self, step: int) -> bool:
        """Signal files, step saves, timed checkpoints; True when asked to quit."""
        save_file = os.path.join(self.run.run_dir, "save")
        quit_file = os.path.join(self.run.run_dir, "save_quit")
        manual = should_quit = False
        if os.path.isfile(save_file):
            manual = True
            os.remove(save_file)
        elif os.path.isfile(quit_file):
            manual = should_quit = True
            os.remove(quit_file)
        every = self.run.plan.save_every_n_steps
        if every and step % int(every) == 0:
            self.save_model(f"step{step}", step)
        if self._minutes_due() or manual:
            self.checkpoint(step)
        return should_quit

    def _minutes_due(self) -> bool:
        """Timer starts at the first completed step, checked once per step."""
        minutes = self.config.get("checkpoint_every_n_minutes")
        if minutes is None:
            return False
        now = time.monotonic()
        if self.last_checkpoint_time is None:
            self.last_checkpoint_time = now
            return False
        if (now - self.last_checkpoint_time) / 60 > float(minutes):
            self.last_checkpoint_time = now
            return True
        return False

    def _eval_due(self, step: int, epoch: int, finished: bool) -> bool:
        by_steps = self.run.plan.eval_every_n_steps
        by_epochs = self.config.get("eval_every_n_epochs")
        return bool(
            (by_steps and step % int(by_steps) == 0)
            or (finished and by_epochs and epoch % int(by_epochs) == 0)
        )

    # ------------------------------------------------------------------- the writers

    def evaluate(self) -> None:
        if not self.config["eval_datasets"]:
            return
        out("Running eval")
        paced_bar(self.run.eval_batches, 2 * self.run.knobs.step_seconds)

    def save_model(self, name: str, step: int) -> None:
        out(f"Saving model to directory {name}")
        adapter = self.config.get("adapter")
        if adapter is None and not self.run.model.fft_supported:
            raise NotImplementedError()
        weights = self.run.model.lora_file if adapter is not None else "model.safetensors"
        simfiles.save_model(
            self.run.run_dir, name, weights, adapter, self.run.config_path, self.run.stages
        )
        self.saved_at = step

    def checkpoint(self, step: int) -> None:
        """DeepSpeed save_checkpoint: layer files, mp_rank files, then `latest`."""
        run = self.run
        tag, layers, ranks = simfiles.checkpoint_files(run.run_dir, step, run.stages)
        log_dist(f"[Torch] Checkpoint {tag} is about to be saved!")
        epoch, _ = simconfig.resume_position(step, run.plan.steps_per_epoch)
        pulled = step % max(1, run.plan.steps_per_epoch)
        state = {
            "global_steps": step,
            "client_state": {
                "step": step,
                "examples": step * run.plan.global_batch,
                "custom_loader": {"epoch": epoch, "num_batches_pulled": pulled},
            },
        }
        for path in layers:
            self._write_logged(path, {"layer": os.path.basename(path)})
        for path in ranks:
            log_dist(f"Saving model checkpoint: {path}")
            self._write_logged(path, state)
        log("INFO", f"{CHECKPOINT_ENGINE}:33:commit", f"[Torch] Checkpoint {tag} is ready now!")
        simfiles.write_latest(run.run_dir, tag)
        self.checkpointed_at = step

    @staticmethod
    def _write_logged(path: str, state: dict[str, Any]) -> None:
        log("INFO", f"{CHECKPOINT_ENGINE}:21:save", f"[Torch] Saving {path}...")
        simfiles.write_checkpoint_file(path, state)
        log("INFO", f"{CHECKPOINT_ENGINE}:23:save", f"[Torch] Saved {path}.")
