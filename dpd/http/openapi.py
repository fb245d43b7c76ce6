"""``GET /api/v1/openapi.json``: the OpenAPI 3.1 description of every route.

The description is data (``openapi.yaml`` beside this module), read once and served as
JSON without auth. It is kept true by tests/http/test_openapi.py, which compares
``documented_operations`` with ``app_operations`` of the fully built app and validates real
answers against the schemas: a route added without documentation fails the suite.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

from aiohttp import web

from dpd import __version__
from dpd.jobs.yamlload import load_yaml

PATH = "/api/v1/openapi.json"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_REGEX_PART = re.compile(r"\{([^}:]+):[^}]*\}")  # aiohttp's {name:regex} -> {name}


def setup(app: web.Application) -> None:
    _document_bytes()  # read the file now, not on the loop at the first request
    app.router.add_get(PATH, get_openapi)


@functools.cache
def load_document() -> dict[str, Any]:
    text = resources.files("dpd.http").joinpath("openapi.yaml").read_text(encoding="utf-8")
    document: dict[str, Any] = load_yaml(text)
    document["info"]["version"] = __version__
    return document


@functools.cache
def _document_bytes() -> bytes:
    return json.dumps(load_document(), ensure_ascii=False).encode()


async def get_openapi(request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the document."""
    return {
        (method.upper(), path)
        for path, item in document.get("paths", {}).items()
        for method in item
        if method in METHODS
    }


def app_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the app serves, in OpenAPI's path notation. HEAD routes
    that aiohttp adds beside each GET are left out (they mirror the GET)."""
    return {op for route in app.router.routes() if (op := route_operation(route)) is not None}


def route_operation(route: web.AbstractRoute) -> tuple[str, str] | None:
    """(METHOD, path) of one route in OpenAPI's path notation; None for HEAD and catch-all."""
    info = route.resource.get_info() if route.resource is not None else {}
    path = info.get("path") or info.get("formatter") or info.get("prefix")
    if not path or route.method in ("HEAD", "*"):
        return None
    return route.method, openapi_path(path)


def openapi_path(path: str) -> str:
    """An aiohttp path template in OpenAPI's notation: ``{name:regex}`` becomes ``{name}``."""
    return _REGEX_PART.sub(r"{\1}", path)
