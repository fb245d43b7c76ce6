"""Following one running job: its train.log becomes progress, metrics, log events and,
when the shim reports the end, an outcome.

Exactly-once across daemon restarts: ``state.json`` records ``log_offset`` (the byte where
the tracked progress stands). A restarted daemon replays train.log up to that offset
through a fresh parser without emitting anything (rebuilding parser state), restores the
progress tracker from state.json, and continues from the offset. Metric points and log
events carry the offset of their last line; those at or below what metrics.jsonl and
events.jsonl already hold are not written again.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpd.events import EmitEvent
from dpd.jobs.states import Phase
from dpd.spool import layout as names
from dpd.spool.atomic import read_json_lines
from dpd.spool.store import JobStore
from dpd.supervisor import output_parser as obs
from dpd.supervisor.logfollow import LogFollower
from dpd.supervisor.outcome import RunFacts
from dpd.supervisor.output_parser import OutputParser
from dpd.supervisor.progress import ProgressTracker

log = logging.getLogger("dpd.supervisor")

POLL_SECONDS = 0.1
STATE_WRITE_SECONDS = 1.0
LOG_BATCH_LINES = 500
LAST_LINES_KEPT = 40


@dataclass
class FollowState:
    """What the follower learnt from the output so far."""

    phase: str = Phase.STARTING.value
    completed: bool = False
    manual_quit: bool = False
    failure: Any = None  # the parser's Failure observation, if any
    run_dir: str | None = None
    last_output: float = field(default_factory=time.monotonic)
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES_KEPT))


class JobFollower:
    """Reads one job's train.log from an offset and turns it into state and events."""

    def __init__(
        self,
        store: JobStore,
        emit: EmitEvent,
        task_id: str,
        *,
        epochs: int | None,
        max_steps: int | None,
        on_observation: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.store = store
        self.emit = emit
        self.task_id = task_id
        self.job_dir = store.layout.job_dir(task_id)
        self.parser = OutputParser(epochs=epochs, max_steps=max_steps)
        self.tracker = ProgressTracker(epochs=epochs, max_steps=max_steps)
        self.follower = LogFollower(self.job_dir / names.TRAIN_LOG, 0)
        self.facts = FollowState()
        self._on_observation = on_observation
        self._metrics_done = 0  # highest log offset already in metrics.jsonl
        self._log_done = 0  # highest log offset already sent as a log event
        self._state_written = 0.0

    # ----------------------------------------------------------- re-attach

    def restore(self, state: dict[str, Any]) -> None:
        """Rebuild from disk after a daemon restart (blocking: call in a thread)."""
        offset = int(state.get("log_offset") or 0)
        replay = LogFollower(self.job_dir / names.TRAIN_LOG, 0)
        while replay.offset < offset:
            lines, _ = replay.read_new(max_bytes=min(1 << 20, offset - replay.offset))
            if not lines:
                break
            for line in lines:
                for observation in self.parser.feed(line, time.time()):
                    self._note(observation, replaying=True)
        if state.get("progress_state"):
            self.tracker = ProgressTracker.from_state(state["progress_state"])
        self.follower = LogFollower(self.job_dir / names.TRAIN_LOG, offset)
        self._metrics_done = max(
            (int(r.get("offset", 0)) for r in read_json_lines(self.job_dir / names.METRICS_FILE)),
            default=0,
        )
        events = read_json_lines(self.job_dir / names.EVENTS_FILE)
        self._log_done = max(
            (int(e["data"].get("offset", 0)) for e in events if e.get("type") == "log"),
            default=0,
        )

    # ---------------------------------------------------------------- poll

    def poll(self, final: bool = False) -> bool:
        """Read what is new (blocking: call in a thread). Returns True if anything was read.
        ``final`` also takes an unterminated last line (the writer has exited)."""
        lines, offset = self.follower.read_new(final=final)
        if not lines:
            return False
        now = time.time()
        self.facts.last_output = time.monotonic()
        metric_points: list[dict[str, Any]] = []
        for line in lines:
            for observation in self.parser.feed(line, now):
                self._note(observation, replaying=False)
                self.tracker.observe(observation, now)
            self._keep_last(line)
        metric_points = [dict(point, offset=offset) for point in self.tracker.drain_metric_points()]
        if metric_points and offset > self._metrics_done:
            self.store.append_metrics(self.task_id, metric_points)
            self._metrics_done = offset
            for point in metric_points:
                self.emit("jobs", self.task_id, "metrics", point)
        if offset > self._log_done:
            self._emit_log(lines, offset)
            self._log_done = offset
        self._write_progress(offset, force=final)
        return True

    def _emit_log(self, lines: list[str], offset: int) -> None:
        for start in range(0, len(lines), LOG_BATCH_LINES):
            batch = lines[start : start + LOG_BATCH_LINES]
            end = offset if start + LOG_BATCH_LINES >= len(lines) else 0
            self.emit("jobs", self.task_id, "log", {"lines": batch, "offset": end})

    def _write_progress(self, offset: int, force: bool) -> None:
        now = time.monotonic()
        progress = dict(self.tracker.progress(), phase=self.facts.phase)
        progress["current_loss"] = self.tracker.metrics().get("current_loss")
        self.emit("jobs", self.task_id, "progress", progress)
        if not force and now - self._state_written < STATE_WRITE_SECONDS:
            return
        self.write_state(offset)

    def write_state(self, offset: int | None = None) -> None:
        self._state_written = time.monotonic()
        offset = self.follower.offset if offset is None else offset
        progress = dict(self.tracker.progress(), phase=self.facts.phase)
        metrics = self.tracker.metrics()
        progress_state = self.tracker.to_state()
        run_dir = self.facts.run_dir

        def change(state: dict[str, Any]) -> None:
            state["progress"] = progress
            state["metrics"] = metrics
            state["progress_state"] = progress_state
            state["log_offset"] = offset
            if run_dir:
                state["run_dir"] = run_dir

        self.store.update_state(self.task_id, change)

    def _note(self, observation: Any, replaying: bool) -> None:
        facts = self.facts
        if isinstance(observation, obs.PhaseChanged):
            facts.phase = str(observation.phase)
        elif isinstance(observation, obs.Completed):
            facts.completed = True
        elif isinstance(observation, obs.ManualQuit):
            facts.manual_quit = True
        elif isinstance(observation, obs.Failure) and facts.failure is None:
            facts.failure = observation
        elif isinstance(observation, obs.CheckpointSaved) and observation.run_dir:
            facts.run_dir = str(observation.run_dir)
        if not replaying and self._on_observation is not None:
            self._on_observation(self.task_id, observation)

    def _keep_last(self, line: str) -> None:
        if line.strip():
            self.facts.last_lines.append(line[:500])

    # ------------------------------------------------------------- outcome

    def run_facts(
        self, stop_requested: str | None, exit_status: Any, reason: str | None = None
    ) -> RunFacts:
        failure = self.facts.failure
        return RunFacts(
            completed=self.facts.completed,
            manual_quit=self.facts.manual_quit,
            stop_requested=stop_requested,
            returncode=getattr(exit_status, "returncode", None),
            signal=getattr(exit_status, "signal", None),
            failure_cause=getattr(failure, "cause", None),
            failure_message=getattr(failure, "message", None),
            last_lines=list(self.facts.last_lines),
            reason=reason,
        )

    def caching_failed(self) -> bool:
        """A traceback during caching is fatal: the real trainer then hangs forever."""
        return self.facts.failure is not None and self.facts.phase in (
            Phase.STARTING.value,
            Phase.CACHING.value,
        )

    def silent_for(self) -> float:
        return time.monotonic() - self.facts.last_output
