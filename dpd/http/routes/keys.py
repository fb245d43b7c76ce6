"""``POST /auth/generate-key`` (api.md §10.2): an administrator makes a key for a user.

The answer carries the raw key once; only its hash is stored (``dpd.keys``). Lifetime is
``auth.key_expire_days`` unless the body asks for ``expire_days`` (0 = never expires).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from dpd.errors import BadRequest, FieldError, ValidationFailed
from dpd.http.auth import KEY_STORE
from dpd.http.common import envelope_response, parse_json
from dpd.http.routing import Route, add_routes
from dpd.keys import EXPIRE_DAYS_RULE, PERMISSIONS, ApiKey, valid_expire_days
from dpd.services import SERVICES

PREFIX = "/api/v1/auth"
MAX_USER_LENGTH = 128


def setup(app: web.Application) -> None:
    add_routes(app, ROUTES)


def parse_key_request(body: bytes, default_expire_days: int) -> tuple[str, list[str], int]:
    """(user, permissions, expire_days) from the body; 400 if unparseable, 422 listing every
    problem if invalid."""
    document = parse_json(body) if body.strip() else {}
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    errors: list[FieldError] = []
    user = document.get("user_id")
    if not isinstance(user, str) or not user.strip() or len(user) > MAX_USER_LENGTH:
        errors.append(FieldError("user_id", f"a non-empty string of <= {MAX_USER_LENGTH} chars"))
    permissions = document.get("permissions")
    if not isinstance(permissions, list) or not permissions:
        errors.append(FieldError("permissions", f"a non-empty list of: {', '.join(PERMISSIONS)}"))
    else:
        for index, permission in enumerate(permissions):
            if permission not in PERMISSIONS:
                errors.append(
                    FieldError(f"permissions[{index}]", f"unknown permission {permission!r}")
                )
    expire_days = document.get("expire_days", default_expire_days)
    if not valid_expire_days(expire_days):
        errors.append(FieldError("expire_days", EXPIRE_DAYS_RULE))
    unknown = sorted(set(document) - {"user_id", "permissions", "expire_days"})
    errors.extend(FieldError(name, "unknown field") for name in unknown)
    if errors:
        raise ValidationFailed(errors)
    return str(user).strip(), list(permissions or []), int(expire_days)


def key_view(raw_key: str, record: ApiKey) -> dict[str, Any]:
    return {
        "api_key": raw_key,
        "key_id": record.key_id,
        "user_id": record.user,
        "permissions": list(record.permissions),
        "created_at": record.created_at,
        "expires_at": record.expires_at,
    }


async def generate_key(request: web.Request) -> web.Response:
    default_days = request.app[SERVICES].config.auth.key_expire_days
    user, permissions, expire_days = parse_key_request(await request.read(), default_days)
    store = request.app[KEY_STORE]
    raw_key, record = await asyncio.to_thread(store.create, user, permissions, expire_days)
    return envelope_response(key_view(raw_key, record), 201, "API key generated")


ROUTES = (Route("POST", f"{PREFIX}/generate-key", generate_key, permission="admin", rate="auth"),)
