"""Which spec a requeued fleet job runs with (FLEET.md §8.2 T11, §10).

T11 requeues a job lost with its node to resume from its last checkpoint
(``resume_from_checkpoint = true``). A run lost before it saved its first checkpoint has
nothing to resume from, and the trainer refuses a resume without one
(``checkpoint_missing``): such a job resumes the newest earlier run that has one, by name,
or starts again from the beginning if none has. Decided by the node that takes the job, on
its view of the shared output directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpd.supervisor import outputs


def runnable_spec(spec: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    """``spec`` unchanged, unless it asks to resume the newest run and that run has no
    checkpoint: then the newest run that has one, named, or no resume at all."""
    if spec.get("resume_from_checkpoint") is not True:
        return spec
    runs = outputs.find_run_dirs(output_dir)
    for index, run_dir in enumerate(reversed(runs)):
        if outputs.latest_checkpoint(run_dir) is not None:
            return spec if index == 0 else {**spec, "resume_from_checkpoint": run_dir.name}
    return {**spec, "resume_from_checkpoint": None}


def resumed_run(spec: dict[str, Any], output_dir: Path) -> str | None:
    """The run directory ``spec`` (as ``runnable_spec`` made it) resumes, by name; None
    for a fresh run."""
    wanted = spec.get("resume_from_checkpoint")
    if isinstance(wanted, str):
        return wanted
    if wanted is True:
        run_dir = outputs.latest_run_dir(output_dir)
        return run_dir.name if run_dir is not None else None
    return None


def has_checkpoint(output_dir: Path) -> bool:
    """Some run of the task saved a checkpoint: a resume (T12) has something to start from."""
    return any(outputs.latest_checkpoint(r) is not None for r in outputs.find_run_dirs(output_dir))
