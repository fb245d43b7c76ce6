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
import re
from dataclasses import dataclass
from typing import Any, Final

from dpd.jobs.states import Phase
from dpd.trainlog.lines import logger_parts, split_rank

MESSAGE_LIMIT: Final = 1000
FAILURE_LINES_KEPT: Final = 30
# A traceback being read keeps at most this many lines (its last): indented lines such as
# progress bars would otherwise grow it, and state.json with it, until the exception line.
TRACEBACK_LINES_KEPT: Final = 200
STATE_VERSION: Final = 1  # of ``OutputParser.to_state``

# ---------------------------------------------------------------- observations


@dataclass(frozen=True, slots=True)
class PhaseChanged:
    phase: Phase


@dataclass(frozen=True, slots=True)
class StepDone:
    step: int
    loss: float  # may be nan/inf, as printed
    iter_time: float
    samples_per_sec: float
    lr: float | None
    grad_norm: float | None
    epoch: int


@dataclass(frozen=True, slots=True)
class EpochStarted:
    epoch: int


@dataclass(frozen=True, slots=True)
class EpochEnded:
    epoch: int
    loss: float | None  # mean of the epoch's finite step losses (TensorBoard train/epoch_loss)
    step: int


@dataclass(frozen=True, slots=True)
class EvalStarted:
    step: int


@dataclass(frozen=True, slots=True)
class EvalLoss:
    """diffusion-pipe at the pinned commit sends eval losses to TensorBoard only; this
    exists for a trainer that prints ``eval loss: X`` (or ``<name> eval loss: X``)."""

    loss: float
    step: int
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ModelSaved:
    name: str  # "epoch3" / "step100"; the files are complete later (no tmp/, weights present)
    step: int


@dataclass(frozen=True, slots=True)
class CheckpointSaved:
    tag: str  # "global_step100"
    step: int
    run_dir: str | None  # the only place the output names the run dir


@dataclass(frozen=True, slots=True)
class GlobalBatch:
    size: int


@dataclass(frozen=True, slots=True)
class Resumed:
    epoch: int
    step: int  # the first step this launch will run (saved step + 1)


@dataclass(frozen=True, slots=True)
class TotalSteps:
    total: int
    steps_per_epoch: int | None


@dataclass(frozen=True, slots=True)
class Completed:
    pass


@dataclass(frozen=True, slots=True)
class ManualQuit:
    pass


@dataclass(frozen=True, slots=True)
class Failure:
    cause: str  # see FAILURE_CAUSES
    message: str
    lines: tuple[str, ...]  # the traceback (rank prefix removed), last lines first-to-last
    phase: Phase


Observation = (
    PhaseChanged
    | StepDone
    | EpochStarted
    | EpochEnded
    | EvalStarted
    | EvalLoss
    | ModelSaved
    | CheckpointSaved
    | GlobalBatch
    | Resumed
    | TotalSteps
    | Completed
    | ManualQuit
    | Failure
)

FAILURE_CAUSES: Final = (
    "cuda_oom",
    "port_in_use",
    "cuda_error",
    "missing_file",
    "dataset_error",
    "checkpoint_missing",
    "config_error",
    "worker_killed",
    "traceback",
)

# ---------------------------------------------------------------------- patterns

_STEPS: Final = re.compile(
    r"steps: (\d+) loss: (\S+) ((?:\S+: \S+ )*)iter time \(s\): (\S+) samples/sec: (\S+)"
)
_LR: Final = re.compile(r"step=(\d+), skipped=\d+, lr=\[([^,\]]*)")
_GRAD_NORM: Final = re.compile(r"grad_norm[=:] ?([-+\w.]+)")
_RESUMED: Final = re.compile(r"Resuming at epoch: (\d+), step: (\d+)")
_CHECKPOINT_FILE: Final = re.compile(r"Saving model checkpoint: (.+)/(global_step(\d+))/[^/]*$")
_CHECKPOINT_ANNOUNCED: Final = re.compile(r"\[Torch\] Checkpoint (global_step(\d+)) is about")
_EVAL_LOSS: Final = re.compile(r"(?:(\S+) )?[Ee]val(?:uation)?(?: -)? [Ll]oss: ([^\s,]+)")
_RETURN_CODE: Final = re.compile(r"exits with return code = (-\d+)")
_OOM: Final = re.compile(r"OutOfMemoryError|CUDA out of memory")
_PORT: Final = re.compile(r"EADDRINUSE|[Aa]ddress already in use")
_MISSING_FILE: Final = re.compile(r"FileNotFoundError|No such file or directory|Invalid path: ")
_DATASET: Final = re.compile(
    r"had no images/videos|Processed dataset was empty|WebP videos are not supported"
)
_CACHING_PREFIXES: Final = (
    "caching latents: ",
    "caching text embeddings: ",
    "[CACHE] ",
    "Grouped metadata is not cached",
    "Found grouped metadata cache",
    "Loading grouped metadata",
    "Building iteration order",
)
_LOGGED_MARKERS: Final = (
    "step=",
    "Saving model checkpoint: ",
    "[Torch] Checkpoint ",
    "Unable to find latest file",
    "exits with return code = -",
    "WARNING: ",
)
_CHILD_PROCESS: Final = re.compile(r"Process \w*Process-[\d:]+:$")
_QUIT_WARNINGS: Final = ("WARNING: You have set a lot of resolutions", "WARNING: Cosmos supports")
_FRAME: Final = re.compile(r'  File "([^"]+)", line (\d+), in (.+)')
_TRACEBACK: Final = "Traceback (most recent call last):"
_CHAIN_MARKERS: Final = ("During handling of the above", "The above exception was the direct")


