"""Durable preprocessing tasks: one directory per task under ``<state_dir>/preprocess/``.

    <state_dir>/preprocess/<task_id>/state.json    rewritten atomically (write_json_atomic)
    <state_dir>/preprocess/<task_id>/upload.<ext>  the stored upload, until the task ends
    <state_dir>/preprocess/.incoming/              uploads still arriving (removed on start)

Guarantees: a task id is never reused, across restarts too (the directory is created with
O_EXCL semantics and the counter resumes after the highest id on disk); state.json is the
old or the new state, never a mix. A task exists once its state.json does: a directory
without one is a submit that never answered (refused, or the daemon stopped while probing);
``abandon_task`` removes it at once, ``load_all`` after a crash. Such an id was never
given out, so its reuse after a restart is harmless. All methods block: call them through
asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dpd.spool.atomic import fsync_dir, write_json_atomic

log = logging.getLogger("dpd.preprocess")

ID_RE = re.compile(r"^preprocess_\d{8}_\d{2}(\d{6})$")
STATE_FILE = "state.json"
INCOMING = ".incoming"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TaskStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._next = 1
        self._write_locks: dict[str, threading.Lock] = {}
        self._written: dict[str, int] = {}

    def task_dir(self, task_id: str) -> Path:
        return self.root / task_id

    def load_all(self) -> dict[str, dict[str, Any]]:
        """Every readable task state; unreadable ones are logged and left alone, directories
        of submits that never answered are removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        states: dict[str, dict[str, Any]] = {}
        for entry in sorted(self.root.iterdir()):
            match = ID_RE.match(entry.name)
            if not match or not entry.is_dir():
                continue
            self._next = max(self._next, int(match[1]) + 1)
            if not (entry / STATE_FILE).exists():
                log.info("removing %s: its submit never answered", entry.name)
                shutil.rmtree(entry, ignore_errors=True)
                continue
            try:
                states[entry.name] = json.loads((entry / STATE_FILE).read_bytes())
            except (OSError, ValueError) as err:
                log.error("preprocess task %s has no readable state (%s); ignored", entry.name, err)
        return states

    def create_task_dir(self, sync: bool = True) -> tuple[str, Path]:
        """A fresh id and its (new, empty) directory; ``sync=False`` leaves the fsync to a
        later ``sync_task_dir``."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            with self._lock:
                counter = self._next
                self._next = counter % 999_999 + 1
            task_id = datetime.now(UTC).strftime("preprocess_%Y%m%d_%H") + f"{counter:06d}"
            path = self.task_dir(task_id)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            if sync:
                fsync_dir(self.root)
            return task_id, path

    def write_state(self, state: dict[str, Any]) -> None:
        """Write unless a newer ``version`` of this task is already on disk: a write whose
        awaiting coroutine was cancelled may still be running in its thread."""
        task_id = state["task_id"]
        with self._lock:
            lock = self._write_locks.setdefault(task_id, threading.Lock())
        with lock:
            if state.get("version", 0) < self._written.get(task_id, 0):
                return
            write_json_atomic(self.task_dir(task_id) / STATE_FILE, state)
            self._written[task_id] = state.get("version", 0)

    def staging_path(self) -> Path:
        return self.root / INCOMING / f"{secrets.token_hex(8)}.part"

    def clear_staging(self) -> None:
        shutil.rmtree(self.root / INCOMING, ignore_errors=True)

    def adopt_upload(self, staged: Path, task_id: str, extension: str, sync: bool = True) -> Path:
        """Move a fully received upload into its task directory (same file system);
        ``sync=False`` leaves the fsync to a later ``sync_task_dir``."""
        target = self.task_dir(task_id) / f"upload{extension}"
        staged.rename(target)
        if sync:
            fsync_dir(target.parent)
        return target

    def sync_task_dir(self, task_id: str) -> None:
        """The fsyncs ``create_task_dir`` and ``adopt_upload`` were told to leave."""
        fsync_dir(self.root)
        fsync_dir(self.task_dir(task_id))

    def abandon_task(self, task_id: str, stored: Path | None, staged: Path) -> None:
        """Undo ``create_task_dir`` (+ ``adopt_upload``) for an upload refused after all: the
        upload goes back to ``staged``, the directory (never given a state) is removed."""
        if stored is not None:
            with contextlib.suppress(FileNotFoundError):
                stored.rename(staged)
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)

    def remove_upload(self, state: dict[str, Any]) -> None:
        upload = state.get("upload", {}).get("path")
        if upload:
            with contextlib.suppress(FileNotFoundError):
                Path(upload).unlink()
