"""The auth matrix through a real daemon: no key, a bad key, each permission on each route,
plus the bootstrap key, revoked and expired keys, auth disabled, and WebSocket tokens."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from dpd.config import AuthConfig
from dpd.http.app import build_app
from dpd.http.auth import LOCAL_KEY, Authenticator, is_loopback
from dpd.http.common import principal
from dpd.local_key import local_key_path
from tests.http.conftest import BOOTSTRAP, Api, MakeApi

ANY_KEY = None  # any valid key may call the route
# (method, path, permission needed or ANY_KEY)
ROUTES = [
    ("GET", "/api/v1/gpu/status", ANY_KEY),
    ("GET", "/api/v1/gpu/available", ANY_KEY),
    ("GET", "/api/v1/system/overview", ANY_KEY),
    ("GET", "/api/v1/training/list", ANY_KEY),
    ("GET", "/api/v1/training/nope", ANY_KEY),
    ("GET", "/api/v1/training/nope/progress", ANY_KEY),
    ("GET", "/api/v1/training/nope/metrics", ANY_KEY),
    ("POST", "/api/v1/training/start", "training"),
    ("POST", "/api/v1/training/stop/nope", "training"),
    ("POST", "/api/v1/training/nope/resume", "training"),
    ("POST", "/api/v1/auth/generate-key", "admin"),
]
KEY_KINDS = ["training", "preprocessing", "model_download", "admin"]


def expected_status(needed: str | None, held: str) -> str:
    if needed is None or held == "admin" or held == needed:
        return "allowed"
    return "forbidden"


@pytest.fixture
async def matrix_api(make_api: MakeApi) -> tuple[Api, dict[str, str]]:
    api = await make_api()
    return api, {kind: api.key(kind) for kind in KEY_KINDS}


async def test_no_key_and_bad_keys_get_401_everywhere(matrix_api) -> None:  # type: ignore[no-untyped-def]
    api, _ = matrix_api
    for method, path, _needed in ROUTES:
        for headers in ({}, {"Authorization": "Bearer sk_wrong"}, {"Authorization": "Basic x"}):
            reply = await api.call(method, path, key=None, headers=headers)
            assert reply.status == 401, (method, path, headers, reply.body)
            assert reply.body["code"] == 401 and reply.body["data"] is None


async def test_each_permission_on_each_route(matrix_api) -> None:  # type: ignore[no-untyped-def]
    api, keys = matrix_api
    for method, path, needed in ROUTES:
        for held, raw in keys.items():
            reply = await api.call(method, path, key=raw, json={})
            outcome = expected_status(needed, held)
            if outcome == "forbidden":
                assert reply.status == 403, (method, path, held, reply.body)
                assert needed in reply.body["message"]
            else:  # past auth: whatever the route itself answers, never 401/403
                assert reply.status not in (401, 403), (method, path, held, reply.body)
                assert reply.body["code"] == reply.status


async def test_bootstrap_key_is_admin(api: Api) -> None:
    reply = await api.post(
        "/api/v1/auth/generate-key", BOOTSTRAP, json={"user_id": "u", "permissions": ["admin"]}
    )
    assert reply.status == 201
    # a near miss of the bootstrap key is just an unknown key
    assert (await api.get("/api/v1/gpu/status", BOOTSTRAP + "x")).status == 401


async def test_generated_key_works_at_once_and_is_shown_once(api: Api) -> None:
    reply = await api.post(
        "/api/v1/auth/generate-key", json={"user_id": "bob", "permissions": ["training"]}
    )
    assert reply.status == 201 and reply.body["message"]
    data = reply.body["data"]
    assert data["user_id"] == "bob" and data["permissions"] == ["training"]
    assert data["expires_at"] is None  # auth.key_expire_days = 0
    raw = data["api_key"]
    assert (await api.get("/api/v1/gpu/status", raw)).status == 200
    assert (await api.post("/api/v1/auth/generate-key", raw, json={})).status == 403
    stored = api.daemon.keys.path.read_text()
    assert raw not in stored


async def test_revoked_and_expired_keys_get_401(api: Api) -> None:
    raw = api.key("training")
    assert (await api.get("/api/v1/gpu/status", raw)).status == 200
    keys = api.daemon.keys
    await asyncio.to_thread(keys.revoke, keys.lookup(raw).key_id)  # type: ignore[union-attr]
    assert (await api.get("/api/v1/gpu/status", raw)).status == 401
    past = datetime.now(UTC) - timedelta(days=10)
    expired, _ = await asyncio.to_thread(keys.create, "old", ["admin"], 1, now=past)
    assert (await api.get("/api/v1/gpu/status", expired)).status == 401


async def test_open_routes_need_no_key(api: Api) -> None:
    for path in ("/healthz", "/metrics", "/api/v1/openapi.json"):
        assert (await api.get(path, key=None)).status == 200, path


async def test_unknown_routes_answer_404_with_or_without_a_key(api: Api) -> None:
    assert (await api.get("/api/v1/nothing/here", key=None)).status == 404
    assert (await api.get("/api/v1/nothing/here")).status == 404
    assert (await api.call("DELETE", "/api/v1/gpu/status", key=None)).status == 405


async def test_auth_disabled_makes_every_caller_the_local_admin(make_api: MakeApi) -> None:
    api = await make_api(auth=AuthConfig(enabled=False))
    assert (await api.get("/api/v1/gpu/status", key=None)).status == 200
    reply = await api.post(
        "/api/v1/auth/generate-key", key=None, json={"user_id": "u", "permissions": ["training"]}
    )
    assert reply.status == 201


async def test_set_config_applies_a_reloaded_auth_table(api: Api) -> None:
    api.daemon.auth.set_config(dataclasses.replace(api.daemon.config.auth, bootstrap_key="new"))
    assert (await api.get("/api/v1/gpu/status", BOOTSTRAP)).status == 401
    assert (await api.get("/api/v1/gpu/status", "new")).status == 200


async def test_websocket_paths_take_the_key_as_a_token_parameter(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    async def who(request: web.Request) -> web.Response:
        return web.json_response({"key_id": principal(request).key_id})

    app = build_app(middlewares=[Authenticator(True, "the-key").middleware])
    app.router.add_get("/api/v1/ws/training/{task_id}", who)
    app.router.add_get("/api/v1/gpu/status", who)
    client = await aiohttp_client(app)
    ok = await client.get("/api/v1/ws/training/t1?token=the-key")
    assert ok.status == 200 and (await ok.json())["key_id"] == "bootstrap"
    assert (await client.get("/api/v1/ws/training/t1?token=wrong")).status == 401
    assert (await client.get("/api/v1/ws/training/t1")).status == 401
    # only WebSocket routes: elsewhere a key in the URL would end up in logs
    assert (await client.get("/api/v1/gpu/status?token=the-key")).status == 401


async def test_the_local_key_is_an_admin_key_on_loopback_connections_only(api: Api) -> None:
    """The daemon made local.key at start; over 127.0.0.1 it is admin. A peer elsewhere
    holding a copy of the file gets nothing from it."""
    local = local_key_path(api.daemon.config.daemon.state_dir).read_text().strip()
    assert api.daemon.auth.local_key == local
    reply = await api.post(
        "/api/v1/auth/generate-key", local, json={"user_id": "u", "permissions": ["admin"]}
    )
    assert reply.status == 201, reply.body
    assert await api.daemon.auth.identify(local, from_loopback=True) == LOCAL_KEY
    assert await api.daemon.auth.identify(local, from_loopback=False) is None
    assert await api.daemon.auth.identify(local[:-1] + "x", from_loopback=True) is None


def test_loopback_peers() -> None:
    for peer in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(peer), peer
    for peer in ("192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "", None, "localhost"):
        assert not is_loopback(peer), peer
