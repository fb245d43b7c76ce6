"""System overview (api.md §7.1): the machine, its GPUs, the jobs, uptime and version.

Machine figures come from psutil in a worker thread (``disk_usage`` is a statfs that can
stall on a sick network mount); memory and disk are in MB (MiB) like every size of the API.
The disk is the one holding ``storage_root`` (or its nearest existing parent, so a fresh
install without the directory still answers). CPU usage is the average since the previous
call, primed when the routes are set up: psutil's first sample would always say 0.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
from aiohttp import web

from dpd import __version__
from dpd.http.common import envelope_response
from dpd.http.routes.gpu import current_entries, summary
from dpd.http.routing import Route, add_routes
from dpd.services import SERVICES, Services

PREFIX = "/api/v1/system"
MB = 1024 * 1024


def setup(app: web.Application) -> None:
    psutil.cpu_percent(interval=None)  # start the CPU sampling window
    add_routes(app, ROUTES)


def machine_figures(storage_root: Path) -> dict[str, Any]:
    """Blocking: call from a thread."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(existing_parent(storage_root)))
    return {
        "cpu_count": psutil.cpu_count(logical=True),
        "cpu_usage": psutil.cpu_percent(interval=None),
        "memory_total": memory.total // MB,
        "memory_used": (memory.total - memory.available) // MB,
        "memory_available": memory.available // MB,
        "disk_total": disk.total // MB,
        "disk_used": disk.used // MB,
        "disk_free": disk.free // MB,
    }


def existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def task_counts(by_status: dict[str, int]) -> dict[str, int]:
    """``total`` plus every status (api.md shows five; ``stopping`` and ``stopped`` too)."""
    return {"total": sum(by_status.values()), **by_status}


def gpu_counts(gpu_summary: dict[str, int]) -> dict[str, int]:
    return {
        "total": gpu_summary["total_gpus"],
        "available": gpu_summary["available_gpus"],
        "busy": gpu_summary["busy_gpus"],
        "unknown": gpu_summary["unknown_gpus"],
    }


def nats_state(services: Services) -> dict[str, Any] | None:
    if services.nats is None:
        return None
    return dict(services.nats.status())


async def get_overview(request: web.Request) -> web.Response:
    services: Services = request.app[SERVICES]
    figures = await asyncio.to_thread(machine_figures, services.config.daemon.storage_root)
    return envelope_response(
        {
            "system": figures,
            "gpus": gpu_counts(summary(current_entries(services))),
            "tasks": task_counts(services.store.count_by_status()),
            "uptime": int(time.time() - services.started_at),
            "version": __version__,
            "node": services.config.daemon.node,
            "nats": nats_state(services),
        }
    )


ROUTES = (Route("GET", f"{PREFIX}/overview", get_overview),)
