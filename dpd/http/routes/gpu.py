"""GPU routes (api.md §2): ``/gpu/status`` and ``/gpu/available``.

Both read what is already in memory — the monitor's latest snapshot, the supervisor's
assignments, the store's index — so they never wait for NVML. A GPU's status comes from the
same function the scheduler uses (``gpu_status`` through ``Supervisor.gpu_views``), so what the
API calls ``available`` is exactly what a job could be placed on now.

``recommended_for`` lists the model types whose minimum VRAM fits the GPU's free memory, from
the model catalog (``dpd.models.catalog``). The shaping functions are pure and tested alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from dpd.http.common import envelope_response, principal, query_choice, query_int, rate_limit
from dpd.http.routes.gpu_dashboard import add_processes
from dpd.http.views import iso_from_unix
from dpd.models.catalog import load_catalog
from dpd.services import SERVICES, Services
from dpd.supervisor.gpus import AVAILABLE, BUSY, PREPROCESSING, TRAINING, UNKNOWN, GpuInfo

PREFIX = "/api/v1/gpu"
TASK_TYPES = ("training", "preprocessing")
OCCUPIED = (TRAINING, PREPROCESSING, BUSY)
CATALOG_EXTRA = "catalog"  # services.extras key of the loaded model catalog

Recommend = Callable[[int], list[str]]


def setup(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/status", get_gpu_status)
    app.router.add_get(f"{PREFIX}/available", get_available_gpus)


# ----------------------------------------------------------------- pure shaping


def task_fields(
    task_id: str | None, kind: str | None, state: Mapping[str, Any] | None
) -> dict[str, Any]:
    """current_task, task_type, task_progress, estimated_remaining_time of one GPU.

    ``task_type`` names the work as the API document's example does (``flux_lora``): the
    model type and the adapter of a training; ``preprocessing`` for a preprocessing task.
    """
    if task_id is None:
        return {
            "current_task": None,
            "task_type": None,
            "task_progress": None,
            "estimated_remaining_time": None,
        }
    progress = (state or {}).get("progress") or {}
    return {
        "current_task": task_id,
        "task_type": _task_type(kind, state),
        "task_progress": progress.get("overall_progress"),
        "estimated_remaining_time": progress.get("eta_seconds"),
    }


def _task_type(kind: str | None, state: Mapping[str, Any] | None) -> str | None:
    if kind != TRAINING or state is None:
        return kind
    model_type = state.get("model_type")
    adapter = ((state.get("config") or {}).get("adapter") or {}).get("type")
    if model_type and adapter:
        return f"{model_type}_{adapter}"
    return str(model_type) if model_type else kind


def gpu_entry(info: GpuInfo, status: str, tasks: dict[str, Any]) -> dict[str, Any]:
    """One element of ``/gpu/status``'s ``gpus`` (api.md §2.1); ``error`` says why unknown."""
    return {
        "gpu_id": info.gpu_id,
        "name": info.name,
        "memory_total": info.memory_total,
        "memory_used": info.memory_used,
        "memory_free": info.memory_free,
        "memory_utilization": info.memory_utilization,
        "utilization_gpu": info.utilization_gpu,
        "temperature": info.temperature,
        "power_usage": info.power_usage,
        "power_limit": info.power_limit,
        "status": status,
        **tasks,
        "error": info.error,
    }


def summary(entries: list[dict[str, Any]]) -> dict[str, int]:
    """``available_memory`` is the free memory of every GPU that answers, busy or not, as in
    the API document's example (16384 + 4096 = 20480)."""
    return {
        "total_gpus": len(entries),
        "available_gpus": sum(1 for e in entries if e["status"] == AVAILABLE),
        "busy_gpus": sum(1 for e in entries if e["status"] in OCCUPIED),
        "unknown_gpus": sum(1 for e in entries if e["status"] == UNKNOWN),
        "total_memory": sum(e["memory_total"] for e in entries),
        "available_memory": sum(e["memory_free"] for e in entries if e["status"] != UNKNOWN),
    }


def available_entries(
    entries: list[dict[str, Any]],
    recommend: Recommend,
    min_memory: int | None = None,
    task_type: str | None = None,
) -> list[dict[str, Any]]:
    """The GPUs a new task could use now (api.md §2.2).

    ``task_type=training`` also drops GPUs too small for any model type of the catalog (no
    training could start there); preprocessing has no such floor.
    """
    chosen = []
    for entry in entries:
        if entry["status"] != AVAILABLE:
            continue
        if min_memory is not None and entry["memory_free"] < min_memory:
            continue
        fits = recommend(entry["memory_free"])
        if task_type == "training" and not fits:
            continue
        chosen.append(
            {
                "gpu_id": entry["gpu_id"],
                "name": entry["name"],
                "memory_total": entry["memory_total"],
                "memory_free": entry["memory_free"],
                "status": entry["status"],
                "recommended_for": fits,
            }
        )
    return chosen


# ----------------------------------------------------------------- the routes


def current_entries(services: Services) -> list[dict[str, Any]]:
    statuses = {view.gpu_id: view.status for view in services.supervisor.gpu_views()}
    assigned = services.supervisor.assignments()
    entries = []
    for info in services.monitor.latest:
        task_id, kind = assigned.get(info.gpu_id, (None, None))
        state = _state_or_none(services, task_id) if kind == TRAINING else None
        status = statuses.get(info.gpu_id, UNKNOWN)
        entries.append(gpu_entry(info, status, task_fields(task_id, kind, state)))
    return entries


def _state_or_none(services: Services, task_id: str | None) -> dict[str, Any] | None:
    if task_id is None or not services.store.exists(task_id):
        return None
    return services.store.get(task_id)


def recommender(services: Services) -> Recommend:
    """The catalog's ``recommended_for``: the daemon's catalog in ``services.extras`` when it
    put one there, else the configured one (``models.catalog`` or the shipped file), loaded
    once and kept there."""
    catalog = services.extras.get(CATALOG_EXTRA)
    if catalog is None:
        configured = services.config.models.catalog
        catalog = load_catalog(Path(configured) if configured else None)
        services.extras[CATALOG_EXTRA] = catalog
    return catalog.recommended_for


async def get_gpu_status(request: web.Request) -> web.Response:
    principal(request)
    await rate_limit(request, "gpu")
    services = request.app[SERVICES]
    entries = current_entries(services)
    await add_processes(services, entries)  # the dashboard's per-process view (issue 16)
    return envelope_response(
        {"gpus": entries, "summary": summary(entries), "updated_at": _updated(services)}
    )


async def get_available_gpus(request: web.Request) -> web.Response:
    principal(request)
    await rate_limit(request, "gpu")
    min_memory = query_int(request, "min_memory", None, minimum=0)
    task_type = query_choice(request, "task_type", TASK_TYPES)
    services = request.app[SERVICES]
    if CATALOG_EXTRA in services.extras:
        recommend = recommender(services)
    else:  # the first call reads the catalog file, in a thread
        recommend = await asyncio.to_thread(recommender, services)
    chosen = available_entries(current_entries(services), recommend, min_memory, task_type)
    return envelope_response({"available_gpus": chosen})


def _updated(services: Services) -> str | None:
    return iso_from_unix(services.monitor.updated_at)
