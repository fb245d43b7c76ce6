"""``GET /api/v1/models/catalog``: the model catalog for the dashboard's submit form, under
the name the dashboard's contract gives it. The same answer as ``/models/list`` (which
already carries model types, their components' config keys and paths, ``min_vram_gb`` and
installed state), so scripts and the page read one shape."""

from __future__ import annotations

from aiohttp import web

from dpd.http.routes.models import PREFIX, list_models


def setup(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/catalog", list_models)
