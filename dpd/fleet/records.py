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

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TypeVar

from dpd.jobs.spec import TASK_ID_RE

RECORD_VERSION: Final = 1
NODE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
JOB_KEY_PREFIX: Final = "job."
NODE_KEY_PREFIX: Final = "node."
MAX_DECLINED: Final = 16
MAX_HISTORY: Final = 16


class RecordError(ValueError):
    """A record that cannot be read: the message names the field."""


class UnknownVersion(RecordError):
    """A record written by a newer dpd (``v`` this code does not understand)."""


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


# --------------------------------------------------------------------- field readers

T = TypeVar("T")


def _get(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise RecordError(f"{where}: missing {key!r}")
    value = d[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise RecordError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise RecordError(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r}")
    return value


def _opt(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if d.get(key) is None:
        return None
    return _get(d, key, kind, where)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _enum(d: Mapping[str, Any], key: str, enum: type[T], where: str) -> T:
    value = _get(d, key, str, where)
    try:
        return enum(value)  # type: ignore[call-arg]
    except ValueError:
        raise RecordError(f"{where}.{key}: unknown value {value!r}") from None


def _sub(d: Mapping[str, Any], key: str, reader: Callable[[Any, str], T], where: str) -> T:
    return reader(_get(d, key, dict, where), f"{where}.{key}")


def _opt_sub(
    d: Mapping[str, Any], key: str, reader: Callable[[Any, str], T], where: str
) -> T | None:
    return None if d.get(key) is None else _sub(d, key, reader, where)


def _list_of(
    d: Mapping[str, Any], key: str, reader: Callable[[Any, str], T], where: str
) -> tuple[T, ...]:
    items = _get(d, key, list, where)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RecordError(f"{where}.{key}[{i}]: expected an object")
        out.append(reader(item, f"{where}.{key}[{i}]"))
    return tuple(out)


def _ints(d: Mapping[str, Any], key: str, where: str) -> tuple[int, ...] | None:
    value = _opt(d, key, list, where)
    if value is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecordError(f"{where}.{key}: expected a list of integers")
    return tuple(value)


def _labels(d: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = _get(d, key, dict, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RecordError(f"{where}.{key}: expected a table of strings")
    return dict(value)


def _check_version(d: Mapping[str, Any], where: str) -> None:
    version = _get(d, "v", int, where)
    if version != RECORD_VERSION:
        raise UnknownVersion(f"{where}: record version {version} (this dpd reads {RECORD_VERSION})")


def _as_dict(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise RecordError(f"{where}: expected a JSON object")
    return d


def _load_json(data: bytes | str, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise RecordError(f"{where}: not JSON: {err}") from None


def _dump_json(d: Mapping[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


# ------------------------------------------------------------------ job record parts


@dataclass(frozen=True)
class Constraints:
    """Where a job may run (FLEET.md §9.1.1 step 1)."""

    required_gpus: int
    filesystem_domain: str
    node: str | None = None
    gpu_ids: tuple[int, ...] | None = None
    min_memory_mb: int | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "gpu_ids": list(self.gpu_ids) if self.gpu_ids is not None else None,
            "required_gpus": self.required_gpus,
            "min_memory_mb": self.min_memory_mb,
            "filesystem_domain": self.filesystem_domain,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "constraints") -> Constraints:
        d = _as_dict(d, where)
        return cls(
            required_gpus=_get(d, "required_gpus", int, where),
            filesystem_domain=_get(d, "filesystem_domain", str, where),
            node=_opt(d, "node", str, where),
            gpu_ids=_ints(d, "gpu_ids", where),
            min_memory_mb=_opt(d, "min_memory_mb", int, where),
            labels=_labels(d, "labels", where),
        )

    @property
    def needed(self) -> int:
        """GPUs the job takes (as ``scheduler.QueuedJob.needed``)."""
        return len(set(self.gpu_ids)) if self.gpu_ids else max(1, self.required_gpus)


@dataclass(frozen=True)
class Identity:
    """A spool file's identity (``SubmittedBy.identity``): a re-ingest finds its own record."""

    name: str = ""
    sha256: str = ""
    uid: int | None = None
    inode: int | None = None
    mtime_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "uid": self.uid,
            "inode": self.inode,
            "mtime_ns": self.mtime_ns,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "identity") -> Identity:
        d = _as_dict(d, where)
        return cls(
            name=_get(d, "name", str, where),
            sha256=_get(d, "sha256", str, where),
            uid=_opt(d, "uid", int, where),
            inode=_opt(d, "inode", int, where),
            mtime_ns=_opt(d, "mtime_ns", int, where),
        )


@dataclass(frozen=True)
class SubmittedBy:
    node: str
    source: str  # rest | spool | cli | nats
    key_id: str | None = None
    identity: Identity = field(default_factory=Identity)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "source": self.source,
            "key_id": self.key_id,
            "identity": self.identity.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "submitted_by") -> SubmittedBy:
        d = _as_dict(d, where)
        return cls(
            node=_get(d, "node", str, where),
            source=_get(d, "source", str, where),
            key_id=_opt(d, "key_id", str, where),
            identity=_sub(d, "identity", Identity.from_dict, where),
        )


@dataclass(frozen=True)
class Fence:
    """The claimer's own fence contract (FLEET.md §9.4); reapers act on it, never on
    their own settings. ``deadline_s`` is None in hold mode."""

    mode: FenceMode = FenceMode.HOLD
    deadline_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "deadline_s": self.deadline_s}

    @classmethod
    def from_dict(cls, d: Any, where: str = "fence") -> Fence:
        d = _as_dict(d, where)
        deadline = _opt(d, "deadline_s", (int, float), where)
        return cls(_enum(d, "mode", FenceMode, where), float(deadline) if deadline else None)


@dataclass(frozen=True)
class Owner:
    node: str
    instance: str
    boot_id: str
    machine_id: str
    fence: Fence
    gpus: tuple[int, ...]
    claimed_at: str
    port: int | None = None
    run: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "instance": self.instance,
            "boot_id": self.boot_id,
            "machine_id": self.machine_id,
            "fence": self.fence.to_dict(),
            "gpus": list(self.gpus),
            "port": self.port,
            "run": self.run,
            "claimed_at": self.claimed_at,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "owner") -> Owner:
        d = _as_dict(d, where)
        return cls(
            node=_get(d, "node", str, where),
            instance=_get(d, "instance", str, where),
            boot_id=_get(d, "boot_id", str, where),
            machine_id=_get(d, "machine_id", str, where),
            fence=_sub(d, "fence", Fence.from_dict, where),
            gpus=_ints(d, "gpus", where) or (),
            claimed_at=_get(d, "claimed_at", str, where),
            port=_opt(d, "port", int, where),
            run=_opt(d, "run", dict, where),
        )


@dataclass(frozen=True)
class Lost:
    node: str
    since: str
    observed_by: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "since": self.since, "observed_by": self.observed_by}

    @classmethod
    def from_dict(cls, d: Any, where: str = "lost") -> Lost:
        d = _as_dict(d, where)
        return cls(
            _get(d, "node", str, where),
            _get(d, "since", str, where),
            _get(d, "observed_by", str, where),
        )


@dataclass(frozen=True)
class Declined:
    node: str
    reason: str
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "reason": self.reason, "at": self.at}

    @classmethod
    def from_dict(cls, d: Any, where: str = "declined") -> Declined:
        d = _as_dict(d, where)
        return cls(
            _get(d, "node", str, where), _get(d, "reason", str, where), _get(d, "at", str, where)
        )


@dataclass(frozen=True)
class HistoryEntry:
    attempt: int
    node: str
    outcome: str  # completed | failed | stopped | claim_expired | declined | node_lost | ...
    at: str

    def to_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "node": self.node, "outcome": self.outcome, "at": self.at}

    @classmethod
    def from_dict(cls, d: Any, where: str = "history") -> HistoryEntry:
        d = _as_dict(d, where)
        return cls(
            _get(d, "attempt", int, where),
            _get(d, "node", str, where),
            _get(d, "outcome", str, where),
            _get(d, "at", str, where),
        )


@dataclass(frozen=True)
class Result:
    status: str
    ended_at: str
    error: dict[str, Any] | None = None
    last_checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "ended_at": self.ended_at,
            "last_checkpoint": self.last_checkpoint,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "result") -> Result:
        d = _as_dict(d, where)
        return cls(
            status=_get(d, "status", str, where),
            ended_at=_get(d, "ended_at", str, where),
            error=_opt(d, "error", dict, where),
            last_checkpoint=_opt(d, "last_checkpoint", str, where),
        )

    @property
    def reason(self) -> str | None:
        return str(self.error.get("reason")) if self.error and self.error.get("reason") else None


