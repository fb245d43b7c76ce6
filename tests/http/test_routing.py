"""Routes declared as data (``dpd.http.routing``): the key, the permission and the rate limit
are checked before the handler runs, over real HTTP with the production error middleware
and rate limiter; a small test middleware stands in for the auth middleware."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dpd.config import RateLimit, RateLimitConfig
from dpd.http.common import PRINCIPAL, Principal, envelope_response
from dpd.http.middlewares import error_middleware
from dpd.http.ratelimit import RateLimiter
from dpd.http.routes import training
from dpd.http.routing import Route, add_routes, declared_routes

Client = TestClient[web.Request, web.Application]
KEYS = {"reader": frozenset(), "trainer": frozenset({"training"})}


@web.middleware
async def principal_from_header(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if key in KEYS:
        request[PRINCIPAL] = Principal(key, key, KEYS[key])
    return await handler(request)


class Calls:
    def __init__(self) -> None:
        self.count = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.count += 1
        return envelope_response({"ran": True})


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
async def client(aiohttp_client: Any, calls: Calls) -> Client:
    app = web.Application(middlewares=[error_middleware, principal_from_header])
    limits = RateLimitConfig(training=RateLimit(1, 3600), logs=RateLimit(0, 0))
    RateLimiter(limits).install(app)
    add_routes(
        app,
        [
            Route("GET", "/read", calls.handler),
            Route("POST", "/start", calls.handler, permission="training", rate="training"),
        ],
    )
    return await aiohttp_client(app)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_without_a_key_the_handler_never_runs(client: Client, calls: Calls) -> None:
    assert (await client.get("/read")).status == 401
    assert (await client.post("/start")).status == 401
    assert calls.count == 0
    assert (await client.get("/read", headers=auth("reader"))).status == 200
    assert calls.count == 1


async def test_a_key_without_the_permission_gets_403_before_the_handler(
    client: Client,
    calls: Calls,
) -> None:
    reply = await client.post("/start", headers=auth("reader"))
    assert reply.status == 403
    assert "training" in (await reply.json())["message"]
    assert calls.count == 0


async def test_the_rate_class_is_counted_before_the_handler(
    client: Client,
    calls: Calls,
) -> None:
    first = await client.post("/start", headers=auth("trainer"))
    assert first.status == 200 and first.headers["X-RateLimit-Limit"] == "1"
    refused = await client.post("/start", headers=auth("trainer"))
    assert refused.status == 429 and "Retry-After" in refused.headers
    assert calls.count == 1
    # a refused forbidden call does not use up the limit either: permission comes first
    assert (await client.post("/start", headers=auth("reader"))).status == 403


async def test_get_routes_answer_head_too(client: Client) -> None:
    assert (await client.head("/read", headers=auth("reader"))).status == 200


def test_the_registered_handler_keeps_the_route_handlers_name_and_module() -> None:
    app = web.Application()
    training.setup(app)
    handlers = {r.handler.__name__: r.handler for r in app.router.routes()}
    assert inspect.getmodule(handlers["start_training"]) is training
    start = next(r for r in declared_routes(app) if r.handler is training.start_training)
    assert (start.permission, start.rate) == ("training", "training")
