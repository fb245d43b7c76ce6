"""Scheduling decisions: which queued jobs start now, on which GPUs (issue 3, item 2). Pure.

Rules, in the order they apply:

1. Order. Higher ``priority`` first; equal priorities in submission order (``submitted_seq``).
2. Eligible GPUs. Only GPUs whose status is ``available`` (no dpd job, no foreign compute
   process, NVML answering) and, when the job gives ``min_memory_mb``, with at least that
   much memory free. Explicit ``gpu_ids`` start only when every one of them is eligible.
   Automatic jobs take the best fit: the eligible GPUs with the least free memory that is
   still enough, lowest id on ties, so big GPUs stay free for big jobs.
3. All at once. A multi-GPU job gets all its GPUs in one decision or none.
4. No starvation. A job that cannot start *reserves* the eligible GPUs it would use (its
   explicit ids, or up to ``required_gpus`` of the free ones), so a later or lower-priority
   job cannot keep taking them: GPUs accumulate for the big job until it fits.
5. Backfill. A later job may still use a reserved GPU when it is known to finish before the
   reserving job could start: its ``estimated_duration`` is at most the reserving job's
   *shadow time* (seconds until enough GPUs are expected free, from the running jobs' ETAs).
   Unknown durations or unknown shadow times never backfill.
6. One builder per dataset cache. A job whose dataset cache (``dataset_cache.cache_keys``)
   a live run may still be writing (it has not reached training) waits, and so does a job
   sharing a cache with one placed earlier in the same pass: two trainers building one cache
   tear it. Such a job reserves nothing (it waits for a run's caching, not for GPUs), and
   keeps its place in the order for the pass after.

Start-time estimates replay the queue in that order against the GPUs' expected free times
(now, or now + the running job's ETA); a GPU held by a foreign process or in an unknown state
has no expected free time, nor has a running job without an ETA, and so neither have the jobs
that need it. They are estimates: backfill and early finishes only make jobs start sooner.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from dpd.jobs.spec import JobSpec

AVAILABLE: Final = "available"  # dpd.supervisor.gpus.AVAILABLE; kept here to stay import-free
NEVER: Final = math.inf


@dataclass(frozen=True)
class QueuedJob:
    task_id: str
    priority: int
    submitted_seq: int
    gpu_ids: tuple[int, ...] | None
    required_gpus: int
    min_memory_mb: int | None
    estimated_duration: float | None  # seconds, when the job (or its model) gives one
    cache_keys: frozenset[str] = frozenset()  # dataset caches its trainer writes (rule 6)

    @property
    def needed(self) -> int:
        """GPUs the job takes: its explicit ids, else ``required_gpus`` (DESIGN §3)."""
        return len(set(self.gpu_ids)) if self.gpu_ids else max(1, self.required_gpus)

    @classmethod
    def submitted(cls, spec: JobSpec) -> QueuedJob:
        """A job as it would join the queue now (for the feasibility checks of a submission
        or a dry run): no place in the queue yet."""
        return cls(
            task_id=spec.task_id or "(new)",
            priority=spec.priority,
            submitted_seq=0,
            gpu_ids=spec.gpu_ids,
            required_gpus=spec.required_gpus,
            min_memory_mb=spec.min_memory_mb,
            estimated_duration=None,
        )


@dataclass(frozen=True)
class GpuView:
    gpu_id: int
    memory_total: int
    memory_free: int
    status: str  # from dpd.supervisor.gpus.gpu_status
    running_task: str | None = None
    running_eta: float | None = None  # seconds until that task should end


@dataclass(frozen=True)
class Assignment:
    task_id: str
    gpu_ids: tuple[int, ...]


@dataclass(frozen=True)
class Infeasible:
    """Why a job cannot start as asked: ``code`` 507 (never on this machine) or 409 (its
    explicit GPU is busy now); ``data`` is the envelope data of DESIGN §3 / api.md."""

    code: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)


def queue_order(queue: Iterable[QueuedJob]) -> list[QueuedJob]:
    return sorted(queue, key=lambda job: (-job.priority, job.submitted_seq))


def queue_positions(queue: Iterable[QueuedJob]) -> dict[str, int]:
    """1-based position of every queued job in scheduling order."""
    return {job.task_id: i for i, job in enumerate(queue_order(queue), start=1)}


# ------------------------------------------------------------------------------- plan


def plan(
    queue: Sequence[QueuedJob],
    gpus: Sequence[GpuView],
    caching: frozenset[str] = frozenset(),
) -> list[Assignment]:
    """The jobs that start now and their GPUs (rules in the module docstring). ``caching``:
    the dataset caches live runs may still be writing (rule 6)."""
    free = {g.gpu_id: g for g in gpus if g.status == AVAILABLE}
    reserved: dict[int, float] = {}  # gpu_id -> shadow time of the job that reserved it
    building = set(caching)
    assignments: list[Assignment] = []
    for job in queue_order(queue):
        if not free:
            break  # nothing else can start; the rest only matters for estimates
        if job.cache_keys & building:
            continue  # rule 6
        chosen = _choose_now(job, free, reserved)
        if chosen is not None:
            assignments.append(Assignment(job.task_id, chosen))
            building |= job.cache_keys
            for gpu_id in chosen:
                free.pop(gpu_id, None)
                reserved.pop(gpu_id, None)
            continue
        shadow = _shadow_time(job, gpus)
        for gpu_id in _wanted(job, free, reserved):
            reserved[gpu_id] = shadow
    return assignments


def _fits_now(job: QueuedJob, gpu: GpuView) -> bool:
    return job.min_memory_mb is None or gpu.memory_free >= job.min_memory_mb


def _usable(job: QueuedJob, gpu: GpuView, reserved: dict[int, float]) -> bool:
    """Free for this job: unreserved, or reserved and the job is sure to end in time."""
    if gpu.gpu_id not in reserved:
        return True
    duration, shadow = job.estimated_duration, reserved[gpu.gpu_id]
    return duration is not None and shadow != NEVER and duration <= shadow


def _choose_now(
    job: QueuedJob, free: dict[int, GpuView], reserved: dict[int, float]
) -> tuple[int, ...] | None:
    if job.gpu_ids:
        gpus = [free.get(i) for i in job.gpu_ids]
        if all(g is not None and _fits_now(job, g) and _usable(job, g, reserved) for g in gpus):
            return tuple(dict.fromkeys(job.gpu_ids))
        return None
    candidates = [g for g in free.values() if _fits_now(job, g) and _usable(job, g, reserved)]
    if len(candidates) < job.needed:
        return None
    best = sorted(candidates, key=lambda g: (g.gpu_id in reserved, g.memory_free, g.gpu_id))
    return tuple(sorted(g.gpu_id for g in best[: job.needed]))


def _wanted(job: QueuedJob, free: dict[int, GpuView], reserved: dict[int, float]) -> list[int]:
    """The free GPUs a blocked job holds on to (rule 4)."""
    if job.gpu_ids:
        return [i for i in job.gpu_ids if i in free and i not in reserved]
    candidates = [g for g in free.values() if _fits_now(job, g) and g.gpu_id not in reserved]
    best = sorted(candidates, key=lambda g: (g.memory_free, g.gpu_id))
    return [g.gpu_id for g in best[: job.needed]]


def _free_in(gpu: GpuView) -> float:
    """Seconds until the GPU is expected free; NEVER when nobody can say."""
    if gpu.status == AVAILABLE:
        return 0.0
    if gpu.running_task is not None and gpu.running_eta is not None:
        return max(0.0, gpu.running_eta)
    return NEVER


def _shadow_time(job: QueuedJob, gpus: Sequence[GpuView]) -> float:
    """Seconds until enough GPUs for ``job`` are expected free (NEVER if unknown)."""
    return _earliest(job, {g.gpu_id: (g, _free_in(g)) for g in gpus})[0]


def _earliest(
    job: QueuedJob, expected: dict[int, tuple[GpuView, float]]
) -> tuple[float, tuple[int, ...]]:
    """When (seconds) and on which GPUs ``job`` could start, given each GPU's free time."""
    if job.gpu_ids:
        if any(i not in expected for i in job.gpu_ids):
            return NEVER, ()
        return max(expected[i][1] for i in job.gpu_ids), tuple(job.gpu_ids)
    fitting = [
        (at, gpu.gpu_id)
        for gpu, at in expected.values()
        if job.min_memory_mb is None or gpu.memory_total >= job.min_memory_mb
    ]
    if len(fitting) < job.needed:
        return NEVER, ()
    chosen = sorted(fitting)[: job.needed]
    return max(at for at, _ in chosen), tuple(gpu_id for _, gpu_id in chosen)


