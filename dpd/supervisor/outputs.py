"""What a training left in its output directory (diffusion-pipe.md §5, §7.2).

Each job has its own ``output_dir``; the single ``YYYYmmdd_HH-MM-SS`` subdirectory that
appears there is the run dir. A saved model (``epochN``/``stepN``) is complete only when its
weights file exists and its transient ``tmp/`` is gone; ``latest`` names the newest complete
DeepSpeed checkpoint (written after all its files).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

RUN_DIR_RE = re.compile(r"^\d{8}_\d{2}-\d{2}-\d{2}$")
MODEL_DIR_RE = re.compile(r"^(epoch|step)(\d+)$")
CHECKPOINT_RE = re.compile(r"^global_step(\d+)$")
WEIGHT_FILES = (
    "adapter_model.safetensors",
    "lora.safetensors",
    "pytorch_lora_weights.safetensors",
    "model.safetensors",
)


@dataclass(frozen=True)
class SavedModel:
    name: str  # "epoch3" or "step100"
    kind: str  # "epoch" or "step"
    number: int
    path: Path
    mtime: float

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "epoch": self.number if self.kind == "epoch" else None,
            "step": self.number if self.kind == "step" else None,
            "path": str(self.path),
            "timestamp": datetime.fromtimestamp(self.mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def find_run_dirs(output_dir: Path) -> list[Path]:
    """Run dirs, oldest first (the names sort by time)."""
    try:
        entries = sorted(os.scandir(output_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [Path(e.path) for e in entries if e.is_dir() and RUN_DIR_RE.match(e.name)]


def latest_run_dir(output_dir: Path) -> Path | None:
    runs = find_run_dirs(output_dir)
    return runs[-1] if runs else None


def saved_models(run_dir: Path) -> list[SavedModel]:
    """Complete saved models, in the order they were written."""
    models: list[SavedModel] = []
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = MODEL_DIR_RE.match(entry.name)
        if not match or not entry.is_dir():
            continue
        path = Path(entry.path)
        if (path / "tmp").exists() or not any((path / f).exists() for f in WEIGHT_FILES):
            continue
        models.append(SavedModel(entry.name, match[1], int(match[2]), path, entry.stat().st_mtime))
    return sorted(models, key=lambda m: (m.mtime, m.name))


def latest_checkpoint(run_dir: Path) -> str | None:
    """The tag in ``latest`` (e.g. ``global_step120``) if its directory exists."""
    try:
        tag = (run_dir / "latest").read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return tag if CHECKPOINT_RE.match(tag) and (run_dir / tag).is_dir() else None


def remove_signal_files(run_dir: Path) -> None:
    """A stale ``save_quit`` would make a resumed run quit after its first step."""
    for name in ("save", "save_quit"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
