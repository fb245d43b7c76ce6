"""Following one running job: its train.log becomes progress, metrics, log events and,
when the shim reports the end, an outcome.

Exactly-once across daemon restarts: ``state.json`` records ``log_offset`` (the byte where
the tracked progress stands) and, as of that byte, the parser's and the follower's state
(``output_state``) and the progress tracker's (``progress_state``). A restarted daemon takes
all three back and continues from the offset: it does not read the output again, which on a
multi-GB log would take minutes of CPU per job before dpd is back. (A state.json without
``output_state`` is replayed through a fresh parser, emitting nothing, from where the
current run's output starts: ``run_log_start``, since a resumed run appends to the log and
the runs before it must not count.) Metric points and log
events carry the offset of the read they came from; those at or below what metrics.jsonl and
events.jsonl already hold are not written again. Since state.json trails those files (it
is written at most every ``STATE_WRITE_SECONDS``), the first reads after a restart stop
exactly at the offsets they recorded, so a read never straddles one: no point or line is
written twice, and none is skipped.

state.json is written at most every ``STATE_WRITE_SECONDS``, and while training only once
``STATE_WRITE_STEPS`` new steps are in (or ``STATE_WRITE_MAX_SECONDS`` have passed): with
slow steps it is the costliest thing the daemon does per step (a full JSON rewrite and two
fsyncs), and live progress goes out as events anyway. A phase change and the end of a run
are written at once.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpd.events import EmitEvent
from dpd.jobs.record import RunRecovery
from dpd.jobs.states import Phase
from dpd.spool import layout as names
from dpd.spool.jsontail import field_bytes, json_lines_backwards
from dpd.spool.store import JobStore
from dpd.supervisor import output_parser as obs
from dpd.supervisor.health import Activity
from dpd.supervisor.outcome import RunFacts, StopReason
from dpd.supervisor.output_parser import OutputParser
from dpd.supervisor.pending import PendingEvents as PendingEvents
from dpd.supervisor.progress import ProgressTracker
from dpd.supervisor.seams import SYSTEM_CLOCK, Clock
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.follow import LogFollower
from dpd.trainlog.lineindex import LineIndex

log = logging.getLogger("dpd.supervisor")

STATE_WRITE_SECONDS = 1.0  # state.json at most this often...
STATE_WRITE_STEPS = 2  # ...while training, once this many new steps are in...
STATE_WRITE_MAX_SECONDS = 3.0  # ...or this long after the last write
READ_BYTES = 1 << 20
LOG_BATCH_LINES = 500
LAST_LINES_KEPT = 40


@dataclass
class FollowState:
    """What the follower learnt from the output so far. Its phase is saved once, as
    ``progress.phase`` in state.json (public), not again among these facts."""

    phase: str = Phase.STARTING.value
    completed: bool = False
    manual_quit: bool = False
    failure: Any = None  # the parser's Failure observation, if any
    run_dir: str | None = None
    activity: Activity = field(default_factory=lambda: Activity(time.monotonic(), 0.0))
    last_step: int | None = None  # the last step printed, to tell how many a line covers
    last_lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES_KEPT))

    def to_state(self) -> dict[str, Any]:
        """What decides the run's outcome, JSON-safe (``last_lines`` are not kept; the phase
        is saved in ``progress``)."""
        failure = self.failure
        return {
            "completed": self.completed,
            "manual_quit": self.manual_quit,
            "run_dir": self.run_dir,
            "steps_seen": self.activity.steps_seen,
            "slowest_step": self.activity.slowest_step,
            "last_step": self.last_step,
            "failure": None
            if failure is None
            else [failure.cause, failure.message, list(failure.lines), failure.phase.value],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], now: float, phase: str | None) -> FollowState:
        """Signs of life count from ``now`` (monotonic): a restart is no silence. ``phase`` is
        the saved ``progress.phase``; a state.json of the earlier layout kept it here too."""
        failure = state["failure"]
        activity = Activity(now, now)
        activity.steps_seen = bool(state.get("steps_seen", False))
        activity.slowest_step = float(state.get("slowest_step") or 0.0)
        return cls(
            activity=activity,
            last_step=state.get("last_step"),
            phase=phase or state.get("phase") or Phase.STARTING.value,
            completed=state["completed"],
            manual_quit=state["manual_quit"],
            run_dir=state["run_dir"],
            failure=None
            if failure is None
            else obs.Failure(failure[0], failure[1], tuple(failure[2]), Phase(failure[3])),
        )


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
        line_counts: LineCounter | None = None,
        clock: Clock = SYSTEM_CLOCK,
        hold_state: bool = False,
    ) -> None:
        self.clock = clock
        # events go to disk after ``poll`` returns (through the bus): state.json, whose
        # log_offset says they are there, is then left to the caller (``take_held_state``)
        self.hold_state = hold_state
        self._held_state: dict[str, Any] | None = None
        self.store = store
        self.line_counts = line_counts  # told how many lines were read, for the logs API
        self.emit = emit
        self.task_id = task_id
        self.job_dir = store.layout.job_dir(task_id)
        self.parser = OutputParser(epochs=epochs, max_steps=max_steps)
        self.tracker = ProgressTracker(epochs=epochs, max_steps=max_steps)
        self.follower = LogFollower(self.job_dir / names.TRAIN_LOG, 0, index=self._line_index())
        self.facts = FollowState(activity=Activity(clock.monotonic(), clock.monotonic()))
        self._on_observation = on_observation
        self._metrics_done = 0  # highest log offset already in metrics.jsonl
        self._log_done = 0  # highest log offset already sent as a log event
        self._replay_bounds: list[int] = []  # offsets the first reads after restore stop at
        self._state_written = 0.0
        self._steps_written = 0  # current_step at the last state.json write
        self._phase_written: str | None = None

    # ----------------------------------------------------------- re-attach

    def restore(self, state: dict[str, Any] | RunRecovery) -> None:
        """Rebuild from disk after a daemon restart (blocking: call in a thread)."""
        saved = state if isinstance(state, RunRecovery) else RunRecovery.from_state(state)
        offset = saved.log_offset
        path = self.job_dir / names.TRAIN_LOG
        phase = (saved.progress or {}).get("phase")
        if saved.output_state is not None and self._take_output_state(saved.output_state, phase):
            known: int | None = saved.output_state["newlines"]
            try:
                info = os.stat(path)
                identity: tuple[int, int] | None = (info.st_dev, info.st_ino)
            except FileNotFoundError:
                identity = None
        else:
            known, identity = self._replay(saved.run_log_start, offset)
        if saved.progress_state:
            self.tracker = ProgressTracker.from_state(
                saved.progress_state, saved.progress, saved.metrics
            )
        self.follower = LogFollower(path, offset, known, index=self._line_index())
        self.follower.identity = identity
        self._tell_line_count()
        # records are appended in offset order: the newest one that has an offset holds the
        # highest (log events but the last of a read carry offset 0)
        last_metric = next(json_lines_backwards(self.job_dir / names.METRICS_FILE), None)
        self._metrics_done = int(last_metric.get("offset", 0)) if last_metric else 0
        events = self.job_dir / names.EVENTS_FILE
        logged = json_lines_backwards(events, contains=field_bytes("type", "log"))
        self._log_done = next(
            (
                int(e["data"]["offset"])
                for e in logged
                if e.get("type") == "log" and e["data"].get("offset")
            ),
            0,
        )
        # reads after the saved offset ended there before the restart: end there again
        self._replay_bounds = sorted(
            {b for b in (self._metrics_done, self._log_done) if b > offset}
        )
        self._steps_written = self.tracker.current_step or 0
        self._phase_written = self.facts.phase

    def _take_output_state(self, saved: dict[str, Any] | None, phase: str | None) -> bool:
        """The parser and facts as state.json recorded them; False if it holds none (or of
        another version)."""
        if not saved:
            return False
        parser = OutputParser.from_state(saved["parser"], self.parser.epochs, self.parser.max_steps)
        if parser is None:
            return False
        self.parser = parser
        self.facts = FollowState.from_state(saved["facts"], self.clock.monotonic(), phase)
        return True

    def _replay(self, start: int, offset: int) -> tuple[int | None, tuple[int, int] | None]:
        """Feed the current run's output up to ``offset`` to the parser, emitting nothing;
        the "\\n" count at ``offset`` (None if not known) and the identity of the file read.
        The replay goes through the line index too: it passes over what the saved index
        holds and indexes the rest, so the follower goes on from the offset."""
        replay = LogFollower(self.job_dir / names.TRAIN_LOG, start, index=self._line_index())
        while replay.offset < offset:
            lines, _ = replay.read_new(max_bytes=min(1 << 20, offset - replay.offset))
            if not lines:
                break
            for line in lines:
                for observation in self.parser.feed(line, self.clock.wall()):
                    self._note(observation, replaying=True)
                    self._track(observation, self.clock.monotonic())
        return (replay.newlines if replay.offset == offset else None), replay.identity

    def _line_index(self) -> LineIndex | None:
        """train.log's line index, shared with the logs API through ``line_counts``."""
        if self.line_counts is None:
            return None
        return self.line_counts.index(self.job_dir / names.TRAIN_LOG)

    def _tell_line_count(self) -> None:
        if self.line_counts is not None:
            self.follower.tell(self.line_counts)

    # ---------------------------------------------------------------- poll

    def poll(self, final: bool = False) -> bool:
        """Read what is new, up to ``READ_BYTES`` (blocking: call in a thread). Returns True
        if anything was read; ``self.follower.at_eof`` says whether that was all.
        ``final`` also takes an unterminated last line (the writer has exited)."""
        limit = READ_BYTES
        if self._replay_bounds:
            limit = min(limit, self._replay_bounds[0] - self.follower.offset)
        lines, offset = self.follower.read_new(max_bytes=limit, final=final)
        while self._replay_bounds and self._replay_bounds[0] <= offset:
            self._replay_bounds.pop(0)
        self._tell_line_count()
        if not lines:
            return False
        now = self.clock.wall()
        moment = self.clock.monotonic()
        metric_points: list[dict[str, Any]] = []
        for line in lines:
            for observation in self.parser.feed(line, now):
                self._note(observation, replaying=False)
                self._track(observation, moment)
                self.tracker.observe(observation, now)
            self.facts.activity.output(moment, line, self.facts.phase)
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

    def drain(self) -> bool:
        """The writer has exited: read everything left, the unterminated last line too
        (blocking: call in a thread). Returns True if anything was read."""
        read = False
        while self.poll(final=True):
            read = True
        return read

    def _write_progress(self, offset: int, force: bool) -> None:
        progress = dict(self.tracker.progress(), phase=self.facts.phase)
        progress["current_loss"] = self.tracker.metrics().get("current_loss")
        self.emit("jobs", self.task_id, "progress", progress)
        if not (force or self._state_due()):
            return
        if self.hold_state:
            self._held_state = self.state_fields(offset)
        else:
            self.write_state(offset)

    def take_held_state(self) -> dict[str, Any] | None:
        """The state.json fields due since the last call (``hold_state``): to write once the
        events emitted up to now are durable, never before."""
        fields, self._held_state = self._held_state, None
        return fields

    def _state_due(self) -> bool:
        if self.facts.phase != self._phase_written:
            return True
        since = self.clock.monotonic() - self._state_written
        if since < STATE_WRITE_SECONDS:
            return False
        if self.facts.phase != Phase.TRAINING.value or since >= STATE_WRITE_MAX_SECONDS:
            return True
        return (self.tracker.current_step or 0) - self._steps_written >= STATE_WRITE_STEPS

    def write_state(self, offset: int | None = None) -> None:
        """Record the progress in state.json (blocking: call in a thread)."""
        fields = self.state_fields(offset)
        self.store.update_state(self.task_id, fields)

    def state_fields(self, offset: int | None = None) -> dict[str, Any]:
        """The state.json fields the follower owns, as of ``offset`` (default: all read);
        the caller writes them, and they count as written. The line index is saved with
        them: a cache, it needs no more than their cadence."""
        if self.follower.index is not None:
            self.follower.index.save()
        self._state_written = self.clock.monotonic()
        self._steps_written = self.tracker.current_step or 0
        self._phase_written = self.facts.phase
        fields: dict[str, Any] = {
            "progress": dict(self.tracker.progress(), phase=self.facts.phase),
            "metrics": self.tracker.metrics(),
            "progress_state": self.tracker.to_state(),
            "log_offset": self.follower.offset if offset is None else offset,
        }
        # as of the offset, every line before which was parsed (else none: a restart replays)
        fields["output_state"] = (
            {
                "parser": self.parser.to_state(),
                "facts": self.facts.to_state(),
                "newlines": self.follower.newlines,
            }
            if fields["log_offset"] == self.follower.offset
            else None
        )
        if self.facts.run_dir:
            fields["run_dir"] = self.facts.run_dir
        return fields

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

    def _track(self, observation: Any, moment: float) -> None:
        """Signs of progress for hang detection (``dpd.supervisor.health``)."""
        facts = self.facts
        if isinstance(observation, obs.StepDone):
            covered = max(1, observation.step - (facts.last_step or observation.step - 1))
            facts.activity.step(moment, observation.iter_time * covered)
            facts.last_step = observation.step
        elif isinstance(observation, obs.PhaseChanged):
            facts.activity.progressed(moment)
        elif isinstance(observation, obs.Resumed):
            facts.last_step = observation.step - 1

    def _keep_last(self, line: str) -> None:
        if line.strip():
            self.facts.last_lines.append(line[:500])

    # ------------------------------------------------------------- outcome

    def run_facts(
        self, stop_requested: StopReason | None, exit_status: Any, reason: str | None = None
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
