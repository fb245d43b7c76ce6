"""Model routes (api.md §6): the catalog with installed state, and model downloads.

``GET /models/list`` needs any valid key; every download route needs ``model_download``.
``POST /models/download`` answers 202 once the download is planned (every file's size and
hash known, disk space checked) and running in the background; its errors (422 unknown
model or component, 403 gated repository without a usable token, 404 missing file, 409
already downloading, 507 disk space) come from ``DownloadManager.submit``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from dpd.http.common import envelope_response, parse_json
from dpd.http.routing import Route, add_routes
from dpd.models.catalog import Catalog, CatalogModel, installed_state
from dpd.models.downloads import DownloadManager

PREFIX = "/api/v1/models"
PERMISSION = "model_download"
MANAGER: web.AppKey[DownloadManager] = web.AppKey("dpd.models.manager", DownloadManager)
CATALOG: web.AppKey[Catalog] = web.AppKey("dpd.models.catalog", Catalog)


def setup(app: web.Application, manager: DownloadManager, catalog: Catalog) -> None:
    app[MANAGER] = manager
    app[CATALOG] = catalog
    add_routes(app, ROUTES)


def model_entry(model: CatalogModel, installed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One model of ``/models/list``: the API document's fields plus its components."""
    components = [
        {
            "name": c.name,
            "repo": c.repo or None,
            "gated": c.gated,
            "downloadable": c.downloadable,
            "verified": c.verified,
            "note": c.note or None,
            "config_key": c.config_key,
            "installed": installed[c.name]["installed"],
            "path": installed[c.name]["path"],
        }
        for c in model.components
    ]
    return {
        "id": model.id,
        "name": model.name,
        "type": model.type,
        "version": model.version,
        "supports_lora": model.supports_lora,
        "supports_full_finetune": model.supports_full_finetune,
        "supports_fp8": model.supports_fp8,
        "min_vram_gb": model.min_vram_gb,
        "recommended_vram_gb": model.recommended_vram_gb,
        "config_path": components[0]["path"],
        "installed": all(c["installed"] for c in components),
        "components": components,
    }


def catalog_entries(catalog: Catalog, models_root: Path) -> list[dict[str, Any]]:
    """Blocking (stats the model files): call from a thread."""
    return [model_entry(m, installed_state(m, models_root)) for m in catalog.models]


async def list_models(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    entries = await asyncio.to_thread(catalog_entries, request.app[CATALOG], manager.models_root)
    return envelope_response({"models": entries})


async def start_download(request: web.Request) -> web.Response:
    body = parse_json(await request.read())
    view = await request.app[MANAGER].submit(body)
    return envelope_response(view, code=202, message="model download started")


async def list_downloads(request: web.Request) -> web.Response:
    downloads = request.app[MANAGER].list()
    return envelope_response({"downloads": downloads, "total": len(downloads)})


async def get_download(request: web.Request) -> web.Response:
    return envelope_response(request.app[MANAGER].get(request.match_info["download_id"]))


async def cancel_download(request: web.Request) -> web.Response:
    view = await request.app[MANAGER].cancel(request.match_info["download_id"])
    return envelope_response(view, message="model download cancelled")


ROUTES = (
    Route("GET", f"{PREFIX}/list", list_models),
    Route("POST", f"{PREFIX}/download", start_download, permission=PERMISSION),
    Route("GET", f"{PREFIX}/downloads", list_downloads, permission=PERMISSION),
    Route("GET", f"{PREFIX}/download/{{download_id}}", get_download, permission=PERMISSION),
    Route(
        "POST", f"{PREFIX}/download/{{download_id}}/cancel", cancel_download, permission=PERMISSION
    ),
)
