"""Stands in for wandb where the real package is not installed (kit runs only).

diffusion-pipe's train.py imports wandb unconditionally but calls it only when
``[monitoring] enable_wandb`` is true, which the kit never sets. The real wheel (about
20 MB) does not fit the kit's 55 MiB budget next to PyAV, which ComfyUI imports, so
conformance.sh puts this folder on the trainer's PYTHONPATH when ``import wandb`` fails, and
the report says so. Any use raises, so a run that did reach wandb cannot pass silently.
"""

from typing import NoReturn

__version__ = "0+dpd.placeholder"


def __getattr__(name: str) -> NoReturn:
    raise RuntimeError(f"wandb.{name}: wandb is not installed (dpd conformance placeholder)")