# -------------------------------------------------------------------- the job record


@dataclass(frozen=True)
class JobRecord:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "task_id": self.task_id,
            "state": self.state.value,
            "desired": self.desired.value,
            "attempt": self.attempt,
            "requeues": self.requeues,
            "owner": self.owner.to_dict() if self.owner else None,
            "constraints": self.constraints.to_dict(),
            "priority": self.priority,
            "submitted_at": self.submitted_at,
            "submitted_by": self.submitted_by.to_dict(),
            "spec": self.spec,
            "seq": self.seq,
            "log_head": [dict(e) for e in self.log_head],
            "head_published": self.head_published,
            "progress": self.progress,
            "lost": self.lost.to_dict() if self.lost else None,
            "declined": [d.to_dict() for d in self.declined],
            "history": [h.to_dict() for h in self.history],
            "result": self.result.to_dict() if self.result else None,
            "updated_by": self.updated_by,
            "updated_at": self.updated_at,
        }

    def to_json(self) -> bytes:
        return _dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "job") -> JobRecord:
        d = _as_dict(d, where)
        _check_version(d, where)
        task_id = _get(d, "task_id", str, where)
        if not TASK_ID_RE.match(task_id):
            raise RecordError(f"{where}.task_id: {task_id!r} is not a valid task id")
        log_head = _get(d, "log_head", list, where)
        if not all(isinstance(e, dict) for e in log_head):
            raise RecordError(f"{where}.log_head: expected a list of events")
        return cls(
            task_id=task_id,
            state=_enum(d, "state", JobState, where),
            desired=_enum(d, "desired", Desired, where),
            attempt=_get(d, "attempt", int, where),
            requeues=_get(d, "requeues", int, where),
            owner=_opt_sub(d, "owner", Owner.from_dict, where),
            constraints=_sub(d, "constraints", Constraints.from_dict, where),
            priority=_get(d, "priority", int, where),
            submitted_at=_get(d, "submitted_at", str, where),
            submitted_by=_sub(d, "submitted_by", SubmittedBy.from_dict, where),
            spec=_opt(d, "spec", dict, where),
            seq=_get(d, "seq", int, where),
            log_head=tuple(log_head),
            head_published=_get(d, "head_published", bool, where),
            progress=_opt(d, "progress", dict, where),
            lost=_opt_sub(d, "lost", Lost.from_dict, where),
            declined=_list_of(d, "declined", Declined.from_dict, where),
            history=_list_of(d, "history", HistoryEntry.from_dict, where),
            result=_opt_sub(d, "result", Result.from_dict, where),
            updated_by=_get(d, "updated_by", str, where),
            updated_at=_get(d, "updated_at", str, where),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> JobRecord:
        return cls.from_dict(_load_json(data, "job"))


# ------------------------------------------------------------------ registry, alive


@dataclass(frozen=True)
class GpuInfo:
    id: int
    name: str
    memory_total: int
    uuid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "memory_total": self.memory_total,
            "uuid": self.uuid,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "gpu") -> GpuInfo:
        d = _as_dict(d, where)
        return cls(
            _get(d, "id", int, where),
            _get(d, "name", str, where),
            _get(d, "memory_total", int, where),
            _get(d, "uuid", str, where),
        )


