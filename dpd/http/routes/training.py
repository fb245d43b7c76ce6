"""Training routes (api.md §3, §4): start, stop, resume, list, detail, progress, metrics.

``POST /training/start`` goes through the same intake as a dropped file
(``dpd.spool.intake.JobIntake``): validate, make the job directory durable, announce, wake the
scheduler. The same ``task_id`` twice never starts a second training: the second call answers
200 with the existing task.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any, Final

from aiohttp import web

from dpd.errors import BadRequest, Conflict, InsufficientResources
from dpd.http import views
from dpd.http.common import (
    document_format,
    envelope_response,
    parse_json,
    principal,
    query_bool,
    query_choice,
    query_int,
)
from dpd.http.routing import Route, add_routes
from dpd.jobs.spec import JobSpec
from dpd.jobs.states import Status
from dpd.services import SERVICES, Services
from dpd.spool import layout as names
from dpd.spool.jsontail import field_bytes, json_lines_backwards
from dpd.spool.store import JobStore, Submission
from dpd.supervisor.scheduler import QueuedJob, check_feasible, plan

PREFIX = "/api/v1/training"
STATUSES = tuple(s.value for s in Status)


def setup(app: web.Application) -> None:
    app[LIST_PAGES] = ListPages()
    app[PROGRESS_VIEWS] = ProgressViews()
    add_routes(app, ROUTES)


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]


# --------------------------------------------------------------------- start


async def start_training(request: web.Request) -> web.Response:
    who = principal(request)
    services = _services(request)
    body = await request.read()
    spec = await services.intake.validate(body, document_format(request))
    if spec.task_id is not None and services.store.exists(spec.task_id):
        state = services.store.get(spec.task_id)
        return envelope_response(_created_view(services, state), 200, "task already exists")
    _check_gpus(services, spec)
    submission = Submission("rest", who.key_id, hashlib.sha256(body).hexdigest())
    state = await services.intake.submit(spec, submission)
    return envelope_response(_created_view(services, state), 201, "training task created")


def _check_gpus(services: Services, spec: JobSpec) -> None:
    """507 if the machine can never run it; 409 if its GPU is busy and it may not queue."""
    job = QueuedJob.submitted(spec)
    gpus = services.supervisor.gpu_views()
    problem = check_feasible(job, gpus, time.time())
    if problem is not None and problem.code == 507:
        raise InsufficientResources(problem.message, problem.data)
    if spec.queue:
        return
    if problem is not None:
        raise Conflict(problem.message, problem.data)
    if not any(
        a.task_id == job.task_id for a in plan([*services.supervisor.queued_jobs(), job], gpus)
    ):
        raise Conflict(
            "no GPU is free for this job now; send queue=true to wait for one",
            {
                "current_tasks": sorted({g.running_task for g in gpus if g.running_task}),
                "available_gpus": [g.gpu_id for g in gpus if g.status == "available"],
            },
        )


def _created_view(services: Services, state: dict[str, Any]) -> dict[str, Any]:
    queue = services.supervisor.queue_info().get(state["task_id"], {})
    return {
        "task_id": state["task_id"],
        "status": state["status"],
        "gpu_id": state.get("gpu_id"),
        "gpu_ids": state.get("gpu_ids"),
        "gpu_name": state.get("gpu_name"),
        "model_type": state.get("model_type"),
        "config": state.get("config"),
        "description": state.get("description"),
        "created_at": state.get("created_at"),
        "queue_position": queue.get("position"),
        "estimated_start_time": views.iso_from_unix(queue.get("estimated_start")),
        "estimated_duration": None,
        "checkpoints": views.checkpoint_plan(state),
    }


# ---------------------------------------------------------------- stop/resume


async def stop_training(request: web.Request) -> web.Response:
    force = query_bool(request, "force", False)
    if request.can_read_body:
        force = _force_from_body(await request.read(), force)
    state = await _services(request).supervisor.stop(request.match_info["task_id"], force=force)
    return envelope_response(views.stop_view(state), 200, "training task stopped")


def _force_from_body(body: bytes, default: bool) -> bool:
    if not body.strip():
        return default
    data = parse_json(body)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    force = data.get("force", default)
    if not isinstance(force, bool):
        raise BadRequest("force must be true or false")
    return force


async def resume_training(request: web.Request) -> web.Response:
    state = await _services(request).supervisor.resume(request.match_info["task_id"])
    return envelope_response(views.task_detail(state), 200, "training task queued for resume")


# --------------------------------------------------------------------- reads


async def list_trainings(request: web.Request) -> web.Response:
    status = query_choice(request, "status", STATUSES)
    gpu_id = query_int(request, "gpu_id", None, minimum=0)
    limit = query_int(request, "limit", 50, minimum=1, maximum=1000) or 50
    offset = query_int(request, "offset", 0, minimum=0) or 0
    page = request.app[LIST_PAGES].page(_services(request).store, (status, gpu_id, limit, offset))
    body = page + str(int(time.time())).encode() + b"}"
    return web.Response(body=body, content_type="application/json")


ListKey = tuple[str | None, int | None, int, int]  # status, gpu_id, limit, offset


class ListPages:
    """Encoded ``/training/list`` answers, up to the timestamp, per query; all dropped when
    the store's generation moves. Polling clients ask the same few pages again and again,
    and copying 10,000 states per request costs more than the rest of the request."""

    MAX_PAGES: Final = 256  # distinct queries kept for one generation

    def __init__(self) -> None:
        self.generation = -1
        self.states: list[dict[str, Any]] = []
        self.pages: dict[ListKey, bytes] = {}

    def page(self, store: JobStore, key: ListKey) -> bytes:
        generation = store.generation  # read first: what follows is at least this new
        if generation != self.generation:
            self.generation, self.states, self.pages = generation, store.states(), {}
        page = self.pages.get(key)
        if page is None:
            if len(self.pages) >= self.MAX_PAGES:
                self.pages.clear()
            page = self.pages[key] = _encode_page(self.states, *key)
        return page


LIST_PAGES: web.AppKey[ListPages] = web.AppKey("dpd.training.list_pages", ListPages)


def _encode_page(
    states: list[dict[str, Any]], status: str | None, gpu_id: int | None, limit: int, offset: int
) -> bytes:
    """The answer up to its ``"timestamp":`` value (the caller adds it and the final brace)."""
    if status is not None or gpu_id is not None:
        states = [
            s
            for s in states
            if (status is None or s["status"] == status)
            and (gpu_id is None or gpu_id in (s.get("gpu_ids") or []))
        ]
    newest_first = range(len(states) - 1 - offset, max(-1, len(states) - 1 - offset - limit), -1)
    page = [states[i] for i in newest_first]
    pagination = {
        "total": len(states),
        "limit": limit,
        "offset": offset,
        "has_more": offset + len(page) < len(states),
    }
    return (
        b'{"code":200,"message":"success","data":{"tasks":['
        + b",".join(_summary_json(s) for s in page)
        + b'],"pagination":'
        + json.dumps(pagination).encode()
        + b'},"timestamp":'
    )


# task_id -> (the state dict it was made from, its encoded summary). The store replaces a
# state dict on every change and never mutates one, so identity says "still current"; the
# strong reference keeps the identity from being reused.
_summaries: dict[str, tuple[dict[str, Any], bytes]] = {}


def _summary_json(state: dict[str, Any]) -> bytes:
    cached = _summaries.get(state["task_id"])
    if cached is not None and cached[0] is state:
        return cached[1]
    encoded = json.dumps(views.task_summary(state), ensure_ascii=False).encode()
    _summaries[state["task_id"]] = (state, encoded)
    return encoded


async def get_training(request: web.Request) -> web.Response:
    services = _services(request)
    state = services.store.get(request.match_info["task_id"])
    detail = views.task_detail(state)
    detail["system_stats"] = _system_stats(services, state)
    detail["metrics"]["step_losses"] = await asyncio.to_thread(
        _step_losses, services, state["task_id"], 200
    )
    if state["status"] == Status.QUEUED.value:
        queue = services.supervisor.queue_info().get(state["task_id"], {})
        detail["queue_position"] = queue.get("position")
        detail["estimated_start_time"] = views.iso_from_unix(queue.get("estimated_start"))
        detail["waiting_for"] = queue.get("waiting_for")
    return envelope_response(detail)


def _system_stats(services: Services, state: dict[str, Any]) -> dict[str, Any] | None:
    gpu_id = state.get("gpu_id")
    if gpu_id is None or state["status"] not in ("running", "stopping"):
        return None
    for info in services.monitor.latest:
        if info.gpu_id == gpu_id:
            return {
                "gpu_memory": {
                    "total": info.memory_total,
                    "used": info.memory_used,
                    "free": info.memory_free,
                    "utilization": info.memory_utilization,
                },
                "gpu_utilization": info.utilization_gpu,
                "gpu_temperature": info.temperature,
                "gpu_power": info.power_usage,
            }
    return None


def _step_losses(services: Services, task_id: str, limit: int) -> list[float]:
    return [p["value"] for p in _newest_points(services, task_id, "loss", "step", limit)]


def _newest_points(
    services: Services, task_id: str, metric: str, kind: str, limit: int | None
) -> list[dict[str, Any]]:
    """The last ``limit`` (None: all) points of ``metric`` and ``kind``, oldest first, read
    from the end of metrics.jsonl: a long run's is hundreds of MiB."""
    found: list[dict[str, Any]] = []
    path = services.layout.job_dir(task_id) / names.METRICS_FILE
    for point in json_lines_backwards(path, contains=field_bytes("metric", metric)):
        if point.get("metric") == metric and point.get("type") == kind:
            found.append(point)
            if len(found) == limit:
                break
    found.reverse()
    return found


