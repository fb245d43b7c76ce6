"""Reads and control through any host (FLEET.md §9.6–§9.8): a REST call on this node about a
job another node owns is answered by that owner over RPC; when the owner does not answer in
time, by what the fleet knows without it — the KV record and stream ``DPD`` — marked
``"stale": true`` with its ``"source"`` (``kv`` or ``stream``).

- GET job, progress: the owner's answer + a ``fleet`` field; fallback the KV record with the
  last status/progress/metrics events of ``dpd.jobs.<tok>.>`` (``source: kv``).
- logs: the owner's answer; fallback the log events of stream ``DPD`` (``source: stream``).
- stop: T9 (``desired := stop|force_stop``, durable) first, then the owner's staged stop by
  RPC; owner unreachable: 202 ``{"task_id", "pending": true}`` and the owner applies
  ``desired`` when it is back (``DesiredApplier``). A job no node took yet: T9 then T8 here.
- per-job SSE: always from stream ``DPD`` (an ordered consumer, resumed after
  ``Last-Event-ID``, reordered by ``seq``), the same messages the owner's stream sends.
- ``/api/v1/events/stream``: the other nodes' events join this node's ring (``RingFeed``).

The decisions (``decide``, ``stale_view``, ``kv_detail``…) are pure; the component
``FleetViews`` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from dpd.events.jetstream import STREAM
from dpd.events.subjects import id_from_token, job_subject
from dpd.fleet.records import Desired, JobRecord, JobState, RecordError
from dpd.fleet.transitions import public_status

log = logging.getLogger("dpd.fleet.views")

TERMINAL_STATUSES: Final = frozenset({"completed", "failed", "stopped"})
HOLE_WAIT: Final = 2.0  # seconds an SSE reader waits for a missing seq before going on
FILL_AFTER: Final = 1.0  # ... and after this long asks the owner for it (job.events)
LAST_KINDS: Final = ("status", "progress", "metrics")


class Source(StrEnum):
    LOCAL = "local"  # this node's own routes (the job is here, or nobody has it)
    FORWARD = "forward"  # RPC to the owner
    KV = "kv"  # the record: the job has no owner (queued, cancelled) or its owner is this node


@dataclass(frozen=True)
class Decision:
    source: Source
    node: str | None = None


def decide(local: dict[str, Any] | None, record: JobRecord | None, me: str) -> Decision:
    """Who answers a call about a job on this node. ``local``: its state.json here (None:
    no local job); ``record``: its fleet record (None: not a fleet job, or none exists)."""
    owner = record.owner.node if record is not None and record.owner is not None else None
    if local is not None:
        if record is not None and owner is None and _moved_on(local, record):
            return Decision(Source.KV)  # resumed (T12) after it ended here, not placed yet
        if record is None or owner is None or owner == me:
            return Decision(Source.LOCAL)
        fleet = local.get("fleet")
        if isinstance(fleet, dict) and fleet.get("attempt") == record.attempt:
            return Decision(Source.LOCAL)
        return Decision(Source.FORWARD, owner)  # an earlier attempt ran here; it moved on
    if record is None:
        return Decision(Source.LOCAL)  # the route answers 404 as on one host
    if owner is None or owner == me:
        return Decision(Source.KV)
    return Decision(Source.FORWARD, owner)


def _moved_on(local: dict[str, Any], record: JobRecord) -> bool:
    ended = local.get("status") in ("completed", "failed", "stopped")
    return ended and isinstance(local.get("fleet"), dict) and not record.terminal


def fleet_field(record: JobRecord, me: str) -> dict[str, Any]:
    owner = record.owner
    return {
        "node": owner.node if owner else None,
        "via": me,
        "state": record.state.value,
        "attempt": record.attempt,
        "desired": record.desired.value,
    }


def with_fleet(envelope: dict[str, Any], record: JobRecord, me: str) -> dict[str, Any]:
    """The owner's envelope with the ``fleet`` field added to its ``data`` (if an object)."""
    data = envelope.get("data")
    if isinstance(data, dict):
        envelope = {**envelope, "data": {**data, "fleet": fleet_field(record, me)}}
    return envelope


def node_state(record: JobRecord) -> str | None:
    """What a fallback says about the owner: ``lost`` once a reaper marked it, else
    ``unreachable``; None for a job that no node holds."""
    if record.owner is None:
        return None
    return "lost" if record.lost is not None else "unreachable"


def stale_view(data: dict[str, Any], record: JobRecord, me: str, source: str) -> dict[str, Any]:
    """``data`` marked as not coming from the owner: ``stale`` is true whenever an owner
    should have answered (a job nobody holds has its truth in the record: not stale)."""
    return {
        **data,
        "stale": record.owner is not None,
        "source": source,
        "node_state": node_state(record),
        "fleet": fleet_field(record, me),
    }


def last_status(record: JobRecord, last: dict[str, dict[str, Any]]) -> str:
    """The newer of the record's state and the last status event in the stream."""
    event = last.get("status")
    if event is not None and int(event.get("seq", 0)) >= record.seq:
        status = (event.get("data") or {}).get("status")
        if isinstance(status, str):
            return status
    return public_status(record.state)


