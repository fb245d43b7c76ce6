"""Middlewares: the one place where errors become envelopes.

Every ``DpdError`` becomes its envelope; aiohttp's own HTTP errors (404 on unknown routes,
405, 413 for oversize bodies) are mapped to the same envelope; anything else is a 500
whose traceback goes to the log and never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from dpd.envelope import make_envelope
from dpd.errors import DpdError
from dpd.http.common import RATE_HEADERS

log = logging.getLogger("dpd.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_MESSAGES = {
    400: "bad request",
    401: "missing or invalid API key",
    403: "permission denied",
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    415: "unsupported media type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DpdError as err:
        return _error_response(err.code, err.message, err.data, request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        message = _HTTP_MESSAGES.get(err.status, err.reason)
        data: dict[str, object] | None = None
        if err.status == 405:
            allowed = sorted(getattr(err, "allowed_methods", ()) or ())
            data = {"allowed_methods": allowed}
            response = _error_response(err.status, message, data, request)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        if err.status == 404:
            data = {"path": request.path}
        return _error_response(err.status, message, data, request)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return _error_response(500, "internal error", None, request)


def _error_response(code: int, message: str, data: object, request: web.Request) -> web.Response:
    headers = request.get(RATE_HEADERS)
    return web.json_response(make_envelope(code, message, data), status=code, headers=headers)
