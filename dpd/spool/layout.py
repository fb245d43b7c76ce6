"""Where things live under the spool directory (DESIGN §3 "The spool").

<spool>/incoming/          users drop files here (group-writable, setgid)
<spool>/rejected/          refused files + <name>.error.json
<spool>/jobs/<task_id>/    one directory per accepted job
<spool>/jobs/.new-*        a job directory being built (renamed into place when complete)
<spool>/quarantine/        job directories the daemon could not read, moved aside
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dpd.errors import ConfigError

JOB_FILE = "job.json"
STATE_FILE = "state.json"
CONFIG_TOML = "config.toml"
DATASET_TOML = "dataset.toml"
TRAIN_LOG = "train.log"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
NEW_JOB_PREFIX = ".new-"
ACCEPTED_SUFFIXES = (".json", ".yaml", ".yml")
IGNORED_SUFFIXES = (".tmp", ".part")


@dataclass(frozen=True)
class SpoolLayout:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def job_dir(self, task_id: str) -> Path:
        return self.jobs / task_id

    def ensure(self) -> None:
        """Create the directories; ``incoming/`` is group-writable and setgid so dropped
        files keep the spool's group. All must share one file system (renames between them)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for path, mode in (
            (
                self.incoming,
                0o3770,
            ),  # setgid: files keep the group; sticky: no deleting others' drops
            (self.rejected, 0o2750),
            (self.jobs, 0o2750),
            (self.quarantine, 0o700),
        ):
            if not path.exists():
                path.mkdir(mode=mode)
                os.chmod(path, mode)  # mkdir's mode is masked by the umask
        devices = {p.stat().st_dev for p in (self.incoming, self.rejected, self.jobs)}
        if len(devices) != 1:
            raise ConfigError(
                f"{self.root}: incoming/, rejected/ and jobs/ must be on one file system"
            )


def is_candidate(name: str) -> bool:
    """A name in incoming/ that is a job file to ingest (not a dot-file or a partial write)."""
    if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
        return False
    return name.endswith(ACCEPTED_SUFFIXES)


def document_format(name: str) -> str:
    return "json" if name.endswith(".json") else "yaml"
