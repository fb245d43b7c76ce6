"""What the dashboard's job and submit pages need beyond the training routes of api.md:

- ``GET /training/{id}/series?kind=&max_points=``: one metric series, thinned with min/max
  bands (``dpd.jobs.series``), read from metrics.jsonl;
- ``GET /training/{id}/markers``: resume, save and checkpoint markers for the charts;
- ``POST /training/{id}/priority``: a queued job's priority (409 once it has left the queue);
- ``POST /training/validate``: a dry run of ``/training/start`` (nothing is written), JSON
  or YAML as start takes;
- ``GET /training/{id}/config``: the accepted spec and the generated TOML files;
- ``GET /training/{id}/alerts``: the task's recorded ``alert`` events (``dpd.alerts``).

Series, markers and alerts come from the app's ``JobCache`` (``dpd.http.jobcache``), which
reads each job's files once and then only what they gained; ``metric_records`` and
``read_records`` are the plain scans it replaced (the benchmark's baseline). Reads of job
files run in a worker thread. The priority is changed through the store's
``update_state``, whose per-job lock the launch takes too, so a job is never both launched
and re-prioritised: whichever comes second sees the other's result.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from dpd.errors import BadRequest, Conflict, FieldError, ValidationFailed
from dpd.http.common import document_format, envelope_response, query_choice, query_int
from dpd.http.jobcache import JobCache
from dpd.http.routing import Route, add_routes
from dpd.jobs import series
from dpd.jobs.dpconfig import render_configs
from dpd.jobs.spec import MAX_PRIORITY, JobSpec, parse_job_document, validate_job
from dpd.jobs.states import Status
from dpd.models.catalog import Catalog
from dpd.services import SERVICES, Services
from dpd.spool import layout as names
from dpd.spool.jsontail import field_bytes
from dpd.supervisor import outputs
from dpd.supervisor.scheduler import QueuedJob, check_feasible

PREFIX: Final = "/api/v1/training"
MAX_POINTS_LIMIT: Final = 100_000
PRIORITY_EVENT: Final = "priority"
SERIES_KINDS: Final = tuple(series.SERIES)
JOB_CACHE: Final = web.AppKey("job_cache", JobCache)


def setup(app: web.Application) -> None:
    app[JOB_CACHE] = JobCache()
    add_routes(app, ROUTES)


# ------------------------------------------------------------------ reading job files


def read_records(path: Path, needles: tuple[bytes, ...]) -> list[dict[str, Any]]:
    """The JSON-lines records of ``path`` holding every one of ``needles``, in file order
    (blocking). A torn last line (a write in progress) is skipped."""
    found: list[dict[str, Any]] = []
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return found
    with handle:
        for line in handle:
            if all(n in line for n in needles):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
    return found


def metric_records(job_dir: Path, kind: str) -> list[dict[str, Any]]:
    """One series' records, read from the whole of metrics.jsonl (the cache's baseline)."""
    record_type, metric = series.SERIES[kind]
    path = job_dir / names.METRICS_FILE
    needles = (field_bytes("type", record_type), field_bytes("metric", metric))
    return [
        r
        for r in read_records(path, needles)
        if r.get("type") == record_type and r.get("metric") == metric
    ]


# ------------------------------------------------------------------ series and markers


async def get_series(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    services.store.get(task_id)
    kind = query_choice(request, "kind", SERIES_KINDS, "step_loss") or "step_loss"
    max_points = (
        query_int(request, "max_points", series.DEFAULT_MAX_POINTS, 2, MAX_POINTS_LIMIT)
        or series.DEFAULT_MAX_POINTS
    )
    job_dir = services.layout.job_dir(task_id)
    thinned = await asyncio.to_thread(request.app[JOB_CACHE].series, job_dir, kind, max_points)
    return envelope_response(
        {
            "task_id": task_id,
            "kind": kind,
            "points": thinned.points,
            "thinned": thinned.thinned,
            "total": thinned.total,
        }
    )


def _markers(cache: JobCache, job_dir: Path, output_dir: str | None) -> list[dict[str, Any]]:
    resumes, epoch_steps = cache.marker_facts(job_dir)
    saved: list[str] = []
    checkpoints: list[int] = []
    for run_dir in outputs.find_run_dirs(Path(output_dir)) if output_dir else []:
        saved.extend(m.name for m in outputs.saved_models(run_dir))
        checkpoints.extend(_checkpoint_steps(run_dir))
    return series.place_markers(resumes, saved, checkpoints, epoch_steps)


def scanned_markers(job_dir: Path) -> list[dict[str, Any]]:
    """The resume markers and epoch ends as a plain scan of the job's files finds them
    (what the cache replaced; the benchmark's baseline)."""
    path = job_dir / names.EVENTS_FILE
    events = [
        e
        for kind in ("status", "progress")
        for e in read_records(path, (field_bytes("type", kind),))
        if e.get("type") == kind
    ]
    events.sort(key=lambda e: int(e.get("seq", 0)))
    epoch_steps = {
        int(r["epoch"]): int(r["step"])
        for r in metric_records(job_dir, "epoch_loss")
        if isinstance(r.get("epoch"), int) and isinstance(r.get("step"), int)
    }
    return series.markers(events, [], [], epoch_steps)


def _checkpoint_steps(run_dir: Path) -> list[int]:
    steps = []
    with os.scandir(run_dir) as entries:
        for entry in entries:
            match = outputs.CHECKPOINT_RE.match(entry.name)
            if match and entry.is_dir():
                steps.append(int(match[1]))
    return sorted(steps)


async def get_markers(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    state = services.store.get(task_id)
    job_dir = services.layout.job_dir(task_id)
    found = await asyncio.to_thread(
        _markers, request.app[JOB_CACHE], job_dir, state.get("output_dir")
    )
    return envelope_response({"task_id": task_id, "markers": found})


# ------------------------------------------------------------------ priority


def parse_priority(body: bytes) -> int:
    try:
        document = json.loads(body or b"{}")
    except ValueError as err:
        raise BadRequest("request body is not valid JSON") from err
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    value = document.get("priority")
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_PRIORITY:
        raise ValidationFailed(
            [FieldError("priority", f"an integer from {-MAX_PRIORITY} to {MAX_PRIORITY}")]
        )
    return value


def _change_priority(services: Services, task_id: str, priority: int) -> dict[str, Any]:
    """Blocking (state.json). Conflict unless the job is still queued when its lock is held."""

    def change(state: dict[str, Any]) -> None:
        if state["status"] != Status.QUEUED.value:
            raise Conflict(
                f"task {task_id} is {state['status']}: only a queued task's priority can change",
                {"task_id": task_id, "status": state["status"]},
            )
        state["priority"] = priority

    return services.store.update_state(task_id, change)


async def set_priority(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    priority = parse_priority(await request.read())
    before = services.store.get(task_id)
    state = await asyncio.to_thread(_change_priority, services, task_id, priority)
    services.bus.emit(
        "jobs", task_id, PRIORITY_EVENT, {"priority": priority, "previous": before.get("priority")}
    )
    services.supervisor.wake()
    queue = services.supervisor.queue_info().get(task_id, {})
    return envelope_response(
        {
            "task_id": task_id,
            "priority": state["priority"],
            "queue_position": queue.get("position"),
        },
        200,
        "priority changed",
    )


# ------------------------------------------------------------------ validate and config


def min_vram_gb(catalog: Catalog, model_type: str) -> float | None:
    model = catalog.get(model_type)
    return model.min_vram_gb if model is not None else None


def vram_warning(needed_gb: float | None, free_mb: list[int]) -> str | None:
    """A warning when the model's minimum VRAM exceeds every GPU's free memory."""
    if needed_gb is None or not free_mb or any(needed_gb * 1024 <= f for f in free_mb):
        return None
    return (
        f"the model needs at least {needed_gb:g} GB of GPU memory; the most any GPU has "
        f"free now is {max(free_mb) / 1024:.1f} GB"
    )


def validation_warnings(services: Services, spec: JobSpec) -> list[str]:
    warnings = []
    if spec.task_id is not None and services.store.exists(spec.task_id):
        warnings.append(f"task {spec.task_id} exists: starting would return the existing task")
    free = [g.memory_free for g in services.monitor.latest if g.error is None]
    vram = vram_warning(min_vram_gb(services.catalog, spec.model_type), free)
    if vram:
        warnings.append(vram)
    job = QueuedJob.submitted(spec)
    problem = check_feasible(job, services.supervisor.gpu_views(), time.time())
    if problem is not None:
        warnings.append(problem.message)
    return warnings


async def validate_training(request: web.Request) -> web.Response:
    """422 with ``data.errors`` as start gives; else the files start would generate."""
    services = request.app[SERVICES]
    body, fmt = await request.read(), document_format(request)
    spec = await asyncio.to_thread(
        lambda: validate_job(
            parse_job_document(body, fmt), data_roots=services.config.daemon.data_roots
        )
    )
    task_dir = spec.task_id or "<task_id>"
    config_toml, dataset_toml = render_configs(
        spec,
        output_dir=services.config.daemon.output_root / task_dir,
        dataset_toml=services.layout.job_dir(task_dir) / names.DATASET_TOML,
    )
    return envelope_response(
        {
            "valid": True,
            "warnings": validation_warnings(services, spec),
            "config_toml": config_toml,
            "dataset_toml": dataset_toml,
            "required_gpus": len(spec.gpu_ids) if spec.gpu_ids else spec.required_gpus,
            "min_vram_gb": min_vram_gb(services.catalog, spec.model_type),
        }
    )


def _read_config(job_dir: Path) -> dict[str, Any]:
    job = json.loads((job_dir / names.JOB_FILE).read_bytes())
    return {
        "job": job.get("spec"),
        "config_toml": (job_dir / names.CONFIG_TOML).read_text(encoding="utf-8"),
        "dataset_toml": (job_dir / names.DATASET_TOML).read_text(encoding="utf-8"),
    }


async def get_config(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    services.store.get(task_id)
    view = await asyncio.to_thread(_read_config, services.layout.job_dir(task_id))
    return envelope_response({"task_id": task_id, **view})


def scanned_alerts(job_dir: Path) -> list[dict[str, Any]]:
    """The alert events as a plain scan of events.jsonl finds them (the cache's baseline)."""
    path = job_dir / names.EVENTS_FILE
    found = read_records(path, (field_bytes("type", "alert"),))
    return [e for e in found if e.get("type") == "alert"]


async def get_alerts(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    services.store.get(task_id)
    job_dir = services.layout.job_dir(task_id)
    alerts = await asyncio.to_thread(request.app[JOB_CACHE].alert_events, job_dir)
    return envelope_response({"task_id": task_id, "alerts": alerts})


ROUTES = (
    Route("POST", f"{PREFIX}/validate", validate_training, permission="training"),
    Route("GET", f"{PREFIX}/{{task_id}}/series", get_series),
    Route("GET", f"{PREFIX}/{{task_id}}/markers", get_markers),
    Route("POST", f"{PREFIX}/{{task_id}}/priority", set_priority, permission="training"),
    Route("GET", f"{PREFIX}/{{task_id}}/config", get_config),
    Route("GET", f"{PREFIX}/{{task_id}}/alerts", get_alerts),
)
