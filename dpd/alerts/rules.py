"""What counts as an alert — pure: no clock of its own, no I/O.

One ``RunWatch`` per running task sees its step-loss points and the time, and answers the
alerts to raise:

- ``nan_loss``: a step loss printed as NaN or Inf (metrics.jsonl holds it as null). Raised
  once, and again only after a finite loss has been seen in between.
- ``loss_explosion``: a finite step loss above ``factor`` times the median of the previous
  ``window`` finite losses (at least ``MIN_HISTORY`` of them). Raised once, and again only
  after the loss came back under the threshold.
- ``stalled``: no new step for ``stall_seconds`` since the last one (counted from the run's
  first step, so caching and start-up do not count). Raised once per stall. It is meant to
  come well before the hang timeout (``trainer.inactivity_timeout``) fails the run.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

MIN_HISTORY: Final = 10
NAN_LOSS: Final = "nan_loss"
LOSS_EXPLOSION: Final = "loss_explosion"
STALLED: Final = "stalled"


@dataclass(frozen=True)
class AlertRules:
    explosion_factor: float = 10.0
    window: int = 50
    stall_seconds: float = 600.0


@dataclass(frozen=True)
class Alert:
    kind: str
    message: str
    step: int | None
    value: float | None

    def data(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "step": self.step,
                "value": self.value}  # fmt: skip


@dataclass
class RunWatch:
    task_id: str
    rules: AlertRules
    history: deque[float] = field(default_factory=deque)
    last_step: int | None = None
    last_step_at: float | None = None
    nan_raised: bool = False
    explosion_raised: bool = False
    stall_raised: bool = False

    def step_loss(self, step: int | None, value: float | None, now: float) -> list[Alert]:
        self.last_step, self.last_step_at, self.stall_raised = step, now, False
        if value is None:
            if self.nan_raised:
                return []
            self.nan_raised = True
            return [Alert(NAN_LOSS, f"{self.task_id}: the loss is NaN or Inf at step {step}",
                          step, None)]  # fmt: skip
        self.nan_raised = False
        alerts = self._explosion(step, value)
        self.history.append(value)
        while len(self.history) > self.rules.window:
            self.history.popleft()
        return alerts

    def _explosion(self, step: int | None, value: float) -> list[Alert]:
        if len(self.history) < MIN_HISTORY:
            return []
        median = statistics.median(self.history)
        threshold = self.rules.explosion_factor * median
        if median <= 0 or value <= threshold:
            self.explosion_raised = False
            return []
        if self.explosion_raised:
            return []
        self.explosion_raised = True
        message = (
            f"{self.task_id}: the loss exploded at step {step}: {value:.4g} is more than "
            f"{self.rules.explosion_factor:g}x the median {median:.4g} of the last "
            f"{len(self.history)} steps"
        )
        return [Alert(LOSS_EXPLOSION, message, step, value)]

    def tick(self, now: float) -> list[Alert]:
        """The stall check, called now and then while the task runs."""
        if self.last_step_at is None or self.stall_raised:
            return []
        quiet = now - self.last_step_at
        if quiet < self.rules.stall_seconds:
            return []
        self.stall_raised = True
        message = f"{self.task_id}: no training step for {quiet:.0f} s (last step {self.last_step})"
        return [Alert(STALLED, message, self.last_step, round(quiet, 1))]
