"""diffusion-pipe's output, line by line, turned into observations — pure, never raises.

What the trainer prints is described in reference/diffusion-pipe.md §4 and §6.4; the lines
relied upon are the ones §7.2 names (``steps:``, ``Started new epoch:``, ``Saving model to
directory``, ``TRAINING COMPLETE!``, ``Manually quitting``) plus DeepSpeed's lr and checkpoint
log lines and Python tracebacks. Every other line is ignored here (it stays in the log).

Why the phase rules look the way they do: diffusion-pipe prints nothing while it loads the
model after caching, so "caching" lasts until ``Global batch size = N`` (DeepSpeed is
initialised, the loop is next); eval and saving have no end marker, so the next training
line ends them. Failures are reported at the exception line that ends a traceback — the
caching child's traceback is the last thing a hung trainer ever prints.

Speed matters (a chatty run prints millions of lines): each line is routed by cheap
``startswith`` checks and only then matched against a regex.
"""

from __future__ import annotations

import math
from typing import Any, Final

from dpd.jobs.states import Phase
from dpd.supervisor import output_lines as lines
from dpd.supervisor.failures import Tracebacks
from dpd.supervisor.observations import (
    FAILURE_CAUSES,
    CheckpointSaved,
    Completed,
    EpochEnded,
    EpochStarted,
    EvalLoss,
    EvalStarted,
    Failure,
    GlobalBatch,
    ManualQuit,
    ModelSaved,
    Observation,
    PhaseChanged,
    Resumed,
    StepDone,
    TotalSteps,
)
from dpd.supervisor.outcome import killer
from dpd.trainlog.lines import CACHING_PREFIXES, logger_parts, split_rank

__all__ = [
    "FAILURE_CAUSES",
    "CheckpointSaved",
    "Completed",
    "EpochEnded",
    "EpochStarted",
    "EvalLoss",
    "EvalStarted",
    "Failure",
    "GlobalBatch",
    "ManualQuit",
    "ModelSaved",
    "Observation",
    "OutputParser",
    "PhaseChanged",
    "Resumed",
    "StepDone",
    "TotalSteps",
    "total_steps",
]

STATE_VERSION: Final = 1  # of ``OutputParser.to_state``


def total_steps(
    epochs: int | None, max_steps: int | None, steps_per_epoch: int | None
) -> int | None:
    """epochs x steps_per_epoch, capped by max_steps (reference §4.5)."""
    by_epochs = epochs * steps_per_epoch if epochs and steps_per_epoch else None
    if by_epochs is not None and max_steps:
        return min(by_epochs, max_steps)
    return by_epochs or max_steps or None


# ------------------------------------------------------------------------ parser


