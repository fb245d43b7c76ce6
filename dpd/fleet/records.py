"""The fleet's records in NATS KV, as typed frozen values (FLEET.md §7). Pure.

Three records: the job record (bucket ``dpd_jobs``, key ``job.<enc(task_id)>``), the node
registry entry (``dpd_nodes``, ``node.<node>``) and the liveness entry (``dpd_alive``,
``node.<node>``). Each has ``to_dict``/``from_dict`` (JSON-ready dicts) and
``to_json``/``from_json`` (UTF-8 bytes, what KV stores).

What ``from_dict`` guarantees: every field has its documented type, enums hold known values,
and a record of a version this code does not understand raises ``UnknownVersion`` (a node
ignores such a job rather than misread it, FLEET.md §12 case 23); anything else malformed
raises ``RecordError`` naming the field. Fields this version does not know are dropped
(a newer writer adding a field does not make this reader fail).

The transitions between job states (T1–T14) are in ``dpd.fleet.transitions``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from dpd.fleet.jsonfields import (
    Exported,
    as_object,
    dump_json,
    enum_field,
    int_list,
    load_json,
    optional,
    optional_record,
    record_list,
    required,
    string_table,
    sub_record,
)
from dpd.fleet.jsonfields import RecordError as RecordError  # callers catch it from here
from dpd.fleet.jsonfields import UnknownVersion as UnknownVersion
from dpd.jobs.spec import TASK_ID_RE

RECORD_VERSION: Final = 1
NODE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
JOB_KEY_PREFIX: Final = "job."
NODE_KEY_PREFIX: Final = "node."
MAX_DECLINED: Final = 16
MAX_HISTORY: Final = 16


class JobState(StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


TERMINAL: Final = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.STOPPED})
# a trainer may exist: the owner passed the fence (T3)
SPAWNABLE: Final = frozenset({JobState.STARTING, JobState.RUNNING, JobState.STOPPING})


class Desired(StrEnum):
    RUN = "run"
    STOP = "stop"
    FORCE_STOP = "force_stop"


class FenceMode(StrEnum):
    HOLD = "hold"
    REQUEUE = "requeue"


# ------------------------------------------------------------------------------ keys


def enc(task_id: str) -> str:
    """The KV key of a task: ``job.`` + the id with ``.`` written as ``=`` (FLEET.md §6.1;
    ``=`` never occurs in a task id, so the mapping is reversible)."""
    if not TASK_ID_RE.match(task_id):
        raise RecordError(f"task_id {task_id!r} is not a valid task id")
    return JOB_KEY_PREFIX + task_id.replace(".", "=")


def dec(key: str) -> str:
    """The task id of a ``job.`` key (inverse of ``enc``)."""
    if not key.startswith(JOB_KEY_PREFIX):
        raise RecordError(f"{key!r} is not a job key")
    task_id = key[len(JOB_KEY_PREFIX) :].replace("=", ".")
    if not TASK_ID_RE.match(task_id):
        raise RecordError(f"{key!r} does not hold a valid task id")
    return task_id


def node_key(node: str) -> str:
    if not NODE_NAME_RE.match(node):
        raise RecordError(f"node name {node!r} must match {NODE_NAME_RE.pattern}")
    return NODE_KEY_PREFIX + node


def iso(unix: float) -> str:
    """Wall-clock time as written in records: UTC, milliseconds, ``Z``."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _check_version(d: Mapping[str, Any], where: str) -> None:
    version = required(d, "v", int, where)
    if version != RECORD_VERSION:
        raise UnknownVersion(f"{where}: record version {version} (this dpd reads {RECORD_VERSION})")


# ------------------------------------------------------------------ job record parts


