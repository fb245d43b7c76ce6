"""Putting a finished clip into its dataset directory, the way diffusion-pipe reads it.

diffusion-pipe treats every file of a dataset directory as media (hidden and partial files
too) and pairs it with ``<stem>.txt``. So ffmpeg writes outside the dataset, in
``<preprocessed_root>/.dpd-work/<task_id>/`` (same file system, not a dataset: names with a
dot are not listed as datasets); the caption is written atomically first, then the clip is
fsynced and renamed in. A training that scans the directory at any moment sees either
nothing of the item, a caption alone (ignored), or the complete pair. Blocking: run in a
thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dpd.spool.atomic import fsync_dir, write_atomic

WORK_DIR = ".dpd-work"


def work_dir(preprocessed_root: Path, task_id: str) -> Path:
    return preprocessed_root / WORK_DIR / task_id


def fresh_work_dir(preprocessed_root: Path, task_id: str) -> Path:
    """An empty work directory (a previous attempt's leftovers are removed)."""
    path = work_dir(preprocessed_root, task_id)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def remove_work_dir(preprocessed_root: Path, task_id: str) -> None:
    shutil.rmtree(work_dir(preprocessed_root, task_id), ignore_errors=True)


def clear_work_dirs(preprocessed_root: Path) -> None:
    """Remove every work directory: at start, when no ffmpeg runs, what is there is partial
    output of interrupted runs (re-run from scratch) or of submits that never answered."""
    shutil.rmtree(preprocessed_root / WORK_DIR, ignore_errors=True)


def publish(made: Path, dataset_dir: Path, stem: str, prompt: str) -> tuple[Path, Path]:
    """Caption then media into ``dataset_dir``; returns (media path, caption path)."""
    dataset_dir.mkdir(parents=True, exist_ok=True)
    caption = dataset_dir / f"{stem}.txt"
    media = dataset_dir / f"{stem}{made.suffix}"
    write_atomic(caption, prompt.strip().encode() + b"\n")
    fd = os.open(made, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(made, media)
    fsync_dir(dataset_dir)
    return media, caption