def total_steps(
    epochs: int | None, max_steps: int | None, steps_per_epoch: int | None
) -> int | None:
    """epochs x steps_per_epoch, capped by max_steps (reference §4.5)."""
    by_epochs = epochs * steps_per_epoch if epochs and steps_per_epoch else None
    if by_epochs is not None and max_steps:
        return min(by_epochs, max_steps)
    return by_epochs or max_steps or None


def classify_failure(exception: str, phase: Phase, missing_latest: bool) -> str:
    """The cause named in the API error for one exception line."""
    if _OOM.search(exception):
        return "cuda_oom"
    if _PORT.search(exception):
        return "port_in_use"
    if "CUDA error" in exception:
        return "cuda_error"
    if _MISSING_FILE.search(exception):
        return "missing_file"
    if _DATASET.search(exception):
        return "dataset_error"
    if missing_latest and exception.startswith("AssertionError"):
        return "checkpoint_missing"
    if phase is Phase.STARTING:
        return "config_error"
    return "traceback"


def describe_exception(exception: str, lines: list[str]) -> str:
    """The exception line; a bare one (``AssertionError``) gets the failing source line."""
    if ": " in exception or len(lines) < 3:
        return exception
    for index in range(len(lines) - 2, -1, -1):
        frame = _FRAME.match(lines[index])
        if frame is not None:
            code = lines[index + 1].strip() if index + 1 < len(lines) - 1 else ""
            where = f"{frame.group(1).rsplit('/', 1)[-1]}:{frame.group(2)} in {frame.group(3)}"
            return f"{exception} at {where}: {code}" if code else f"{exception} at {where}"
    return exception


