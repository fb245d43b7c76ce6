"""Progress, speed and the metrics summary of one job, from the parser's observations — pure.

The numbers are what state.json holds and the API returns (api.md §3.3, §3.4, §4.1); the
metric points are the lines of metrics.jsonl (§4.2). ``to_state``/``from_state`` carry the
numbers across a daemon restart or a resumed run, so the job keeps one history.

Why the speed comes from the trainer's ``iter time`` and not from when lines were read: the
daemon reads the log in batches, so read times bunch up; the trainer's own measure does not.
The ETA uses the mean of the last ``SPEED_WINDOW`` printed steps, so it follows a run that
speeds up or slows down instead of the whole-run mean. Training time is wall time between
step lines (eval and saves inside the loop count), started afresh after every (re)launch.

Steps per epoch: the trainer never prints them (reference §4.5); they are learnt when
``Started new epoch: 2`` appears. Until then a value computed from the dataset
(``dpd.jobs.epoch_estimate``, handed in by ``estimate_steps_per_epoch``) stands in, so the
total, overall progress and ETA exist from the first step; ``total_steps_estimated`` says
so, and the learnt value replaces it.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

from dpd.supervisor import output_parser as obs
from dpd.supervisor.output_parser import total_steps

SPEED_WINDOW: Final = 20
STATE_VERSION: Final = 2  # 1 held the numbers progress() and metrics() show too


class ProgressTracker:
    """Consumes observations with their time; answers progress(), metrics() and points."""

    def __init__(
        self,
        epochs: int | None,
        max_steps: int | None,
        steps_per_epoch_hint: int | None = None,
    ) -> None:
        self.epochs = epochs
        self.max_steps = max_steps
        self.steps_per_epoch = steps_per_epoch_hint
        self.steps_per_epoch_estimated = False  # from the dataset, not yet from the trainer
        self.total_steps = total_steps(epochs, max_steps, steps_per_epoch_hint)
        self.current_step: int | None = None
        self.current_epoch: int | None = None
        self.global_batch: int | None = None
        self.completed = False
        self.training_time = 0.0
        self.current_loss: float | None = None
        self.best_loss: float | None = None
        self.best_loss_step: int | None = None
        self.learning_rate: float | None = None
        self.grad_norm: float | None = None
        self.eval_loss: float | None = None
        self.epoch_losses: dict[int, float | None] = {}
        self._iter_times: deque[float] = deque(maxlen=SPEED_WINDOW)
        self._samples: deque[float] = deque(maxlen=SPEED_WINDOW)
        self._last_step_at: float | None = None  # not persisted: a relaunch starts afresh
        self._points: list[dict[str, Any]] = []
        self._iso = _IsoClock()

    # ---------------------------------------------------------------- observe

    def observe(self, observation: obs.Observation, now: float) -> None:
        """Take one observation that was read at unix time ``now``."""
        match observation:
            case obs.StepDone():
                self._step(observation, now)
            case obs.EpochEnded():
                self._epoch_ended(observation, now)
            case obs.EpochStarted(epoch=epoch):
                self.current_epoch = epoch
            case obs.TotalSteps(total=total, steps_per_epoch=per_epoch):
                self._total_steps(total, per_epoch)
            case obs.EvalLoss():
                self._eval_loss(observation, now)
            case obs.Resumed():
                self._resumed(observation)
            case obs.GlobalBatch(size=size):
                self.global_batch = size
            case obs.Completed():
                self.completed = True

    def estimate_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Take steps per epoch computed from the dataset; a value the trainer's output gave
        is kept instead. Not a positive number: nothing changes."""
        if steps_per_epoch <= 0 or (self.steps_per_epoch and not self.steps_per_epoch_estimated):
            return
        self.steps_per_epoch = steps_per_epoch
        self.steps_per_epoch_estimated = True
        self.total_steps = total_steps(self.epochs, self.max_steps, steps_per_epoch)

    def _total_steps(self, total: int, per_epoch: int | None) -> None:
        """The parser's total: learnt steps per epoch replace an estimate; a total from
        max_steps alone is capped by what an estimate gives."""
        if per_epoch:
            self.steps_per_epoch = per_epoch
            self.steps_per_epoch_estimated = False
            self.total_steps = total
        elif self.steps_per_epoch_estimated:
            self.total_steps = total_steps(self.epochs, self.max_steps, self.steps_per_epoch)
        else:
            self.total_steps = total

    def _step(self, done: obs.StepDone, now: float) -> None:
        previous = self.current_step or 0
        covered = max(1, done.step - previous)  # steps_per_print > 1 prints every k-th step
        if self._last_step_at is None:
            self.training_time += done.iter_time * covered
        else:
            self.training_time += max(0.0, now - self._last_step_at)
        self._last_step_at = now
        self.current_step = done.step
        self.current_epoch = done.epoch
        self._iter_times.append(done.iter_time)
        self._samples.append(done.samples_per_sec)
        loss = _finite(done.loss)
        self.current_loss = loss
        if loss is not None and (self.best_loss is None or loss < self.best_loss):
            self.best_loss, self.best_loss_step = loss, done.step
        stamp = self._iso(now)
        self._point("step", "loss", done.step, done.epoch, loss, stamp)
        if done.lr is not None:
            self.learning_rate = done.lr
            self._point("step", "lr", done.step, done.epoch, _finite(done.lr), stamp)
        if done.grad_norm is not None:
            self.grad_norm = _finite(done.grad_norm)
            self._point("step", "grad_norm", done.step, done.epoch, self.grad_norm, stamp)

    def _epoch_ended(self, ended: obs.EpochEnded, now: float) -> None:
        loss = None if ended.loss is None else _finite(ended.loss)
        self.epoch_losses[ended.epoch] = loss
        self._point("epoch", "loss", ended.step, ended.epoch, loss, self._iso(now))

    def _eval_loss(self, seen: obs.EvalLoss, now: float) -> None:
        self.eval_loss = _finite(seen.loss)
        self._point("eval", "loss", seen.step, self.current_epoch, self.eval_loss, self._iso(now))

    def _resumed(self, resumed: obs.Resumed) -> None:
        self.current_epoch = resumed.epoch
        self.current_step = resumed.step - 1
        self._last_step_at = None

    def _point(
        self, kind: str, metric: str, step: int, epoch: int | None, value: float | None, at: str
    ) -> None:
        self._points.append(
            {
                "type": kind,
                "metric": metric,
                "step": step,
                "epoch": epoch,
                "value": value,
                "timestamp": at,
            }
        )

    def drain_metric_points(self) -> list[dict[str, Any]]:
        """The metrics.jsonl records produced since the last call."""
        points, self._points = self._points, []
        return points

    # ---------------------------------------------------------------- answers

    def progress(self) -> dict[str, Any]:
        """The progress block (api.md §4.1 names, speed fields included)."""
        step = self.current_step
        batch, batches = self._batch()
        per_step = self._time_per_step()
        return {
            "current_epoch": self.current_epoch,
            "total_epochs": self.epochs,
            "current_step": step,
            "total_steps": self.total_steps,
            "total_steps_estimated": self.total_steps is not None
            and self.steps_per_epoch_estimated,
            "current_batch": batch,
            "total_batches": batches,
            "epoch_progress": _percent(batch, batches),
            "overall_progress": 100.0 if self.completed else _percent(step, self.total_steps),
            "eta_seconds": self._eta(per_step),
            "training_time": round(self.training_time, 3),
            "steps_per_second": round(1.0 / per_step, 4) if per_step else None,
            "samples_per_second": _mean(self._samples, 3),
            "time_per_step": round(per_step, 3) if per_step is not None else None,
        }

    def metrics(self) -> dict[str, Any]:
        """The metrics summary (api.md §3.4, §4.1)."""
        finished = {e: loss for e, loss in self.epoch_losses.items() if loss is not None}
        best_epoch = min(finished, key=finished.__getitem__) if finished else None
        last_epoch = max(self.epoch_losses) if self.epoch_losses else None
        return {
            "current_loss": self.current_loss,
            "best_loss": self.best_loss,
            "best_loss_step": self.best_loss_step,
            "learning_rate": self.learning_rate,
            "grad_norm": self.grad_norm,
            "epoch_loss": self.epoch_losses[last_epoch] if last_epoch is not None else None,
            "best_epoch": best_epoch,
            "epoch_losses": [self.epoch_losses[e] for e in sorted(self.epoch_losses)],
            "eval_loss": self.eval_loss,
        }

    def _batch(self) -> tuple[int | None, int | None]:
        spe, step, epoch = self.steps_per_epoch, self.current_step, self.current_epoch
        if not spe or step is None or epoch is None:
            return None, spe
        return min(spe, max(0, step - (epoch - 1) * spe)), spe

    def _time_per_step(self) -> float | None:
        mean = _mean(self._iter_times, 6)
        return mean if mean else None

    def _eta(self, per_step: float | None) -> int | None:
        if self.completed:
            return 0
        if per_step is None or self.total_steps is None or self.current_step is None:
            return None
        return round(max(0, self.total_steps - self.current_step) * per_step)

    # --------------------------------------------------------------- persist

    def to_state(self) -> dict[str, Any]:
        """What ``progress()`` and ``metrics()`` do not show, JSON-safe. state.json keeps
        those two as ``progress`` and ``metrics``, once: ``from_state`` takes the three back
        together and gives a tracker with the same answers."""
        return {
            "version": STATE_VERSION,
            "max_steps": self.max_steps,
            "global_batch": self.global_batch,
            "completed": self.completed,
            "steps_per_epoch_estimated": self.steps_per_epoch_estimated,
            "training_time": self.training_time,  # unrounded
            "epoch_losses": [[e, loss] for e, loss in sorted(self.epoch_losses.items())],
            "iter_times": list(self._iter_times),
            "samples_per_sec": list(self._samples),
        }

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        progress: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> ProgressTracker:
        """Rebuild from ``to_state()`` with the ``progress`` and ``metrics`` blocks written
        beside it; a version 1 state (it held every number itself) needs neither."""
        if state.get("version", 1) == 1:
            progress = metrics = state
            epochs, per_epoch = state.get("epochs"), state.get("steps_per_epoch")
        else:
            progress, metrics = progress or {}, metrics or {}
            epochs, per_epoch = progress.get("total_epochs"), progress.get("total_batches")
        tracker = cls(epochs, state.get("max_steps"), per_epoch)
        for name in _PROGRESS_FIELDS:
            if name in progress:
                setattr(tracker, name, progress[name])
        for name in _METRICS_FIELDS:
            if name in metrics:
                setattr(tracker, name, metrics[name])
        tracker.global_batch = state.get("global_batch")
        tracker.completed = bool(state.get("completed", False))
        tracker.steps_per_epoch_estimated = bool(state.get("steps_per_epoch_estimated", False))
        tracker.training_time = float(state.get("training_time") or 0.0)
        tracker.epoch_losses = {int(e): loss for e, loss in state.get("epoch_losses") or []}
        tracker._iter_times.extend(float(v) for v in state.get("iter_times") or [])
        tracker._samples.extend(float(v) for v in state.get("samples_per_sec") or [])
        return tracker


_PROGRESS_FIELDS: Final = ("total_steps", "current_step", "current_epoch")
_METRICS_FIELDS: Final = (
    "current_loss",
    "best_loss",
    "best_loss_step",
    "learning_rate",
    "grad_norm",
    "eval_loss",
)


def _finite(value: float) -> float | None:
    """NaN/inf are printed by the trainer but are not JSON; they become null."""
    return value if math.isfinite(value) else None


def _percent(part: int | None, whole: int | None) -> float:
    if part is None or not whole:
        return 0.0
    return round(min(100.0, 100.0 * part / whole), 2)


def _mean(values: deque[float], digits: int) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(sum(finite) / len(finite), digits) if finite else None


class _IsoClock:
    """api.md writes metric timestamps as ``2025-02-12T07:15:00Z``; milliseconds are kept.
    Lines come in bursts, so the formatted second is reused."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._text}.{int((now - second) * 1000):03d}Z"
