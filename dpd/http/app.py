"""Builds the aiohttp application: middlewares first, then every route module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from dpd.http.middlewares import error_middleware

if TYPE_CHECKING:
    from dpd.services import Services


@dataclass
class Health:
    """Mutable after start-up (an aiohttp app's own mapping is frozen once it runs)."""

    ready: bool = False


HEALTH: web.AppKey[Health] = web.AppKey("dpd.health", Health)


async def healthz(request: web.Request) -> web.Response:
    """Liveness without auth; 503 until start-up recovery has finished."""
    if not request.app[HEALTH].ready:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ok"})


def build_app(
    max_body_bytes: int = 1 << 20, middlewares: Sequence[Middleware] = ()
) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, *middlewares], client_max_size=max_body_bytes
    )
    app[HEALTH] = Health()
    app.router.add_get("/healthz", healthz)
    return app


def setup_routes(app: web.Application, services: Services) -> None:
    """Every route module; each registers its own paths."""
    from dpd.http import openapi, prometheus
    from dpd.http.routes import (
        dashboard,
        datasets,
        events_stream,
        gpu,
        gpu_dashboard,
        job_dashboard,
        job_files,
        keys,
        logs,
        model_catalog,
        models,
        preprocess,
        session,
        stream,
        system,
        training,
        ws,
    )

    training.setup(app)
    gpu.setup(app)
    system.setup(app)
    keys.setup(app)
    openapi.setup(app)
    prometheus.setup(app)
    preprocess.setup(app, services.preprocess, services.config)
    datasets.setup(app, services.config)
    models.setup(app, services.downloads, services.catalog)
    logs.setup(app)
    stream.setup(app)
    ws.setup(app)
    # the dashboard (issue 16): its pages, login and live data
    dashboard.setup(app)
    session.setup(app)
    events_stream.setup(app)
    job_dashboard.setup(app)
    job_files.setup(app)
    gpu_dashboard.setup(app)
    model_catalog.setup(app)
    # the submit page's dataset picker over the data roots
    from dpd.http.routes import folders

    folders.setup(app, services.config)