@dataclass(slots=True)
class _Traceback:
    """One traceback being read, per rank (ranks interleave on the shared stream)."""

    lines: list[str]
    ignored: bool  # after "Exception ignored in": printed at shutdown, not fatal


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
        self._tracebacks: dict[int | None, _Traceback] = {}
        self._failures: set[str] = set()
        self._missing_latest: str | None = None  # DeepSpeed's warning, before the assert
        self._ignore_next_traceback = False
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
        if self._tracebacks and rank in self._tracebacks and self._traceback_line(rank, body, out):
            return
        if not body:
            return
        if body.startswith(_TRACEBACK):
            self._tracebacks[rank] = _Traceback([body], self._ignore_next_traceback)
            self._ignore_next_traceback = False
            return
        if body[0] == "[" and body[1:2].isdigit():
            # DeepSpeed logger lines: most are config dumps, skipped on a substring test
            if any(marker in body for marker in _LOGGED_MARKERS):
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
        elif line.startswith(_CACHING_PREFIXES):
            if self.phase is Phase.STARTING:
                self._set_phase(Phase.CACHING, out)
        else:
            self._rare(line, out)

    def _rare(self, line: str, out: list[Observation]) -> None:
        if line.startswith("Exception ignored in"):
            self._ignore_next_traceback = True
        elif line.startswith("Process ") and _CHILD_PROCESS.match(line):
            # a multiprocessing child died: before training only caching forks those, and
            # it may fail while scanning, before any caching line was printed
            if self.phase is Phase.STARTING:
                self._set_phase(Phase.CACHING, out)
        elif line.startswith(_QUIT_WARNINGS):
            self._fail("config_error", line, (line,), out)
        elif ": error: " in line and line.split(": error: ", 1)[0].endswith(".py"):
            self._fail("config_error", line, (line,), out)  # argparse, exit 2
        elif "val" in line and "oss" in line:
            match = _EVAL_LOSS.match(line)
            value = _float(match.group(2)) if match else None
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
            self._lr_line(message)
        elif message.startswith("Saving model checkpoint: "):
            self._checkpoint_file(message, out)
        elif message.startswith("[Torch] Checkpoint ") and "about to be saved" in message:
            match = _CHECKPOINT_ANNOUNCED.match(message)
            if match is not None:
                self._set_phase(Phase.SAVING, out)
        elif message.startswith("Unable to find latest file at"):
            self._missing_latest = message.split(", if trying", 1)[0]
        elif "exits with return code = -" in message:
            self._worker_killed(message, out)
        elif level == "WARNING" and message.startswith(_QUIT_WARNINGS):
            self._fail("config_error", message, (message,), out)

    def _lr_line(self, message: str) -> None:
        match = _LR.match(message)
        if match is None:
            return
        self._lr_step = int(match.group(1))
        self.lr = _float(match.group(2))
        if "grad_norm" in message:
            norm = _GRAD_NORM.search(message)
            self.grad_norm = _float(norm.group(1)) if norm else None

    def _checkpoint_file(self, message: str, out: list[Observation]) -> None:
        match = _CHECKPOINT_FILE.match(message)
        if match is None:
            return
        run_dir, tag, step = match.group(1), match.group(2), int(match.group(3))
        self._set_phase(Phase.SAVING, out)
        if tag not in self._checkpoints:  # one line per pipeline stage; report the tag once
            self._checkpoints.add(tag)
            out.append(CheckpointSaved(tag, step, run_dir))

    def _worker_killed(self, message: str, out: list[Observation]) -> None:
        match = _RETURN_CODE.search(message)
        if match is None or self.completed or self.manual_quit:
            return
        signal = -int(match.group(1))
        text = f"a trainer worker was killed by signal {signal} (exit code {256 - signal})"
        self._fail("worker_killed", text, (message,), out)

    # --------------------------------------------------------- training lines

    def _steps(self, line: str, out: list[Observation]) -> None:
        fields = _step_fields(line)
        if fields is None:
            return
        step, loss, iter_time, samples, extras = fields
        grad_norm = self.grad_norm if self._lr_step == step else None
        if extras and "grad_norm" in extras:
            norm = _GRAD_NORM.search(extras)
            grad_norm = _float(norm.group(1)) if norm else grad_norm
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
            self._set_total(out)

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
        match = _RESUMED.search(line)
        if match is None:
            return
        self.epoch, first_step = int(match.group(1)), int(match.group(2))
        self.step = first_step - 1
        self._ended_epoch = self.epoch - 1
        self._loss_sum, self._loss_count = 0.0, 0
        out.append(Resumed(self.epoch, first_step))

    # -------------------------------------------------------------- tracebacks

    def _traceback_line(self, rank: int | None, body: str, out: list[Observation]) -> bool:
        """False for a line that is not part of it (another process's logger line)."""
        if body.startswith("["):
            return False
        current = self._tracebacks[rank]
        current.lines.append(body)
        if len(current.lines) > TRACEBACK_LINES_KEPT:
            del current.lines[: len(current.lines) - TRACEBACK_LINES_KEPT]
        if not body or body[0] in " \t" or body.startswith((_TRACEBACK, *_CHAIN_MARKERS)):
            return True
        del self._tracebacks[rank]  # the exception line ends it
        if not current.ignored:
            cause = classify_failure(body, self.phase, self._missing_latest is not None)
            message = describe_exception(body, current.lines)
            if cause == "checkpoint_missing":
                message = f"{message}: {self._missing_latest}"
            self._fail(cause, message, tuple(current.lines[-FAILURE_LINES_KEPT:]), out)
        return True

    def _fail(
        self, cause: str, message: str, lines: tuple[str, ...], out: list[Observation]
    ) -> None:
        if cause in self._failures:  # every rank prints the same error (its own GPU number)
            return
        self._failures.add(cause)
        message = message[:MESSAGE_LIMIT]
        out.append(Failure(cause, message, lines, self.phase))

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
            "tracebacks": [[rank, t.lines, t.ignored] for rank, t in self._tracebacks.items()],
            "failures": sorted(self._failures),
            "missing_latest": self._missing_latest,
            "ignore_next_traceback": self._ignore_next_traceback,
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
        parser._tracebacks = {
            rank: _Traceback(list(lines), ignored) for rank, lines, ignored in state["tracebacks"]
        }
        parser._failures = set(state["failures"])
        parser._missing_latest = state["missing_latest"]
        parser._ignore_next_traceback = state["ignore_next_traceback"]
        parser._started = state["started"]
        return parser

    # ------------------------------------------------------------------ state

    def _set_phase(self, phase: Phase, out: list[Observation]) -> None:
        if phase is not self.phase:
            self.phase = phase
            out.append(PhaseChanged(phase))

    def _set_total(self, out: list[Observation]) -> None:
        total = total_steps(self.epochs, self.max_steps, self.steps_per_epoch)
        if total is not None and total != self.total:
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


def _step_fields(line: str) -> tuple[int, float, float, float, str] | None:
    """step, loss, iter time, samples/s and any extra ``name: value`` pairs of a steps line;
    the usual ten-word form is split, anything else goes through the regex."""
    words = line.split(" ")
    try:
        if len(words) == 10 and words[4] == "iter" and words[8] == "samples/sec:":
            return int(words[1]), float(words[3]), float(words[7]), float(words[9]), ""
        match = _STEPS.match(line)
        if match is None:
            return None
        step, loss, extras, iter_time, samples = match.groups()
        return int(step), float(loss), float(iter_time), float(samples), extras
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