# --------------------------------------------------------------------------- estimates


def estimate_start_times(
    queue: Sequence[QueuedJob], gpus: Sequence[GpuView], now: float
) -> dict[str, float | None]:
    """Expected start (unix time) of every queued job; None where it cannot be told."""
    expected = {g.gpu_id: (g, _free_in(g)) for g in gpus}
    starts: dict[str, float | None] = {}
    for job in queue_order(queue):
        at, chosen = _earliest(job, expected)
        if at == NEVER:
            starts[job.task_id] = None
            continue
        starts[job.task_id] = now + at
        ends = at + job.estimated_duration if job.estimated_duration is not None else NEVER
        for gpu_id in chosen:
            expected[gpu_id] = (expected[gpu_id][0], ends)
    return starts


# --------------------------------------------------------------------------- feasibility


def check_feasible(
    job: QueuedJob, gpus: Sequence[GpuView], now: float | None = None
) -> Infeasible | None:
    """None if the job can start now or merely has to wait its turn; otherwise why not.

    507: the machine can never run it (more GPUs than it has, explicit ids that do not
    exist, not enough GPUs with ``min_memory_mb`` of memory). 409: an explicit GPU is
    occupied now (the caller queues instead when the job asked to). ``now`` (unix time)
    lets the 409 carry ``estimated_available_time``.
    """
    never = _never_fits(job, gpus)
    if never is not None:
        return Infeasible(507, never, _insufficient_data(job, gpus))
    if not job.gpu_ids:
        return None
    by_id = {g.gpu_id: g for g in gpus}
    for gpu_id in job.gpu_ids:
        gpu = by_id[gpu_id]
        if gpu.status != AVAILABLE:
            return Infeasible(409, f"GPU {gpu_id} is occupied", _busy_data(gpu, gpus, now))
    return None