async def get_progress(request: web.Request) -> web.Response:
    store, task_id = _services(request).store, request.match_info["task_id"]
    data = request.app[PROGRESS_VIEWS].encoded(store, task_id)
    body = b'{"code":200,"message":"success","data":%s,"timestamp":%d}' % (data, time.time())
    return web.Response(body=body, content_type="application/json")


class ProgressViews:
    """Encoded progress views per task, all dropped when the store's generation moves:
    dashboards poll every task's progress, most of which has not changed since."""

    MAX_VIEWS: Final = 100_000

    def __init__(self) -> None:
        self.generation = -1
        self.views: dict[str, bytes] = {}

    def encoded(self, store: JobStore, task_id: str) -> bytes:
        """404 (``NotFound``) for an unknown task."""
        generation = store.generation  # read first: what follows is at least this new
        if generation != self.generation:
            self.generation, self.views = generation, {}
        view = self.views.get(task_id)
        if view is None:
            view = json.dumps(views.progress_view(store.get(task_id))).encode()
            if len(self.views) < self.MAX_VIEWS:
                self.views[task_id] = view
        return view


PROGRESS_VIEWS: web.AppKey[ProgressViews] = web.AppKey("dpd.training.progress", ProgressViews)


async def get_metrics(request: web.Request) -> web.Response:
    services = _services(request)
    task_id = request.match_info["task_id"]
    services.store.get(task_id)
    metric = request.query.get("metric") or "loss"
    kind = query_choice(request, "type", ("step", "epoch", "eval"), "step") or "step"
    limit = query_int(request, "limit", None, minimum=1, maximum=100_000)
    points = await asyncio.to_thread(_newest_points, services, task_id, metric, kind, limit)
    selected = [metric_view(p, kind) for p in points]
    return envelope_response({"task_id": task_id, "metric": metric, "type": kind, "data": selected})


def metric_view(point: dict[str, Any], kind: str | None) -> dict[str, Any]:
    view: dict[str, Any] = {"value": point.get("value"), "timestamp": point.get("timestamp")}
    if kind == "epoch":
        view = {"epoch": point.get("epoch"), **view}
    else:
        view = {"step": point.get("step"), "epoch": point.get("epoch"), **view}
    return view


ROUTES = (
    Route("POST", f"{PREFIX}/start", start_training, permission="training", rate="training"),
    Route("POST", f"{PREFIX}/stop/{{task_id}}", stop_training, permission="training"),
    Route("GET", f"{PREFIX}/list", list_trainings),
    Route("GET", f"{PREFIX}/{{task_id}}", get_training),
    Route("GET", f"{PREFIX}/{{task_id}}/progress", get_progress),
    Route("GET", f"{PREFIX}/{{task_id}}/metrics", get_metrics),
    Route("POST", f"{PREFIX}/{{task_id}}/resume", resume_training, permission="training"),
)