@dataclass(frozen=True)
class NodeRecord:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "node": self.node,
            "url": self.url,
            "gpus": [g.to_dict() for g in self.gpus],
            "filesystem_domain": self.filesystem_domain,
            "data_roots": list(self.data_roots),
            "output_root": self.output_root,
            "labels": dict(self.labels),
            "boot_id": self.boot_id,
            "machine_id": self.machine_id,
            "instance": self.instance,
            "version": self.version,
            "registered_at": self.registered_at,
            "draining": self.draining,
            "down": self.down,
        }

    def to_json(self) -> bytes:
        return _dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "node") -> NodeRecord:
        d = _as_dict(d, where)
        _check_version(d, where)
        roots = _get(d, "data_roots", list, where)
        if not all(isinstance(r, str) for r in roots):
            raise RecordError(f"{where}.data_roots: expected a list of paths")
        return cls(
            node=_get(d, "node", str, where),
            url=_get(d, "url", str, where),
            gpus=_list_of(d, "gpus", GpuInfo.from_dict, where),
            filesystem_domain=_get(d, "filesystem_domain", str, where),
            data_roots=tuple(roots),
            output_root=_get(d, "output_root", str, where),
            labels=_labels(d, "labels", where),
            boot_id=_get(d, "boot_id", str, where),
            machine_id=_get(d, "machine_id", str, where),
            instance=_get(d, "instance", str, where),
            version=_get(d, "version", str, where),
            registered_at=_get(d, "registered_at", str, where),
            draining=_get(d, "draining", bool, where),
            down=_opt(d, "down", dict, where),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeRecord:
        return cls.from_dict(_load_json(data, "node"))


@dataclass(frozen=True)
class FreeGpu:
    id: int
    memory_free: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "memory_free": self.memory_free}

    @classmethod
    def from_dict(cls, d: Any, where: str = "free") -> FreeGpu:
        d = _as_dict(d, where)
        return cls(_get(d, "id", int, where), _get(d, "memory_free", int, where))


@dataclass(frozen=True)
class AliveRecord:
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "instance": self.instance,
            "boot_id": self.boot_id,
            "machine_id": self.machine_id,
            "n": self.n,
            "at": self.at,
            "free": [g.to_dict() for g in self.free],
            "running": list(self.running),
            "claiming": self.claiming,
            "draining": self.draining,
        }

    def to_json(self) -> bytes:
        return _dump_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, where: str = "alive") -> AliveRecord:
        d = _as_dict(d, where)
        running = _get(d, "running", list, where)
        if not all(isinstance(t, str) for t in running):
            raise RecordError(f"{where}.running: expected a list of task ids")
        return cls(
            node=_get(d, "node", str, where),
            instance=_get(d, "instance", str, where),
            boot_id=_get(d, "boot_id", str, where),
            machine_id=_get(d, "machine_id", str, where),
            n=_get(d, "n", int, where),
            at=_get(d, "at", str, where),
            free=_list_of(d, "free", FreeGpu.from_dict, where),
            running=tuple(running),
            claiming=_get(d, "claiming", int, where),
            draining=_get(d, "draining", bool, where),
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> AliveRecord:
        return cls.from_dict(_load_json(data, "alive"))
