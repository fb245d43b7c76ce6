"""What every route module shares: the envelope response, the caller's identity and
permissions, rate limiting, and parsing of query parameters and JSON (or YAML) bodies.

Route modules raise ``dpd.errors`` exceptions; one middleware (``dpd.http.middlewares``)
turns them into the envelope. Nothing here writes a response for an error itself.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dpd.envelope import make_envelope
from dpd.errors import BadRequest, Forbidden, Unauthorized

PERMISSIONS = ("training", "preprocessing", "model_download", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id (never the key), its user and permissions."""

    key_id: str
    user: str
    permissions: frozenset[str] = field(default_factory=frozenset)

    def has(self, permission: str) -> bool:
        return "admin" in self.permissions or permission in self.permissions


# Set by the auth middleware on every authenticated /api/v1 request.
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("dpd.principal", Principal)
# A coroutine ``(request, route_class) -> None`` that raises TooManyRequests past the limit
# and records the X-RateLimit-* headers in request[RATE_HEADERS]; absent means unlimited.
RateLimitCheck = Callable[[web.Request, str], Awaitable[None]]
RATE_LIMITER = web.AppKey[RateLimitCheck]("dpd.rate_limiter")
RATE_HEADERS: web.RequestKey[dict[str, str]] = web.RequestKey("dpd.rate_headers", dict)


def envelope_response(
    data: Any = None, code: int = 200, message: str = "success", headers: Any = None
) -> web.Response:
    return web.json_response(make_envelope(code, message, data), status=code, headers=headers)


def principal(request: web.Request) -> Principal:
    who: Principal | None = request.get(PRINCIPAL)
    if who is None:
        raise Unauthorized()
    return who


def require_permission(request: web.Request, permission: str) -> Principal:
    """401 without a valid key, 403 with a key that lacks ``permission``."""
    who = principal(request)
    if not who.has(permission):
        raise Forbidden(f"this API key lacks the {permission!r} permission")
    return who


async def rate_limit(request: web.Request, route_class: str) -> None:
    check = request.app.get(RATE_LIMITER)
    if check is not None:
        await check(request, route_class)


def query_int(
    request: web.Request,
    name: str,
    default: int | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, got {text!r}") from None
    if minimum is not None and value < minimum:
        raise BadRequest(f"query parameter {name!r} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise BadRequest(f"query parameter {name!r} must be <= {maximum}, got {value}")
    return value


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    lowered = text.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false, got {text!r}")


def query_choice(
    request: web.Request, name: str, choices: tuple[str, ...], default: str | None = None
) -> str | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if text not in choices:
        raise BadRequest(f"query parameter {name!r} must be one of {', '.join(choices)}")
    return text


def parse_json(body: bytes, what: str = "request body") -> Any:
    """The decoded JSON of ``body``; BadRequest (400) for anything that is not plain JSON:
    invalid UTF-8 or syntax, NaN/Infinity, an integer of more digits than Python converts,
    nesting past the interpreter's recursion limit (json's decoder recurses per level)."""
    try:
        return json.loads(body.decode("utf-8-sig"), parse_constant=_refuse_constant)
    except RecursionError as err:
        raise BadRequest(f"{what} is nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise BadRequest(f"{what} is not valid JSON: {_brief(err)}") from err


async def json_body(request: web.Request, default: Any = None) -> Any:
    """The request's JSON body (``default`` when it is empty or blank), via parse_json."""
    body = await request.read()
    if not body.strip():
        return default
    return parse_json(body)


# Content types that mark a job document as YAML; anything else (none included) is JSON.
YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})


def document_format(request: web.Request) -> str:
    """Says "yaml" for a body sent as YAML (``YAML_MEDIA_TYPES``), else "json": the format
    ``dpd.jobs.spec.parse_job_document`` reads it in (YAML through ``load_yaml``). The body
    itself is read with ``request.read()`` either way, under the same size limit (413)."""
    return "yaml" if request.content_type.lower() in YAML_MEDIA_TYPES else "json"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _brief(err: Exception) -> str:
    return " ".join(str(err).split())[:200]