@dataclass(frozen=True)
class Constraints(Exported):
    """Where a job may run (FLEET.md §9.1.1 step 1)."""

    required_gpus: int
    filesystem_domain: str
    node: str | None = None
    gpu_ids: tuple[int, ...] | None = None
    min_memory_mb: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, where: str = "constraints") -> Constraints:
        d = as_object(d, where)
        return cls(
            required_gpus=required(d, "required_gpus", int, where),
            filesystem_domain=required(d, "filesystem_domain", str, where),
            node=optional(d, "node", str, where),
            gpu_ids=int_list(d, "gpu_ids", where),
            min_memory_mb=optional(d, "min_memory_mb", int, where),
            labels=string_table(d, "labels", where),
        )

    @property
    def needed(self) -> int:
        """GPUs the job takes (as ``scheduler.QueuedJob.needed``)."""
        return len(set(self.gpu_ids)) if self.gpu_ids else max(1, self.required_gpus)


@dataclass(frozen=True)
class Identity(Exported):
    """A spool file's identity (``SubmittedBy.identity``): a re-ingest finds its own record."""

    name: str = ""
    sha256: str = ""
    uid: int | None = None
    inode: int | None = None
    mtime_ns: int | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "identity") -> Identity:
        d = as_object(d, where)
        return cls(
            name=required(d, "name", str, where),
            sha256=required(d, "sha256", str, where),
            uid=optional(d, "uid", int, where),
            inode=optional(d, "inode", int, where),
            mtime_ns=optional(d, "mtime_ns", int, where),
        )


@dataclass(frozen=True)
class SubmittedBy(Exported):
    node: str
    source: str  # rest | spool | cli | nats
    key_id: str | None = None
    identity: Identity = field(default_factory=Identity)

    @classmethod
    def from_dict(cls, d: Any, where: str = "submitted_by") -> SubmittedBy:
        d = as_object(d, where)
        return cls(
            node=required(d, "node", str, where),
            source=required(d, "source", str, where),
            key_id=optional(d, "key_id", str, where),
            identity=sub_record(d, "identity", Identity.from_dict, where),
        )


@dataclass(frozen=True)
class Fence(Exported):
    """The claimer's own fence contract (FLEET.md §9.4); reapers act on it, never on
    their own settings. ``deadline_s`` is None in hold mode."""

    mode: FenceMode = FenceMode.HOLD
    deadline_s: float | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "fence") -> Fence:
        d = as_object(d, where)
        deadline = optional(d, "deadline_s", (int, float), where)
        return cls(enum_field(d, "mode", FenceMode, where), float(deadline) if deadline else None)


@dataclass(frozen=True)
class Owner(Exported):
    node: str
    instance: str
    boot_id: str
    machine_id: str
    fence: Fence
    gpus: tuple[int, ...]
    claimed_at: str
    port: int | None = None
    run: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "owner") -> Owner:
        d = as_object(d, where)
        return cls(
            node=required(d, "node", str, where),
            instance=required(d, "instance", str, where),
            boot_id=required(d, "boot_id", str, where),
            machine_id=required(d, "machine_id", str, where),
            fence=sub_record(d, "fence", Fence.from_dict, where),
            gpus=int_list(d, "gpus", where) or (),
            claimed_at=required(d, "claimed_at", str, where),
            port=optional(d, "port", int, where),
            run=optional(d, "run", dict, where),
        )


@dataclass(frozen=True)
class Lost(Exported):
    node: str
    since: str
    observed_by: str

    @classmethod
    def from_dict(cls, d: Any, where: str = "lost") -> Lost:
        d = as_object(d, where)
        return cls(
            required(d, "node", str, where),
            required(d, "since", str, where),
            required(d, "observed_by", str, where),
        )


@dataclass(frozen=True)
class Declined(Exported):
    node: str
    reason: str
    at: str

    @classmethod
    def from_dict(cls, d: Any, where: str = "declined") -> Declined:
        d = as_object(d, where)
        return cls(
            required(d, "node", str, where),
            required(d, "reason", str, where),
            required(d, "at", str, where),
        )