def kv_detail(record: JobRecord, last: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``GET /training/{id}`` from the record and the stream's last events."""
    spec = record.spec or {}
    progress_event = last.get("progress")
    progress = (progress_event or {}).get("data") if progress_event else record.progress
    metrics = (last.get("metrics") or {}).get("data")
    result = record.result
    return {
        "task_id": record.task_id,
        "status": last_status(record, last),
        "model_type": spec.get("model_type"),
        "description": spec.get("description"),
        "config": spec.get("config"),
        "created_at": record.submitted_at,
        "gpu_ids": list(record.owner.gpus) if record.owner else None,
        "progress": progress,
        "metrics": metrics,
        "error": result.error if result else None,
        "ended_at": result.ended_at if result else None,
        "last_seq": max([record.seq, *(int(e.get("seq", 0)) for e in last.values())]),
    }


def log_page(
    events: list[dict[str, Any]],
    tail: int,
    keep: Callable[[dict[str, Any]], bool],
    since: str | None,
    entry: Callable[[str, float | None], dict[str, Any]],
) -> tuple[list[dict[str, Any]], int, int]:
    """The last ``tail`` kept lines of log events (in seq order), their total, last seq."""
    lines: list[dict[str, Any]] = []
    last_seq = 0
    for event in sorted(events, key=lambda e: int(e.get("seq", 0))):
        last_seq = max(last_seq, int(event.get("seq", 0)))
        if event.get("type") != "log":
            continue
        for text in (event.get("data") or {}).get("lines") or []:
            line = entry(text, event.get("timestamp"))
            if not keep(line):
                continue
            if since is not None and str(line.get("timestamp") or "") < since:
                continue
            lines.append(line)
    return lines[-tail:], len(lines), last_seq


class Reorder:
    """Events of one task in ``seq`` order after ``cursor`` (None: from the first seen),
    none twice; a hole older than ``HOLE_WAIT`` is skipped (the publisher may deliver out
    of order after a failed publish; FLEET.md §9.8)."""

    def __init__(self, cursor: int | None) -> None:
        self.cursor = cursor
        self.held: dict[int, dict[str, Any]] = {}
        self.hole_since: float | None = None

    def push(self, event: dict[str, Any], now: float) -> list[dict[str, Any]]:
        seq = int(event.get("seq", 0))
        if self.cursor is None:
            self.cursor = seq - 1
        if seq > self.cursor:
            self.held.setdefault(seq, event)
        return self.ready(now)

    def hole_age(self, now: float) -> float:
        """How long the next seq has been missing while later ones wait (0: no hole)."""
        return 0.0 if self.hole_since is None or not self.held else now - self.hole_since

    def ready(self, now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while self.held:
            assert self.cursor is not None
            nxt = self.cursor + 1
            if nxt in self.held:
                out.append(self.held.pop(nxt))
                self.cursor = nxt
                self.hole_since = None
                continue
            if self.hole_since is None:
                self.hole_since = now
            if now - self.hole_since < HOLE_WAIT:
                break
            self.cursor = min(self.held) - 1  # give up on the hole
            self.hole_since = None
        return out


# ------------------------------------------------------------------------- stream reads


async def last_events(nc: NATS, prefix: str, task_id: str, timeout: float) -> dict[str, Any]:
    """The last status, progress and metrics events of a task in stream ``DPD``."""
    js = nc.jetstream(timeout=timeout)
    out: dict[str, Any] = {}
    for kind in LAST_KINDS:
        with contextlib.suppress(NotFoundError, nats.errors.Error, TimeoutError, ValueError):
            msg = await js.get_last_msg(STREAM, job_subject(prefix, task_id, kind))
            if msg.data:
                out[kind] = json.loads(msg.data)
    return out


async def last_seq(nc: NATS, prefix: str, task_id: str, timeout: float) -> int:
    """The seq of the last event of a task stored in stream ``DPD`` (0: none, or no stream):
    one get of the last message on any of its subjects (a wildcard: server >= 2.11). Other
    errors (no answer) are raised: a caller numbering on from it must not guess."""
    js = nc.jetstream(timeout=timeout)
    try:
        msg = await js.get_last_msg(STREAM, job_subject(prefix, task_id, ">"))
    except NotFoundError:
        return 0
    try:
        return int(json.loads(msg.data or b"{}").get("seq", 0))
    except (ValueError, TypeError, AttributeError):
        return 0  # not a dpd event: nothing to number on from


async def stream_events(
    nc: NATS, subject: str, from_start: bool, idle: float
) -> AsyncIterator[tuple[dict[str, Any] | None, int]]:
    """Events on ``subject`` in stream ``DPD`` (an ordered consumer), each with how many
    the consumer still has pending; ``(None, 0)`` after ``idle`` seconds of nothing."""
    js = nc.jetstream()
    policy = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
    sub: Subscription = await js.subscribe(
        subject,
        stream=STREAM,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=policy),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle)
            except (nats.errors.TimeoutError, TimeoutError):
                yield None, 0
                continue
            try:
                event = json.loads(msg.data)
            except ValueError:
                continue
            pending = msg.metadata.num_pending if msg.metadata else 0
            yield event, pending
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def read_all(nc: NATS, subject: str, timeout: float) -> list[dict[str, Any]]:
    """Every stored event on ``subject`` now (a ``logs`` fallback)."""
    js = nc.jetstream(timeout=timeout)
    try:
        await js.get_last_msg(STREAM, subject)
    except NotFoundError:
        return []
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        async for event, pending in stream_events(nc, subject, True, timeout):
            if event is None:
                break
            out.append(event)
            if pending == 0:
                break
    return out


def metric_points(
    events: list[dict[str, Any]], metric: str, kind: str, limit: int | None
) -> list[dict[str, Any]]:
    """The last ``limit`` (None: all) points of ``metric`` and ``kind`` among a task's
    ``metrics`` events, oldest first: what the owner's metrics.jsonl gives (a fallback)."""
    found = [
        e["data"]
        for e in events
        if isinstance(e.get("data"), dict)
        and e["data"].get("metric") == metric
        and e["data"].get("type") == kind
    ]
    return found[-limit:] if limit else found


def event_from_subject(subject: str, data: bytes, prefix: str) -> dict[str, Any] | None:
    """A bus-shaped event (with its ``scope``) from a message on ``<prefix>.<scope>.…``."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != prefix:
        return None
    try:
        event = json.loads(data)
        id_from_token(parts[2])
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    return {**event, "scope": parts[1]}


def record_of(value: bytes) -> JobRecord | None:
    try:
        return JobRecord.from_json(value)
    except RecordError:
        return None


def applies_desired(record: JobRecord, me: str, local: dict[str, Any] | None) -> bool:
    """The owner should stop its run now: a stop was asked for (T9) while it was away or
    the RPC never came, and the local run is this record's attempt and still going."""
    owner = record.owner
    if record.desired is Desired.RUN or owner is None or owner.node != me:
        return False
    if record.state not in (JobState.STARTING, JobState.RUNNING) or local is None:
        return False
    fleet = local.get("fleet")
    if not isinstance(fleet, dict) or fleet.get("attempt") != record.attempt:
        return False
    return local.get("status") in ("running", "queued")


def now() -> float:
    return time.monotonic()


# ------------------------------------------------------------------ the fleet-wide list


@dataclass(frozen=True)
class ListQuery:
    status: str | None = None
    gpu_id: int | None = None
    node: str | None = None
    limit: int = 50
    offset: int = 0


def kv_summary(record: JobRecord, empty_progress: dict[str, Any]) -> dict[str, Any]:
    """A ``/training/list`` row from the record alone (a job this node does not hold)."""
    spec = record.spec or {}
    progress = dict(empty_progress)
    snapshot = record.progress or {}
    progress.update(
        {"current_epoch": snapshot.get("epoch"), "current_step": snapshot.get("step")}
        if snapshot
        else {}
    )
    progress["eta_seconds"] = snapshot.get("eta_seconds")
    return {
        "task_id": record.task_id,
        "status": public_status(record.state),
        "gpu_id": None,
        "gpu_ids": list(record.owner.gpus) if record.owner else None,
        "gpu_name": None,
        "model_type": spec.get("model_type"),
        "description": spec.get("description"),
        "priority": record.priority,
        "progress": progress,
        "metrics": {k: None for k in ("current_loss", "best_loss", "learning_rate", "grad_norm")},
        "created_at": record.submitted_at,
        "started_at": None,
        "updated_at": record.updated_at,
    }


def fleet_rows(
    records: list[JobRecord],
    local: dict[str, dict[str, Any]],
    me: str,
    summary: Callable[[dict[str, Any]], dict[str, Any]],
    empty_progress: dict[str, Any],
) -> list[dict[str, Any]]:
    """Every job of the fleet, oldest first, each with its ``node``: this node's own
    details for the jobs it holds, the record's for the others (FLEET.md §9.8)."""
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        state = local.get(record.task_id)
        if state is not None and decide(state, record, me).source is Source.LOCAL:
            rows[record.task_id] = {**summary(state), "node": me}
        else:
            node = record.owner.node if record.owner else None
            rows[record.task_id] = {**kv_summary(record, empty_progress), "node": node}
    for task_id, state in local.items():  # jobs here without a record (before fleet mode)
        rows.setdefault(task_id, {**summary(state), "node": me})
    return sorted(rows.values(), key=lambda r: (str(r.get("created_at") or ""), r["task_id"]))


def list_page(rows: list[dict[str, Any]], query: ListQuery) -> dict[str, Any]:
    """Filtered, newest first, one page: the same shape as the single-host list."""
    kept = [
        r
        for r in rows
        if (query.status is None or r["status"] == query.status)
        and (query.gpu_id is None or query.gpu_id in (r.get("gpu_ids") or []))
        and (query.node is None or r.get("node") == query.node)
    ]
    newest = list(reversed(kept))
    page = newest[query.offset : query.offset + query.limit]
    return {
        "tasks": page,
        "pagination": {
            "total": len(kept),
            "limit": query.limit,
            "offset": query.offset,
            "has_more": query.offset + len(page) < len(kept),
        },
    }
