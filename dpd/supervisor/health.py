"""When a trainer counts as hung (DESIGN §2 ``trainer.inactivity_timeout`` and
``trainer.step_timeout_factor``) — pure.

Silence is a failure in every phase. Before the first step (model loading, caching,
DeepSpeed's set-up: diffusion-pipe issue 417 hung right after ``Global batch size``) any
line is a sign of life, and ``inactivity_timeout`` seconds without one is a hang. Once steps
come, only progress counts: a new step, or a line printed while evaluating or saving (those
phases may be long and quiet between their lines); a run that prints no new step for
``max(inactivity_timeout, step_timeout_factor x the slowest step seen)`` is hung (an NCCL
hang mid-training prints nothing, a warning loop prints without progress).

Times are monotonic seconds from the supervisor's clock (``dpd.supervisor.seams.Clock``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dpd.jobs.states import Phase

QUIET_PHASES = frozenset({Phase.EVAL.value, Phase.SAVING.value})


@dataclass(frozen=True)
class HangRule:
    inactivity_timeout: float
    step_timeout_factor: float


@dataclass
class Activity:
    """Signs of life of one run, as the follower sees them."""

    last_output: float  # any line
    last_progress: float  # a step, a phase change, a line while evaluating or saving
    steps_seen: bool = False  # of this run (a resumed run starts without)
    slowest_step: float = 0.0  # seconds between printed steps, the slowest so far
    last_line: str = ""

    def output(self, now: float, line: str, phase: str) -> None:
        self.last_output = now
        if line.strip():
            self.last_line = line.strip()[:500]
        if phase in QUIET_PHASES:
            self.last_progress = now

    def progressed(self, now: float) -> None:
        self.last_progress = now

    def step(self, now: float, seconds: float) -> None:
        self.steps_seen = True
        self.slowest_step = max(self.slowest_step, seconds)
        self.last_progress = now


@dataclass(frozen=True)
class Hang:
    phase: str
    silent_for: float
    limit: float
    before_first_step: bool
    last_line: str

    slowest_step: float = 0.0

    def reason(self) -> str:
        """One line: that it hung, in which phase, for how long, and the last line printed."""
        if self.before_first_step:
            what = f"no output for {int(self.silent_for)} s during {self.phase}, before the "
            what += f"first step (inactivity timeout {int(self.limit)} s)"
        else:
            what = f"no new step for {int(self.silent_for)} s during {self.phase} (step "
            what += f"timeout {int(self.limit)} s, the slowest step took {self.slowest_step:.1f} s)"
        return f"the trainer hung: {what}; last line: {self.last_line or '(none)'}"


def limit(rule: HangRule, activity: Activity) -> float:
    """Seconds of silence allowed now."""
    if not activity.steps_seen:
        return rule.inactivity_timeout
    return max(rule.inactivity_timeout, rule.step_timeout_factor * activity.slowest_step)


def _silent_for(activity: Activity, now: float) -> float:
    since = activity.last_progress if activity.steps_seen else activity.last_output
    return max(0.0, now - since)


def hang(rule: HangRule, activity: Activity, phase: str, now: float) -> Hang | None:
    """The hang, if the run is hung at ``now``."""
    silent, allowed = _silent_for(activity, now), limit(rule, activity)
    if silent <= allowed:
        return None
    return Hang(
        phase, silent, allowed, not activity.steps_seen, activity.last_line, activity.slowest_step
    )


def due_in(rule: HangRule, activity: Activity, now: float) -> float:
    """Seconds until ``hang`` could first say yes (a check is due by then)."""
    return max(0.0, limit(rule, activity) - _silent_for(activity, now))