def _never_fits(job: QueuedJob, gpus: Sequence[GpuView]) -> str | None:
    ids = {g.gpu_id for g in gpus}
    if job.gpu_ids:
        missing = sorted(set(job.gpu_ids) - ids)
        if missing:
            return f"no GPU {', '.join(map(str, missing))} on this machine ({len(ids)} GPUs)"
    if job.needed > len(ids):
        return f"the job needs {job.needed} GPUs; this machine has {len(ids)}"
    if job.min_memory_mb is not None:
        pool = [g for g in gpus if not job.gpu_ids or g.gpu_id in job.gpu_ids]
        big = [g for g in pool if g.memory_total >= job.min_memory_mb]
        if len(big) < job.needed:
            return (
                f"the job needs {job.needed} GPU(s) with {job.min_memory_mb} MB; "
                f"{len(big)} have that much memory"
            )
    return None


def _insufficient_data(job: QueuedJob, gpus: Sequence[GpuView]) -> dict[str, Any]:
    return {
        "required_gpus": job.needed,
        "available_gpus": sum(1 for g in gpus if g.status == AVAILABLE),
        "busy_gpus": [g.gpu_id for g in gpus if g.status != AVAILABLE],
        "recommended_action": (
            "use existing GPU ids, reduce pipeline_stages or the number of GPUs, "
            "or lower min_memory_mb"
        ),
    }


def _busy_data(gpu: GpuView, gpus: Sequence[GpuView], now: float | None) -> dict[str, Any]:
    free_in = _free_in(gpu)
    return {
        "gpu_id": gpu.gpu_id,
        "current_task": gpu.running_task,
        "estimated_available_time": (
            _iso(now + free_in) if now is not None and free_in != NEVER else None
        ),
        "available_gpus": [g.gpu_id for g in gpus if g.status == AVAILABLE],
    }


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