@dataclass(frozen=True)
class HistoryEntry(Exported):
    attempt: int
    node: str
    outcome: str  # completed | failed | stopped | claim_expired | declined | node_lost | ...
    at: str

    @classmethod
    def from_dict(cls, d: Any, where: str = "history") -> HistoryEntry:
        d = as_object(d, where)
        return cls(
            required(d, "attempt", int, where),
            required(d, "node", str, where),
            required(d, "outcome", str, where),
            required(d, "at", str, where),
        )


@dataclass(frozen=True)
class Result(Exported):
    status: str
    ended_at: str
    error: dict[str, Any] | None = None
    last_checkpoint: str | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str = "result") -> Result:
        d = as_object(d, where)
        return cls(
            status=required(d, "status", str, where),
            ended_at=required(d, "ended_at", str, where),
            error=optional(d, "error", dict, where),
            last_checkpoint=optional(d, "last_checkpoint", str, where),
        )

    @property
    def reason(self) -> str | None:
        return str(self.error.get("reason")) if self.error and self.error.get("reason") else None


# -------------------------------------------------------------------- the job record


@dataclass(frozen=True)
class JobRecord(Exported):
    """One job, fleet-wide (FLEET.md §7.1). ``attempt`` is the fencing token: only a claim
    (T2) raises it. ``spec`` is None once the janitor made the record a tombstone (T14)."""

    task_id: str
    state: JobState
    constraints: Constraints
    submitted_at: str
    submitted_by: SubmittedBy
    spec: dict[str, Any] | None
    updated_by: str
    updated_at: str
    desired: Desired = Desired.RUN
    attempt: int = 0
    requeues: int = 0
    owner: Owner | None = None
    priority: int = 0
    seq: int = 0
    log_head: tuple[dict[str, Any], ...] = ()
    head_published: bool = False
    progress: dict[str, Any] | None = None
    lost: Lost | None = None
    declined: tuple[Declined, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    result: Result | None = None
    v: int = RECORD_VERSION

    @property
    def key(self) -> str:
        return enc(self.task_id)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_json(self) -> bytes:
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "job") -> JobRecord:
        d = as_object(d, where)
        _check_version(d, where)
        task_id = required(d, "task_id", str, where)
        if not TASK_ID_RE.match(task_id):
            raise RecordError(f"{where}.task_id: {task_id!r} is not a valid task id")
        log_head = required(d, "log_head", list, where)
        if not all(isinstance(e, dict) for e in log_head):
            raise RecordError(f"{where}.log_head: expected a list of events")
        return cls(
            task_id=task_id,
            state=enum_field(d, "state", JobState, where),
            desired=enum_field(d, "desired", Desired, where),
            attempt=required(d, "attempt", int, where),
            requeues=required(d, "requeues", int, where),
            owner=optional_record(d, "owner", Owner.from_dict, where),
            constraints=sub_record(d, "constraints", Constraints.from_dict, where),
            priority=required(d, "priority", int, where),
            submitted_at=required(d, "submitted_at", str, where),
            submitted_by=sub_record(d, "submitted_by", SubmittedBy.from_dict, where),
            spec=optional(d, "spec", dict, where),
            seq=required(d, "seq", int, where),
            log_head=tuple(log_head),
            head_published=required(d, "head_published", bool, where),
            progress=optional(d, "progress", dict, where),
            lost=optional_record(d, "lost", Lost.from_dict, where),
            declined=record_list(d, "declined", Declined.from_dict, where),
            history=record_list(d, "history", HistoryEntry.from_dict, where),
            result=optional_record(d, "result", Result.from_dict, where),
            updated_by=required(d, "updated_by", str, where),
            updated_at=required(d, "updated_at", str, where),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> JobRecord:
        return cls.from_dict(load_json(data, "job"))


# ------------------------------------------------------------------ registry, alive


@dataclass(frozen=True)
class GpuInfo(Exported):
    id: int
    name: str
    memory_total: int
    uuid: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str = "gpu") -> GpuInfo:
        d = as_object(d, where)
        return cls(
            required(d, "id", int, where),
            required(d, "name", str, where),
            required(d, "memory_total", int, where),
            required(d, "uuid", str, where),
        )


