"""The simulated trainer: stand-ins for `deepspeed` and diffusion-pipe's `train.py`.

Used as the trainer by the tests (no GPU, no weights there) and by `dpd demo` on machines
without GPUs. It never trains anything and says so: the launcher prints exactly one line on
stderr at start beginning with `[dpd-simulation]`; every other line, file and exit code
follows the real programs (reference: diffusion-pipe.md). Both scripts are stdlib-only and
run under any python3 >= 3.11 without dpd installed. Pace and failure injection are set by
DPD_SIM_* environment variables, documented in `deepspeed.py` and `diffusion_pipe/train.py`.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

SIMULATION_LABEL_PREFIX = "[dpd-simulation]"


def simulation_paths() -> tuple[str, Path]:
    """(the `trainer.deepspeed` command string, the `trainer.diffusion_pipe_dir`)."""
    here = Path(__file__).resolve().parent
    command = shlex.join([sys.executable, str(here / "deepspeed.py")])
    return command, here / "diffusion_pipe"
