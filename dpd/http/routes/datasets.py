"""Dataset routes (beyond the API document): what each directory under preprocessed_root
holds, and for a model type and its frame buckets, what diffusion-pipe will keep.

    GET /api/v1/datasets                 every dataset with counts
    GET /api/v1/datasets/{name}          items; ?model_type=wan[&frame_buckets=1,33,65]
                                         adds which bucket keeps each item, and what is dropped
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from dpd.config import Config
from dpd.errors import BadRequest, NotFound
from dpd.http.common import envelope_response
from dpd.http.routing import Route, add_routes
from dpd.preprocess.datasets import DatasetCatalog, bucket_report, summarize
from dpd.preprocess.plan import parse_frame_buckets
from dpd.preprocess.uploads import DATASET_RE

PREFIX = "/api/v1/datasets"
CATALOG: web.AppKey[DatasetCatalog] = web.AppKey("dpd.datasets.catalog", DatasetCatalog)


def setup(app: web.Application, config: Config) -> None:
    app[CATALOG] = DatasetCatalog(config.daemon.preprocessed_root, config.preprocess.ffprobe)
    add_routes(app, ROUTES)


async def list_datasets(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    names = await asyncio.to_thread(catalog.names)
    datasets = []
    for name in names:
        items = await catalog.items(name)
        datasets.append({"name": name, "path": str(catalog.root / name), **summarize(items)})
    return envelope_response({"datasets": datasets, "total": len(datasets)})


async def get_dataset(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    name = request.match_info["name"]
    if not DATASET_RE.match(name) or ".." in name:
        raise NotFound(f"dataset {name!r} not found", {"name": name})
    try:
        items = await catalog.items(name)
    except FileNotFoundError:
        raise NotFound(f"dataset {name!r} not found", {"name": name}) from None
    data: dict[str, Any] = {"name": name, "path": str(catalog.root / name), **summarize(items)}
    data["items"] = [item.__dict__ for item in items]
    model_type = request.query.get("model_type")
    if model_type:
        data["buckets"] = _report(items, model_type, request.query.get("frame_buckets"))
    return envelope_response(data)


def _report(items: list[Any], model_type: str, buckets_text: str | None) -> dict[str, Any]:
    try:
        buckets = parse_frame_buckets(buckets_text) if buckets_text else None
        return bucket_report(items, model_type, buckets)
    except ValueError as err:
        raise BadRequest(str(err)) from err


ROUTES = (
    Route("GET", PREFIX, list_datasets),
    Route("GET", f"{PREFIX}/{{name}}", get_dataset),
)
