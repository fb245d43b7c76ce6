"""The shapes of diffusion-pipe's output lines the parser routes on: patterns and field
splitters — pure. ``dpd.supervisor.output_parser`` decides what the lines mean.
"""

from __future__ import annotations

import re
from typing import Final

STEPS: Final = re.compile(
    r"steps: (\d+) loss: (\S+) ((?:\S+: \S+ )*)iter time \(s\): (\S+) samples/sec: (\S+)"
)
LR: Final = re.compile(r"step=(\d+), skipped=\d+, lr=\[([^,\]]*)")
GRAD_NORM: Final = re.compile(r"grad_norm[=:] ?([-+\w.]+)")
RESUMED: Final = re.compile(r"Resuming at epoch: (\d+), step: (\d+)")
CHECKPOINT_FILE: Final = re.compile(r"Saving model checkpoint: (.+)/(global_step(\d+))/[^/]*$")
CHECKPOINT_ANNOUNCED: Final = re.compile(r"\[Torch\] Checkpoint (global_step(\d+)) is about")
EVAL_LOSS: Final = re.compile(r"(?:(\S+) )?[Ee]val(?:uation)?(?: -)? [Ll]oss: ([^\s,]+)")
RETURN_CODE: Final = re.compile(r"exits with return code = (-\d+)")
LOGGED_MARKERS: Final = (
    "step=",
    "Saving model checkpoint: ",
    "[Torch] Checkpoint ",
    "Unable to find latest file",
    "exits with return code = -",
    "WARNING: ",
)
CHILD_PROCESS: Final = re.compile(r"Process \w*Process-[\d:]+:$")
QUIT_WARNINGS: Final = ("WARNING: You have set a lot of resolutions", "WARNING: Cosmos supports")


def step_fields(line: str) -> tuple[int, float, float, float, str] | None:
    """step, loss, iter time, samples/s and any extra ``name: value`` pairs of a steps line;
    the usual ten-word form is split, anything else goes through the regex."""
    words = line.split(" ")
    try:
        if len(words) == 10 and words[4] == "iter" and words[8] == "samples/sec:":
            return int(words[1]), float(words[3]), float(words[7]), float(words[9]), ""
        match = STEPS.match(line)
        if match is None:
            return None
        step, loss, extras, iter_time, samples = match.groups()
        return int(step), float(loss), float(iter_time), float(samples), extras
    except ValueError:
        return None


def lr_fields(message: str) -> tuple[int, float | None, float | None] | None:
    """step, learning rate and grad norm of DeepSpeed's ``step=N, skipped=0, lr=[...]``."""
    match = LR.match(message)
    if match is None:
        return None
    norm = GRAD_NORM.search(message) if "grad_norm" in message else None
    return int(match.group(1)), to_float(match.group(2)), to_float(norm.group(1)) if norm else None


def to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
