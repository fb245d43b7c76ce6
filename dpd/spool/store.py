"""The durable job store: one directory per job under ``<spool>/jobs/``.

Guarantees:
- A job exists completely or not at all. Its directory is built under a ``.new-*`` name
  (job.json, state.json, config.toml, dataset.toml, events.jsonl, each fsynced), then renamed
  into place and the parent fsynced. ``load`` deletes unfinished ``.new-*`` directories.
- ``state.json`` is only ever replaced through ``write_atomic``. A status changes only
  through ``transition``, one compare-and-set: it checks the status it expects and the edge
  (``dpd.jobs.states``), writes, and returns the status event with ``previous`` filled in by
  the store; a lost race is a ``Conflict`` (409), never a half-done change.
- Every submission carries an identity (source, name, content hash, uid, inode, mtime); a
  spool file re-ingested after a crash between "job durable" and "file removed" maps to the
  job it already became instead of a second job.
- Listing and lookup use an in-memory index, independent of the number of job directories.
- Every event of a task gets the next ``seq`` (gapless, from 1) and is appended to
  ``events.jsonl`` before it is handed to anyone. A fleet job is the exception
  (FLEET.md §9.7): its seqs go on across the hosts its attempts ran on, so a host's file
  starts, or goes on, after the seqs other hosts published (``first_seq``,
  ``set_next_seq``); within one file seqs still only grow.

Blocking: every method does file I/O or may; call them from a worker thread
(``asyncio.to_thread``). The store is thread-safe; writes to one job are serialised.

Not trusted: the contents of job directories at load time. A directory whose job.json or
state.json cannot be read is moved to ``<spool>/quarantine/`` and logged, never guessed at.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from dpd.errors import Conflict, DpdError, InsufficientResources, NotFound
from dpd.jobs.dpconfig import render_configs
from dpd.jobs.spec import JobSpec
from dpd.jobs.states import Status, can_transition
from dpd.spool import layout as names
from dpd.spool.atomic import (
    append_line,
    fsync_dir,
    json_bytes,
    write_json_atomic,
)
from dpd.spool.jobdir import FileSpec, JobDirBuild
from dpd.spool.jsontail import field_bytes, json_lines_backwards, record_bytes
from dpd.spool.layout import SpoolLayout

log = logging.getLogger("dpd.store")
# New jobs are refused while the spool's file system has less free: the running jobs' logs,
# events and state need the room, and a state file that cannot be written stops dpd
# (reliability.md AF5).
SPOOL_MIN_FREE: Final = 256 * 1024 * 1024

SCHEMA_VERSION = 1
GENERATED_ID_RE = re.compile(r"^train_\d{8}_\d{2}(\d{6})$")


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


@dataclass(frozen=True)
class StatusEvent:
    """A status change as ``transition`` made it: the event to announce (DESIGN §5 ``status``
    data: ``status``, ``previous`` and the caller's extras) and the state written."""

    task_id: str
    status: Status
    previous: Status | None  # None: no status event was ever announced (a crash)
    extra: Mapping[str, Any]
    state: Mapping[str, Any]

    @property
    def data(self) -> dict[str, Any]:
        previous = None if self.previous is None else self.previous.value
        return {"status": self.status.value, "previous": previous, **self.extra}


@dataclass(frozen=True)
class Submission:
    """Where a job came from; ``key`` identifies the very same drop across a crash."""

    source: str  # "spool" | "rest" | "cli"
    name: str = ""  # spool file name, or API key id
    sha256: str = ""
    uid: int | None = None
    inode: int | None = None
    mtime_ns: int | None = None

    @property
    def key(self) -> str | None:
        if self.source != "spool":
            return None
        return f"{self.name}:{self.sha256}:{self.uid}:{self.inode}:{self.mtime_ns}"


class JobStore:
    def __init__(
        self, layout: SpoolLayout, output_root: Path, node: str, min_free: int = SPOOL_MIN_FREE
    ) -> None:
        self.layout = layout
        self.node = node
        self.output_root = output_root
        self.min_free = min_free
        self._states: dict[str, dict[str, Any]] = {}
        self._specs: dict[str, JobSpec] = {}
        self._by_submission: dict[str, str] = {}
        self._event_seq: dict[str, int] = {}
        self._lock = threading.Lock()
        self._job_locks: dict[str, threading.Lock] = {}
        self._next_counter = 1
        self._next_submitted_seq = 1
        self._generation = 0  # bumped under _lock by every change to _states
        # (task_id, last status its events.jsonl announced) where state.json moved on since
        self._unannounced: list[tuple[str, str | None]] = []

    @property
    def generation(self) -> int:
        """Changes whenever a state is added or replaced: readers cache views keyed by it
        (read it before ``states()``, so a cached view is never older than its key)."""
        return self._generation

    # ----------------------------------------------------------------- loading

    def load(self) -> list[str]:
        """Read every job directory into the index; returns the task ids loaded. Removes
        half-built ``.new-*`` directories and quarantines unreadable ones."""
        self.layout.jobs.mkdir(parents=True, exist_ok=True)
        self._unannounced = []
        loaded: list[str] = []
        for entry in sorted(os.scandir(self.layout.jobs), key=lambda e: e.name):
            if entry.name.startswith(names.NEW_JOB_PREFIX):
                log.warning("removing unfinished job directory %s left by a crash", entry.name)
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            if self._load_one(Path(entry.path)):
                loaded.append(entry.name)
        with self._lock:  # the index iterates in submission order from here on
            ordered = sorted(self._states.items(), key=lambda i: i[1].get("submitted_seq", 0))
            self._states = dict(ordered)
            self._generation += 1
        fsync_dir(self.layout.jobs)
        return loaded

    def _load_one(self, job_dir: Path) -> bool:
        task_id = job_dir.name
        try:
            job = json.loads((job_dir / names.JOB_FILE).read_bytes())
            spec = JobSpec.from_dict(job["spec"])
            state = json.loads((job_dir / names.STATE_FILE).read_bytes())
            if state.get("task_id") != task_id:
                raise ValueError(f"state.json names task {state.get('task_id')!r}")
            Status(state["status"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            self._quarantine(job_dir, f"{type(err).__name__}: {err}")
            return False
        last_seq, announced = _events_end(job_dir / names.EVENTS_FILE)
        with self._lock:
            self._specs[task_id] = spec
            self._states[task_id] = state
            self._event_seq[task_id] = last_seq
            if announced != state["status"]:
                self._unannounced.append((task_id, announced))
            submission_key = Submission(**job.get("submission", {"source": "?"})).key
            if submission_key:
                self._by_submission[submission_key] = task_id
            match = GENERATED_ID_RE.match(task_id)
            if match:
                self._next_counter = max(self._next_counter, int(match[1]) + 1)
            self._next_submitted_seq = max(
                self._next_submitted_seq, int(state.get("submitted_seq", 0)) + 1
            )
        return True

    def take_unannounced(self) -> list[StatusEvent]:
        """Tasks whose state.json holds a status no event announced: a crash came between
        the durable state write and the event's append. Returns their status events once
        (``previous``: what the events last announced, ``recovered``: true); the caller
        announces them, so a subscriber never sees a task stuck in a status it has left."""
        with self._lock:
            pending, self._unannounced = self._unannounced, []
            found = [(t, a, dict(self._states[t])) for t, a in pending if t in self._states]
        return [_recovered(task_id, announced, state) for task_id, announced, state in found]

    def _quarantine(self, job_dir: Path, reason: str) -> None:
        self.layout.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.layout.quarantine / f"{job_dir.name}.{int(time.time())}"
        log.error("job directory %s is unreadable (%s); moved to %s", job_dir, reason, target)
        os.rename(job_dir, target)
        (target / "QUARANTINE_REASON").write_text(reason + "\n")

    # ---------------------------------------------------------------- creating

    def find_submission(self, submission: Submission) -> str | None:
        key = submission.key
        with self._lock:
            return self._by_submission.get(key) if key else None

    def create_job(
        self, spec: JobSpec, submission: Submission, first_seq: int = 1
    ) -> dict[str, Any]:
        """Make the job durable and return its state. ``Conflict`` if the client's task_id
        is taken (by another submission). ``first_seq``: the seq of its first event (a fleet
        job taken over from other hosts numbers on from theirs)."""
        (result,) = self.create_jobs([(spec, submission)], first_seq)
        if isinstance(result, DpdError):
            raise result
        return result

    def check_room(self) -> None:
        """``InsufficientResources`` (507) while the spool's file system has less than
        ``min_free`` bytes free (for unprivileged users: root's reserve does not count)."""
        free = shutil.disk_usage(self.layout.root).free
        if free < self.min_free:
            raise InsufficientResources(
                f"the spool's file system has {free // 2**20} MiB free; dpd keeps "
                f"{self.min_free // 2**20} MiB for the jobs it runs and takes no new one",
                {
                    "path": str(self.layout.root),
                    "free_bytes": free,
                    "required_free_bytes": self.min_free,
                    "recommended_action": "free space on the spool's file system",
                },
            )

    def create_jobs(
        self, requests: Sequence[tuple[JobSpec, Submission]], first_seq: int = 1
    ) -> list[dict[str, Any] | DpdError]:
        """Make several jobs durable at once (group commit: their directories are built and
        synced, renamed into place, then ``jobs/`` is fsynced once for all of them). One
        result per request, in order: the job's state, or the DpdError that refused it
        (``Conflict``: the client's task_id is taken; ``ConfigRenderError``). A failed write
        raises for the whole batch: none of its jobs is then known to exist; so does
        ``check_room``'s refusal, before anything is written."""
        self.check_room()
        results: list[dict[str, Any] | DpdError | None] = [None] * len(requests)
        todo = list(enumerate(requests))
        for _ in range(1000):
            todo = self._create_batch(todo, results, first_seq)
            if not todo:
                return cast(list[dict[str, Any] | DpdError], results)  # every one settled
        raise RuntimeError("could not find a free task id")

    def _create_batch(
        self,
        todo: Sequence[tuple[int, tuple[JobSpec, Submission]]],
        results: list[dict[str, Any] | DpdError | None],
        first_seq: int,
    ) -> list[tuple[int, tuple[JobSpec, Submission]]]:
        """One round of ``create_jobs``; returns the requests whose generated id turned out
        to be taken by a directory (they go again with the next number)."""
        retry: list[tuple[int, tuple[JobSpec, Submission]]] = []
        builds: list[tuple[int, _NewJob]] = []
        placed: list[tuple[int, _NewJob]] = []
        try:
            for index, request in todo:
                try:
                    builds.append((index, self._start_job(*request, first_seq)))
                except DpdError as err:
                    results[index] = err
            JobDirBuild.sync_all([job.build for _, job in builds])
            for index, job in builds:
                if job.build.place():
                    placed.append((index, job))
                elif job.generated_id:
                    retry.append((index, (job.requested, job.submission)))
                else:
                    results[index] = _taken(job.state["task_id"])
            if placed:
                fsync_dir(self.layout.jobs)
        except BaseException:
            for _, job in builds:
                job.build.discard()
            raise
        for index, job in placed:
            self._register(job)
            results[index] = dict(job.state)
        return retry

    def _start_job(self, spec: JobSpec, submission: Submission, first_seq: int) -> _NewJob:
        """Claim an id and a submission number, write the job's files under ``.new-*``."""
        requested = spec
        generated = spec.task_id is None
        task_id = self._generate_id() if generated else str(spec.task_id)
        if generated:
            spec = spec.with_task_id(task_id)
        with self._lock:
            if task_id in self._states:
                raise _taken(task_id)
            submitted_seq = self._next_submitted_seq
            self._next_submitted_seq += 1
        state = self._initial_state(
            spec, task_id, os.path.join(self.layout.jobs, task_id), submitted_seq
        )
        event = self._event_record(
            task_id, first_seq, "status", {"status": "queued", "previous": None}
        )
        files = self._job_files(spec, state, submission, event)
        build = JobDirBuild.start(self.layout.jobs, task_id, files)
        return _NewJob(requested, spec, submission, state, build, generated, first_seq)

    def _register(self, job: _NewJob) -> None:
        task_id = job.state["task_id"]
        with self._lock:
            self._states[task_id] = job.state
            self._generation += 1
            self._specs[task_id] = job.spec
            self._event_seq[task_id] = job.first_seq
            if job.submission.key:
                self._by_submission[job.submission.key] = task_id

    def _generate_id(self) -> str:
        with self._lock:
            counter = self._next_counter
            self._next_counter = counter % 999_999 + 1
        return datetime.now(UTC).strftime("train_%Y%m%d_%H") + f"{counter:06d}"

    def _job_files(
        self,
        spec: JobSpec,
        state: dict[str, Any],
        submission: Submission,
        event: dict[str, Any],
    ) -> list[FileSpec]:
        """What a new job directory holds (DESIGN §3), rendered before anything is written
        so that a config that cannot be rendered leaves nothing behind."""
        config_text, dataset_text = render_configs(
            spec, output_dir=state["output_dir"], dataset_toml=state["config"]["dataset"]
        )
        job = {
            "schema_version": SCHEMA_VERSION,
            "task_id": state["task_id"],
            "accepted_at": state["created_at"],
            "submission": asdict(submission),
            "spec": spec.to_dict(),
        }
        return [
            (names.JOB_FILE, json_bytes(job), 0o640),
            (names.STATE_FILE, json_bytes(state), 0o640),
            (names.CONFIG_TOML, config_text.encode(), 0o600),
            (names.DATASET_TOML, dataset_text.encode(), 0o600),
            (names.EVENTS_FILE, record_bytes(event) + b"\n", 0o640),
        ]

    def _initial_state(
        self, spec: JobSpec, task_id: str, job_dir: str, submitted_seq: int
    ) -> dict[str, Any]:
        now = utc_now()
        output_dir = os.path.join(self.output_root, task_id)
        config = dict(spec.config)
        config["output_dir"] = output_dir
        config["dataset"] = os.path.join(job_dir, names.DATASET_TOML)
        return {
            "schema_version": SCHEMA_VERSION,
            "task_id": task_id,
            "status": Status.QUEUED.value,
            "model_type": spec.model_type,
            "description": spec.description,
            "priority": spec.priority,
            "submitted_seq": submitted_seq,
            "required_gpus": spec.required_gpus,
            "gpu_id": spec.gpu_ids[0] if spec.gpu_ids else None,
            "gpu_ids": list(spec.gpu_ids) if spec.gpu_ids else None,
            "gpu_name": None,
            "config": config,
            "dataset": spec.dataset,
            "output_dir": output_dir,
            "logs_path": os.path.join(job_dir, names.TRAIN_LOG),
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "ended_at": None,
            "progress": None,
            "metrics": None,
            "checkpoints": [],
            "error": None,
            "run": 0,
        }

    # ----------------------------------------------------------------- reading

    def exists(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._states

    def get(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            state = self._states.get(task_id)
            if state is None:
                raise NotFound(f"task {task_id} does not exist", {"task_id": task_id})
            return dict(state)

    def spec(self, task_id: str) -> JobSpec:
        with self._lock:
            spec = self._specs.get(task_id)
        if spec is None:
            raise NotFound(f"task {task_id} does not exist", {"task_id": task_id})
        return spec

    def task_ids(self) -> list[str]:
        with self._lock:
            return list(self._states)

    def states(
        self, predicate: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """States in submission order, newest last; filtered by ``predicate``."""
        with self._lock:
            items = list(self._states.values())  # kept in submission order (see load)
        if predicate is not None:
            items = [s for s in items if predicate(s)]
        return items

    def count_by_status(self) -> dict[str, int]:
        counts = {status.value: 0 for status in Status}
        with self._lock:
            for state in self._states.values():
                counts[state["status"]] = counts.get(state["status"], 0) + 1
        return counts

    # ----------------------------------------------------------------- writing

    def _job_lock(self, task_id: str) -> threading.Lock:
        with self._lock:
            return self._job_locks.setdefault(task_id, threading.Lock())

    def update_state(
        self, task_id: str, changes: dict[str, Any] | Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Apply ``changes`` (a dict merged at the top level, or a function mutating a copy)
        and write state.json atomically. Never a status change: that is ``transition``."""
        with self._job_lock(task_id):
            state = self.get(task_id)
            before = state["status"]
            if callable(changes):
                changes(state)
            else:
                state.update(changes)
            if state["status"] != before:
                raise ValueError("a status changes only through JobStore.transition")
            self._write_state(task_id, state)
            return dict(state)

    def transition(
        self,
        task_id: str,
        expect: Status | Collection[Status],
        to: Status,
        *,
        announce: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> StatusEvent:
        """Compare-and-set: if the task's status is ``expect`` (or one of them) and the edge
        to ``to`` is allowed, write ``to`` and ``fields`` in one state.json write and return
        the status event (``announce``: extra data for it). ``Conflict`` otherwise, with the
        status found: the caller lost a race (a stop and a launch, two stops) and nothing
        was written."""
        expected = frozenset({expect} if isinstance(expect, Status) else expect)
        with self._job_lock(task_id):
            state = self.get(task_id)
            current = Status(state["status"])
            if current not in expected or not can_transition(current, to):
                raise Conflict(
                    f"task {task_id} is {current.value}; it cannot become {to.value} now",
                    {"task_id": task_id, "status": current.value, "wanted": to.value},
                )
            state.update(fields)
            state["status"] = to.value
            self._write_state(task_id, state)
        return StatusEvent(task_id, to, current, dict(announce or {}), dict(state))

    def _write_state(self, task_id: str, state: dict[str, Any]) -> None:
        state["updated_at"] = utc_now()
        write_json_atomic(self.layout.job_dir(task_id) / names.STATE_FILE, state, 0o640)
        with self._lock:
            self._states[task_id] = state
            self._generation += 1

    def append_event(self, task_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        """Number the event and make it durable in events.jsonl; returns the record."""
        with self._job_lock(task_id):
            with self._lock:
                if task_id not in self._states:
                    raise NotFound(f"task {task_id} does not exist", {"task_id": task_id})
                seq = self._event_seq.get(task_id, 0) + 1
                self._event_seq[task_id] = seq
            record = self._event_record(task_id, seq, kind, data)
            append_line(
                self.layout.job_dir(task_id) / names.EVENTS_FILE,
                record_bytes(record),
            )
            return record

    def append_events(
        self, task_id: str, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """Number several events of one task and make them durable with one write and one
        fsync (a chatty trainer must not cost an fsync per event)."""
        with self._job_lock(task_id):
            with self._lock:
                if task_id not in self._states:
                    raise NotFound(f"task {task_id} does not exist", {"task_id": task_id})
                first = self._event_seq.get(task_id, 0) + 1
                self._event_seq[task_id] = first + len(items) - 1
            records = [
                self._event_record(task_id, first + index, kind, data)
                for index, (kind, data) in enumerate(items)
            ]
            append_line(
                self.layout.job_dir(task_id) / names.EVENTS_FILE,
                b"\n".join(record_bytes(r) for r in records),
            )
            return records

    def set_next_seq(self, task_id: str, seq: int) -> None:
        """The task's next event is numbered at least ``seq`` (FLEET.md §9.7: a host that
        takes a fleet job back numbers on from what other hosts published meanwhile).
        Nothing is written: the next event on disk carries the jump."""
        with self._job_lock(task_id), self._lock:
            if task_id not in self._states:
                raise NotFound(f"task {task_id} does not exist", {"task_id": task_id})
            self._event_seq[task_id] = max(self._event_seq.get(task_id, 0), seq - 1)

    def last_event_seq(self, task_id: str) -> int:
        with self._lock:
            return self._event_seq.get(task_id, 0)

    def read_events(self, task_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
        """The events after ``after_seq``, oldest first: read from the end of events.jsonl
        (seqs grow down the file), so catching up costs what was missed."""
        self.get(task_id)
        newer: list[dict[str, Any]] = []
        for event in json_lines_backwards(self.layout.job_dir(task_id) / names.EVENTS_FILE):
            if int(event.get("seq", 0)) <= after_seq:
                break
            newer.append(event)
        newer.reverse()
        return newer

    def append_metrics(self, task_id: str, records: Iterable[dict[str, Any]]) -> None:
        lines = [record_bytes(r) for r in records]
        if lines:
            append_line(self.layout.job_dir(task_id) / names.METRICS_FILE, b"\n".join(lines))

    def _event_record(
        self, task_id: str, seq: int, kind: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        return event_record(self.node, task_id, seq, kind, data)


def event_record(
    node: str, task_id: str, seq: int, kind: str, data: dict[str, Any]
) -> dict[str, Any]:
    """The payload of DESIGN §5: what events.jsonl holds and every outlet sends."""
    return {
        "type": kind,
        "task_id": task_id,
        "node": node,
        "seq": seq,
        "timestamp": time.time(),
        "data": data,
    }


def _events_end(path: Path) -> tuple[int, str | None]:
    """The last event's seq and the status the last status event announced, read from the
    end of events.jsonl (which holds every log line of the job's runs)."""
    last = next(json_lines_backwards(path), None)
    seq = int(last.get("seq", 0)) if isinstance(last, dict) else 0
    for event in json_lines_backwards(path, contains=field_bytes("type", "status")):
        if isinstance(event, dict) and event.get("type") == "status":
            data = event.get("data")
            if isinstance(data, dict):
                return seq, data.get("status")
    return seq, None


@dataclass
class _NewJob:
    """A job of a ``create_jobs`` batch whose directory is being built."""

    requested: JobSpec  # as submitted: without the generated task_id
    spec: JobSpec
    submission: Submission
    state: dict[str, Any]
    build: JobDirBuild
    generated_id: bool
    first_seq: int


def _recovered(task_id: str, announced: str | None, state: dict[str, Any]) -> StatusEvent:
    extra: dict[str, Any] = {"recovered": True}
    if state.get("error"):
        extra["error"] = state["error"]
    previous = Status(announced) if announced in {s.value for s in Status} else None
    return StatusEvent(task_id, Status(state["status"]), previous, extra, state)


def _taken(task_id: str) -> Conflict:
    return Conflict(f"task {task_id} already exists", {"task_id": task_id})
