"""Routes as data: each route module lists its ``Route``s, with the permission a caller's key
needs and the rate class the call counts against, and ``add_routes`` registers them.

The registered handler checks, in this order and before the route's own code runs: a valid
key (401; ``permission=None``, as reading routes have) or the named permission (401/403),
then the rate limit (429 with the X-RateLimit-* headers; no ``rate``: unlimited). A handler
cannot forget its check, and the OpenAPI test reads the same table (``declared_routes``) to
keep the document's 403 and 429 answers true.

``dpd.http.common.require_permission`` and ``rate_limit`` remain for checks a table cannot
express (a permission that depends on the body).

Routes that need no key are added directly, not through this table: those outside /api/v1
(``/healthz``, ``/metrics``, the dashboard's pages and ``/login``) and the open paths of
``dpd.http.auth.OPEN_PATHS`` (the OpenAPI document, ``/auth/session``, which checks its
caller itself). Every other /api/v1 route is in the table (tests/http/test_openapi.py).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiohttp import web

from dpd.http.common import principal, rate_limit, require_permission

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    permission: str | None = None  # one of dpd.keys.PERMISSIONS; None: any valid key
    rate: str | None = None  # a [ratelimit] class (dpd.http.ratelimit.ROUTE_CLASSES)


# Every Route added to an app, in order, for the OpenAPI test and the route listing.
DECLARED: web.AppKey[list[Route]] = web.AppKey("dpd.routes", list)


def add_routes(app: web.Application, routes: Iterable[Route]) -> None:
    if DECLARED not in app:
        app[DECLARED] = []
    declared = app[DECLARED]
    for route in routes:
        if route.method == "GET":  # with its HEAD, as add_get makes it
            app.router.add_get(route.path, guarded(route))
        else:
            app.router.add_route(route.method, route.path, guarded(route))
        declared.append(route)


def declared_routes(app: web.Application) -> list[Route]:
    if DECLARED not in app:
        return []
    declared: list[Route] = app[DECLARED]
    return declared.copy()


def guarded(route: Route) -> Handler:
    """``route.handler`` behind its permission and rate checks; keeps the handler's name and
    module (``functools.wraps``) for logs and for the OpenAPI test's reading of its source."""
    handler = route.handler

    @functools.wraps(handler)
    async def guard(request: web.Request) -> web.StreamResponse:
        if route.permission is None:
            principal(request)
        else:
            require_permission(request, route.permission)
        if route.rate is not None:
            await rate_limit(request, route.rate)
        return await handler(request)

    return guard
