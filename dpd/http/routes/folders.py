"""The submit page's dataset picker: folders under ``daemon.data_roots``.

    GET /api/v1/folders                  the data roots, with their counts
    GET /api/v1/folders?path=<dir>       the subdirectories of <dir> (under a root), with
                                         how many images, videos and captions each holds

Not under /api/v1/datasets: a preprocessed dataset may be called "folders". The directory
reads run in a worker thread (``dpd.preprocess.folders``, which also bounds and confines them).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Final

from aiohttp import web

from dpd.config import Config
from dpd.errors import BadRequest, NotFound
from dpd.http.common import envelope_response
from dpd.http.routing import Route, add_routes
from dpd.preprocess.folders import (
    MAX_FILES,
    MAX_FOLDERS,
    FolderMissing,
    FolderRefused,
    list_folders,
)

PATH: Final = "/api/v1/folders"
CONFIG: web.AppKey[Config] = web.AppKey("dpd.folders.config", Config)


def setup(app: web.Application, config: Config) -> None:
    app[CONFIG] = config
    add_routes(app, ROUTES)


async def get_folders(request: web.Request) -> web.Response:
    asked = request.query.get("path") or None
    roots = list(request.app[CONFIG].daemon.data_roots)
    try:
        listing = await asyncio.to_thread(list_folders, asked, roots)
    except FolderRefused as err:  # 400, not 403: 403 means the key lacks a permission
        raise BadRequest(str(err), {"path": asked}) from None
    except FolderMissing as err:
        raise NotFound(str(err), {"path": asked}) from None
    data = dataclasses.asdict(listing)
    data["max_folders"], data["max_files"] = MAX_FOLDERS, MAX_FILES
    return envelope_response(data)


ROUTES = (Route("GET", PATH, get_folders),)