@dataclass(frozen=True)
class NodeRecord(Exported):
    """A node's static facts (``dpd_nodes``, FLEET.md §7.2). ``machine_id`` binds the name
    to one host; ``down`` is an operator's verdict (``dpd fleet node-down``)."""

    node: str
    url: str
    gpus: tuple[GpuInfo, ...]
    filesystem_domain: str
    data_roots: tuple[str, ...]
    output_root: str
    labels: dict[str, str]
    boot_id: str
    machine_id: str
    instance: str
    version: str
    registered_at: str
    draining: bool = False
    down: dict[str, Any] | None = None
    v: int = RECORD_VERSION

    def to_json(self) -> bytes:
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "node") -> NodeRecord:
        d = as_object(d, where)
        _check_version(d, where)
        roots = required(d, "data_roots", list, where)
        if not all(isinstance(r, str) for r in roots):
            raise RecordError(f"{where}.data_roots: expected a list of paths")
        return cls(
            node=required(d, "node", str, where),
            url=required(d, "url", str, where),
            gpus=record_list(d, "gpus", GpuInfo.from_dict, where),
            filesystem_domain=required(d, "filesystem_domain", str, where),
            data_roots=tuple(roots),
            output_root=required(d, "output_root", str, where),
            labels=string_table(d, "labels", where),
            boot_id=required(d, "boot_id", str, where),
            machine_id=required(d, "machine_id", str, where),
            instance=required(d, "instance", str, where),
            version=required(d, "version", str, where),
            registered_at=required(d, "registered_at", str, where),
            draining=required(d, "draining", bool, where),
            down=optional(d, "down", dict, where),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeRecord:
        return cls.from_dict(load_json(data, "node"))


@dataclass(frozen=True)
class FreeGpu(Exported):
    id: int
    memory_free: int

    @classmethod
    def from_dict(cls, d: Any, where: str = "free") -> FreeGpu:
        d = as_object(d, where)
        return cls(required(d, "id", int, where), required(d, "memory_free", int, where))


@dataclass(frozen=True)
class AliveRecord(Exported):
    """One heartbeat (``dpd_alive``, FLEET.md §7.3); ``n`` counts this instance's beats."""

    node: str
    instance: str
    boot_id: str
    machine_id: str
    n: int
    at: str
    free: tuple[FreeGpu, ...] = ()
    running: tuple[str, ...] = ()
    claiming: int = 0
    draining: bool = False
    # the running tasks that may still write dataset caches (not yet training; scheduler
    # rule 6); None from a node that does not say (an older version)
    caching: tuple[str, ...] | None = None

    def to_json(self) -> bytes:
        return dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "alive") -> AliveRecord:
        d = as_object(d, where)
        running = required(d, "running", list, where)
        if not all(isinstance(t, str) for t in running):
            raise RecordError(f"{where}.running: expected a list of task ids")
        caching = optional(d, "caching", list, where)
        if caching is not None and not all(isinstance(t, str) for t in caching):
            raise RecordError(f"{where}.caching: expected a list of task ids")
        return cls(
            node=required(d, "node", str, where),
            instance=required(d, "instance", str, where),
            boot_id=required(d, "boot_id", str, where),
            machine_id=required(d, "machine_id", str, where),
            n=required(d, "n", int, where),
            at=required(d, "at", str, where),
            free=record_list(d, "free", FreeGpu.from_dict, where),
            running=tuple(running),
            claiming=required(d, "claiming", int, where),
            draining=required(d, "draining", bool, where),
            caching=tuple(caching) if caching is not None else None,
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> AliveRecord:
        return cls.from_dict(load_json(data, "alive"))
