"""How a finished trainer run is judged — pure.

Success is ``TRAINING COMPLETE!`` in the output, never exit code 0 alone: several failure and
quit paths of diffusion-pipe exit 0 (``quit()`` on too many resolutions, ``--cache_only``, a
killed launcher). A stop the user asked for is ``stopped`` whatever the exit code; so is a
``Manually quitting`` the user caused by creating ``save_quit`` themselves. A run the daemon
ended itself (a hang, a fatal caching error) is ``failed``. A trainer killed by SIGKILL that
nobody asked to kill was most likely taken by the kernel's OOM killer: the error says so.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dpd.jobs.states import Status

FENCED = "fenced"  # error.reason of a run its fleet fence stopped; T11 requeues it (§9.4)
DUPLICATE_PREVENTED = "duplicate_prevented"  # fleet run lock held elsewhere (§10.2)


class StopReason(Enum):
    """Why a run is being stopped."""

    GRACEFUL = "graceful"  # the user asked: save_quit, SIGTERM, then SIGKILL
    FORCE = "force"  # the user asked: SIGKILL at once
    FAILURE = "failure"  # the daemon ends it: a hang, a fatal error during caching
    FENCED = "fenced"  # fleet requeue mode: the node's lease ran out (FLEET.md §9.4)

    @property
    def by_user(self) -> bool:
        return self not in (StopReason.FAILURE, StopReason.FENCED)

    @property
    def saves(self) -> bool:
        """The staged stop begins with save_quit (a checkpoint to resume from)."""
        return self in (StopReason.GRACEFUL, StopReason.FENCED)


@dataclass(frozen=True)
class RunFacts:
    """What is known when a run has ended."""

    completed: bool = False  # TRAINING COMPLETE! was printed
    manual_quit: bool = False  # Manually quitting was printed
    stop_requested: StopReason | None = None
    returncode: int | None = None
    signal: int | None = None
    failure_cause: str | None = None  # from the output parser: "cuda_oom", "traceback", ...
    failure_message: str | None = None
    last_lines: list[str] = field(default_factory=list)
    reason: str | None = None  # a reason the supervisor already knows (timeout, lost shim)


@dataclass(frozen=True)
class Outcome:
    status: Status
    error: dict[str, Any] | None


def judge_run(facts: RunFacts) -> Outcome:
    if facts.completed and facts.stop_requested in (None, StopReason.GRACEFUL, StopReason.FENCED):
        return Outcome(Status.COMPLETED, None)
    if facts.stop_requested is StopReason.FENCED or facts.reason == FENCED:
        return Outcome(Status.FAILED, _error(facts))  # its save_quit was no user's stop
    if facts.stop_requested is not None and facts.stop_requested.by_user:
        return Outcome(Status.STOPPED, None)
    if facts.manual_quit and facts.returncode == 0:
        return Outcome(Status.STOPPED, None)
    return Outcome(Status.FAILED, _error(facts))


def _error(facts: RunFacts) -> dict[str, Any]:
    return {
        "reason": _reason(facts),
        "cause": facts.failure_cause,
        "exit_code": facts.returncode,
        "signal": _signal_name(facts.signal),
        "last_lines": facts.last_lines[-20:],
    }


def _reason(facts: RunFacts) -> str:
    if facts.reason:
        return facts.reason
    if facts.failure_message:
        return facts.failure_message
    if facts.signal is not None:
        return f"the trainer was killed by {killer(facts.signal)}"
    code = facts.returncode
    if code == 0:
        return "the trainer exited 0 without printing TRAINING COMPLETE!"
    if code is not None and code > 128:
        # deepspeed's launcher reports a worker killed by signal N as 256-N
        return f"a trainer worker was killed by {killer(256 - code)} (exit code {code})"
    return f"the trainer exited with code {code}"


def killer(number: int) -> str:
    """SIGKILL that dpd did not send (a stop would have made the run ``stopped`` or carried
    its own reason) is the kernel's OOM killer more often than anything else."""
    name = _signal_name(number)
    return f"{name} (out of memory?)" if number == signal.SIGKILL else str(name)


def _signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