class OutputParser:
    """Feed it the trainer's lines in order; it keeps the phase/epoch/step state."""

    def __init__(
        self,
        epochs: int | None,
        max_steps: int | None,
        steps_per_epoch_hint: int | None = None,
    ) -> None:
        self.epochs = epochs
        self.max_steps = max_steps
        self.steps_per_epoch = steps_per_epoch_hint
        self.phase = Phase.STARTING
        self.epoch = 1
        self.step = 0
        self.lr: float | None = None
        self.grad_norm: float | None = None
        self.global_batch: int | None = None
        self.total: int | None = None
        self.completed = False
        self.manual_quit = False
        self.misread_lines = 0  # lines that raised inside the parser: a bug, never expected
        self._lr_step = -1
        self._loss_sum = 0.0  # of the current epoch's finite step losses...
        self._loss_count = 0  # ...and how many there are
        self._ended_epoch = 0
        self._checkpoints: set[str] = set()
        self.tracebacks = Tracebacks()
        self._started = False

    # ----------------------------------------------------------------- entry

    def feed(self, line: str, now: float) -> list[Observation]:
        """Observations from one output line (without its terminator). Never raises."""
        out: list[Observation] = []
        try:
            if not self._started:
                self._started = True
                self._set_total(out)
            self._line(line.rstrip("\r\n"), out)
        except Exception:  # a line we misread must never stop the follower
            self.misread_lines += 1
        return out

    def _line(self, line: str, out: list[Observation]) -> None:
        if not line:
            return
        rank, body = split_rank(line) if line[0] == "[" else (None, line)
        if self.tracebacks.open and self.tracebacks.line(rank, body, self.phase, out):
            return
        if not body or self.tracebacks.begin(rank, body):
            return
        if body[0] == "[" and body[1:2].isdigit():
            # DeepSpeed logger lines: most are config dumps, skipped on a substring test
            if any(marker in body for marker in lines.LOGGED_MARKERS):
                logged = logger_parts(body)
                if logged is not None:
                    self._logged(logged[1], logged[3], out)
            return
        if "%|" in body:
            self._progress_bar(body, out)
            return
        self._plain(body, out)

    # ------------------------------------------------------------ plain lines

    def _plain(self, line: str, out: list[Observation]) -> None:
        first = line[0]
        if first == "s" and line.startswith("steps: "):
            self._steps(line, out)
        elif first == "S":
            if line.startswith("Started new epoch: ") and line[19:].isdecimal():
                self._new_epoch(int(line[19:]), out)
            elif line.startswith("Saving model to directory "):
                self._model_saved(line[26:].strip(), out)
        elif line == "TRAINING COMPLETE!":
            if not self.completed:
                self.completed = True
                out.append(Completed())
        elif line == "Manually quitting":
            if not self.manual_quit:
                self.manual_quit = True
                out.append(ManualQuit())
        elif line == "Running eval":
            self._set_phase(Phase.EVAL, out)
            out.append(EvalStarted(self.step))
        elif line.startswith("Global batch size = ") and line[20:].isdecimal():
            self._global_batch(int(line[20:]), out)
        elif line.startswith("Resuming training from checkpoint"):
            self._resumed(line, out)
        elif line.startswith(CACHING_PREFIXES):
            if self.phase is Phase.STARTING:
                self._set_phase(Phase.CACHING, out)
        else:
            self._rare(line, out)

    def _rare(self, line: str, out: list[Observation]) -> None:
        if line.startswith("Exception ignored in"):
            self.tracebacks.ignore_next = True
        elif line.startswith("Process ") and lines.CHILD_PROCESS.match(line):
            # a multiprocessing child died: before training only caching forks those, and
            # it may fail while scanning, before any caching line was printed
            if self.phase is Phase.STARTING:
                self._set_phase(Phase.CACHING, out)
        elif line.startswith(lines.QUIT_WARNINGS):
            self.tracebacks.fail("config_error", line, (line,), self.phase, out)
        elif ": error: " in line and line.split(": error: ", 1)[0].endswith(".py"):
            self.tracebacks.fail("config_error", line, (line,), self.phase, out)  # argparse, exit 2
        elif "val" in line and "oss" in line:
            match = lines.EVAL_LOSS.match(line)
            value = lines.to_float(match.group(2)) if match else None
            if value is not None and match is not None:
                out.append(EvalLoss(value, self.step, match.group(1)))

    def _progress_bar(self, line: str, out: list[Observation]) -> None:
        """Caching/Map bars start the caching phase; text glued after a bar (stdout and
        stderr share the file) is parsed as its own line."""
        if self.phase is Phase.STARTING:
            self._set_phase(Phase.CACHING, out)
        end = line.find("]", line.find("%|"))
        if end != -1 and end + 1 < len(line):
            self._line(line[end + 1 :], out)

    # ----------------------------------------------------------- logger lines

    def _logged(self, level: str, message: str, out: list[Observation]) -> None:
        if message.startswith("[Rank "):
            message = message[message.find("] ") + 2 :]
        if message.startswith("step="):
            lr = lines.lr_fields(message)
            if lr is not None:
                self._lr_step, self.lr, norm = lr
                self.grad_norm = norm if "grad_norm" in message else self.grad_norm
        elif message.startswith("Saving model checkpoint: "):
            self._checkpoint_file(message, out)
        elif message.startswith("[Torch] Checkpoint ") and "about to be saved" in message:
            match = lines.CHECKPOINT_ANNOUNCED.match(message)
            if match is not None:
                self._set_phase(Phase.SAVING, out)
        elif message.startswith("Unable to find latest file at"):
            self.tracebacks.missing_latest = message.split(", if trying", 1)[0]
        elif "exits with return code = -" in message:
            self._worker_killed(message, out)
        elif level == "WARNING" and message.startswith(lines.QUIT_WARNINGS):
            self.tracebacks.fail("config_error", message, (message,), self.phase, out)

    def _checkpoint_file(self, message: str, out: list[Observation]) -> None:
        match = lines.CHECKPOINT_FILE.match(message)
        if match is None:
            return
        run_dir, tag, step = match.group(1), match.group(2), int(match.group(3))
        self._set_phase(Phase.SAVING, out)
        if tag not in self._checkpoints:  # one line per pipeline stage; report the tag once
            self._checkpoints.add(tag)
            out.append(CheckpointSaved(tag, step, run_dir))

    def _worker_killed(self, message: str, out: list[Observation]) -> None:
        match = lines.RETURN_CODE.search(message)
        if match is None or self.completed or self.manual_quit:
            return
        signal = -int(match.group(1))
        text = f"a trainer worker was killed by {killer(signal)} (exit code {256 - signal})"
        self.tracebacks.fail("worker_killed", text, (message,), self.phase, out)

    # --------------------------------------------------------- training lines

    def _steps(self, line: str, out: list[Observation]) -> None:
        fields = lines.step_fields(line)
        if fields is None:
            return
        step, loss, iter_time, samples, extras = fields
        grad_norm = self.grad_norm if self._lr_step == step else None
        if extras and "grad_norm" in extras:
            norm = lines.GRAD_NORM.search(extras)
            grad_norm = lines.to_float(norm.group(1)) if norm else grad_norm
        self._set_phase(Phase.TRAINING, out)
        self.step = step
        if math.isfinite(loss):
            self._loss_sum += loss
            self._loss_count += 1
        out.append(StepDone(step, loss, iter_time, samples, self.lr, grad_norm, self.epoch))

    def _new_epoch(self, epoch: int, out: list[Observation]) -> None:
        self._set_phase(Phase.TRAINING, out)
        self._end_epoch(epoch - 1, out)
        if epoch == 2 or (self.steps_per_epoch is None and epoch > 1):
            self._learn_steps_per_epoch(epoch - 1, out)
        self.epoch = epoch
        out.append(EpochStarted(epoch))

    def _learn_steps_per_epoch(self, finished_epochs: int, out: list[Observation]) -> None:
        """Epoch E ends exactly at step E x steps_per_epoch (reference §4.5); it is never
        printed, so it is learnt here (exact when every step is printed)."""
        if self.step > 0 and self.step % finished_epochs == 0:
            self.steps_per_epoch = self.step // finished_epochs
            self._set_total(out, learnt=True)

    def _end_epoch(self, epoch: int, out: list[Observation]) -> None:
        if epoch < 1 or epoch <= self._ended_epoch:
            return
        count = self._loss_count
        mean = round(self._loss_sum / count, 6) if count else None
        self._loss_sum, self._loss_count = 0.0, 0
        self._ended_epoch = epoch
        out.append(EpochEnded(epoch, mean, self.step))

    def _model_saved(self, name: str, out: list[Observation]) -> None:
        self._set_phase(Phase.SAVING, out)
        if name.startswith("epoch") and name[5:].isdecimal() and int(name[5:]) == self.epoch:
            self._end_epoch(self.epoch, out)  # saved before "Started new epoch", or the last one
        out.append(ModelSaved(name, self.step))

    def _global_batch(self, size: int, out: list[Observation]) -> None:
        self._set_phase(Phase.TRAINING, out)
        if size != self.global_batch:  # every rank prints it
            self.global_batch = size
            out.append(GlobalBatch(size))

    def _resumed(self, line: str, out: list[Observation]) -> None:
        match = lines.RESUMED.search(line)
        if match is None:
            return
        self.epoch, first_step = int(match.group(1)), int(match.group(2))
        self.step = first_step - 1
        self._ended_epoch = self.epoch - 1
        self._loss_sum, self._loss_count = 0.0, 0
        out.append(Resumed(self.epoch, first_step))

    # ------------------------------------------------------------ persistence

    def to_state(self) -> dict[str, Any]:
        """JSON-safe; ``from_state`` gives back a parser that goes on exactly as this one
        would, so a restarted daemon need not read the run's output again."""
        return {
            "version": STATE_VERSION,
            "phase": self.phase.value,
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "global_batch": self.global_batch,
            "total": self.total,
            "steps_per_epoch": self.steps_per_epoch,
            "completed": self.completed,
            "manual_quit": self.manual_quit,
            "misread_lines": self.misread_lines,
            "lr_step": self._lr_step,
            "epoch_loss": [self._loss_sum, self._loss_count],
            "ended_epoch": self._ended_epoch,
            "checkpoints": sorted(self._checkpoints),
            **self.tracebacks.to_state(),
            "started": self._started,
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], epochs: int | None, max_steps: int | None
    ) -> OutputParser | None:
        """The parser ``to_state`` described; None if ``state`` is of another version."""
        if state.get("version") != STATE_VERSION:
            return None
        parser = cls(epochs, max_steps, state["steps_per_epoch"])
        parser.phase = Phase(state["phase"])
        for name in _STATE_FIELDS:
            setattr(parser, name, state[name])
        parser._lr_step = state["lr_step"]
        parser._loss_sum, parser._loss_count = state["epoch_loss"]
        parser._ended_epoch = state["ended_epoch"]
        parser._checkpoints = set(state["checkpoints"])
        parser.tracebacks = Tracebacks.from_state(state)
        parser._started = state["started"]
        return parser

    # ------------------------------------------------------------------ state

    def _set_phase(self, phase: Phase, out: list[Observation]) -> None:
        if phase is not self.phase:
            self.phase = phase
            out.append(PhaseChanged(phase))

    def _set_total(self, out: list[Observation], learnt: bool = False) -> None:
        """``learnt``: steps per epoch were just learnt; told even where max_steps keeps the
        total as it was (the tracker replaces its estimate with them)."""
        total = total_steps(self.epochs, self.max_steps, self.steps_per_epoch)
        if total is not None and (learnt or total != self.total):
            self.total = total
            out.append(TotalSteps(total, self.steps_per_epoch))


_STATE_FIELDS: Final = (
    "epoch",
    "step",
    "lr",
    "grad_norm",
    "global_batch",
    "total",
    "completed",
    "manual_quit",
    "misread_lines",
)
