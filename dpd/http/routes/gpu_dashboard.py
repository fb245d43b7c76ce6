"""``GET /api/v1/gpu/history``: the last hour of each GPU (``dpd.http.gpu_history``), and
the per-process view ``/gpu/status`` adds to each GPU (which job each process belongs to,
foreign ones flagged).

Owns: the history and its GPU-monitor listener, installed when the app starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from dpd.http.common import envelope_response, principal, query_int, rate_limit
from dpd.http.gpu_history import KEEP_SECONDS, GpuHistory, process_entries, process_owners
from dpd.services import SERVICES, Services
from dpd.supervisor.gpus import GpuProcess

PATH: Final = "/api/v1/gpu/history"
GPU_HISTORY: web.AppKey[GpuHistory] = web.AppKey("dpd.gpu_history", GpuHistory)


def setup(app: web.Application) -> None:
    app[GPU_HISTORY] = GpuHistory()
    app.cleanup_ctx.append(_record_history)
    app.router.add_get(PATH, get_history)


async def _record_history(app: web.Application) -> AsyncIterator[None]:
    services, history = app[SERVICES], app[GPU_HISTORY]
    recording = True

    def on_snapshot(snapshot: Any) -> None:
        if recording:
            history.record(snapshot)

    history.record(services.monitor.latest)
    services.monitor.add_listener(on_snapshot)
    yield
    recording = False


async def get_history(request: web.Request) -> web.Response:
    principal(request)
    await rate_limit(request, "gpu")
    seconds = query_int(request, "seconds", 3600, 1, 3600) or 3600
    services = request.app[SERVICES]
    gpus = request.app[GPU_HISTORY].view(min(seconds, KEEP_SECONDS))
    return envelope_response({"interval": services.monitor.interval, "gpus": gpus})


def trainer_pids(services: Services) -> dict[int, str]:
    return {
        job.shim.trainer_pid: task_id
        for task_id, job in services.supervisor.running.items()
        if job.shim is not None and job.shim.trainer_pid
    }


async def add_processes(services: Services, entries: list[dict[str, Any]]) -> None:
    """Give each /gpu/status entry its ``processes``: pid, memory, owning task, foreign."""
    by_gpu = {info.gpu_id: info.processes for info in services.monitor.latest}
    every: list[GpuProcess] = [p for ps in by_gpu.values() for p in ps]
    owners = {}
    if every:
        owners = await asyncio.to_thread(process_owners, every, trainer_pids(services))
    for entry in entries:
        processes = by_gpu.get(entry["gpu_id"], ())
        entry["processes"] = process_entries(processes, owners)
        entry["foreign_processes"] = sum(1 for p in entry["processes"] if p["foreign"])
