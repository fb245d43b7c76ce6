"""Job statuses and the transitions allowed between them (DESIGN §3 "Statuses").

Every status change goes through ``JobStore.transition`` (a compare-and-set that checks
the edge with ``can_transition``); the store refuses any other edge.
Terminal states may go back to ``queued`` only through a resume (a new run of the task).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


class Phase(StrEnum):
    STARTING = "starting"
    CACHING = "caching"
    TRAINING = "training"
    EVAL = "eval"
    SAVING = "saving"


TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.STOPPED})
ACTIVE: Final = frozenset({Status.RUNNING, Status.STOPPING})
RESUMABLE: Final = frozenset({Status.FAILED, Status.STOPPED})

_ALLOWED: Final[dict[Status, frozenset[Status]]] = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.STOPPED, Status.FAILED}),
    # running -> queued: the daemon stopped during a launch and the trainer never started
    Status.RUNNING: frozenset(
        {Status.STOPPING, Status.COMPLETED, Status.FAILED, Status.STOPPED, Status.QUEUED}
    ),
    Status.STOPPING: frozenset({Status.STOPPED, Status.FAILED, Status.COMPLETED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset({Status.QUEUED}),  # resume: a new run of the same task
    Status.STOPPED: frozenset({Status.QUEUED}),  # resume
}


class TransitionError(Exception):
    def __init__(self, source: Status, target: Status) -> None:
        super().__init__(f"a job cannot go from {source} to {target}")
        self.source = source
        self.target = target


def can_transition(source: Status, target: Status) -> bool:
    return target in _ALLOWED[source]


def check_transition(source: Status, target: Status) -> None:
    if not can_transition(source, target):
        raise TransitionError(source, target)
