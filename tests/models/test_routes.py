"""The model routes over real HTTP (aiohttp test server on 127.0.0.1), with the production
error middleware; a small test middleware stands in for the auth middleware (REST issue)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from dpd.http.common import PRINCIPAL, Principal
from dpd.http.middlewares import error_middleware
from dpd.http.routes import models as model_routes
from tests.models.conftest import GATED_TOKEN

KEYS = {
    "reader": frozenset(),
    "downloader": frozenset({"model_download"}),
    "trainer": frozenset({"training"}),
}


@web.middleware
async def principal_from_header(request: web.Request, handler: Any) -> web.StreamResponse:
    key = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if key in KEYS:
        request[PRINCIPAL] = Principal(key, key, KEYS[key])
    return await handler(request)


@pytest.fixture
async def client(aiohttp_client, make_manager, catalog):
    manager = await make_manager(token=GATED_TOKEN)
    app = web.Application(middlewares=[error_middleware, principal_from_header])
    model_routes.setup(app, manager, catalog)
    return await aiohttp_client(app)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_list_needs_a_key_and_shows_installed_state(client):
    assert (await client.get("/api/v1/models/list")).status == 401
    reply = await client.get("/api/v1/models/list", headers=auth("reader"))
    body = await reply.json()
    assert reply.status == 200 and body["code"] == 200
    flux = next(m for m in body["data"]["models"] if m["id"] == "flux")
    for key in (
        "name",
        "type",
        "supports_lora",
        "supports_full_finetune",
        "supports_fp8",
        "min_vram_gb",
        "recommended_vram_gb",
        "config_path",
    ):
        assert key in flux
    assert flux["installed"] is False
    assert all(c["verified"] is True and c["note"] is None for c in flux["components"])
    broken = next(m for m in body["data"]["models"] if m["id"] == "broken")
    handmade = next(c for c in broken["components"] if c["name"] == "handmade")
    assert handmade["verified"] is False and handmade["downloadable"] is False
    assert {c["name"]: c["installed"] for c in flux["components"]} == {
        "diffusion_model": False,
        "vae": False,
        "text_encoder": False,
    }


async def test_download_lifecycle_over_rest(client):
    reply = await client.post(
        "/api/v1/models/download",
        json={"model_id": "flux", "version": "1.0"},
        headers=auth("downloader"),
    )
    body = await reply.json()
    assert reply.status == 202 and body["code"] == 202
    data = body["data"]
    assert data["download_id"].startswith("dl_") and data["model_id"] == "flux"
    for key in ("status", "progress", "speed", "eta", "components"):
        assert key in data
    assert {"name", "size", "downloaded", "path", "bytes_done", "bytes_total"} <= set(
        data["components"][0]
    )
    url = f"/api/v1/models/download/{data['download_id']}"

    await client.app[model_routes.MANAGER].wait(data["download_id"])
    final = await (await client.get(url, headers=auth("downloader"))).json()
    assert final["data"]["status"] == "completed" and final["data"]["progress"] == 100.0
    listed = await (await client.get("/api/v1/models/downloads", headers=auth("downloader"))).json()
    assert [d["download_id"] for d in listed["data"]["downloads"]] == [data["download_id"]]
    models = await (await client.get("/api/v1/models/list", headers=auth("reader"))).json()
    flux = next(m for m in models["data"]["models"] if m["id"] == "flux")
    assert flux["installed"] is True
    again = await client.post(f"{url}/cancel", headers=auth("downloader"))
    assert again.status == 409


async def test_download_routes_need_the_permission(client):
    for method, path in (
        ("POST", "/api/v1/models/download"),
        ("GET", "/api/v1/models/downloads"),
        ("GET", "/api/v1/models/download/dl_x"),
        ("POST", "/api/v1/models/download/dl_x/cancel"),
    ):
        assert (await client.request(method, path)).status == 401
        assert (await client.request(method, path, headers=auth("trainer"))).status == 403


async def test_bad_requests_get_the_envelope(client):
    headers = auth("downloader")
    reply = await client.post("/api/v1/models/download", data=b"{nope", headers=headers)
    assert reply.status == 400
    reply = await client.post("/api/v1/models/download", json={"model_id": "sd99"}, headers=headers)
    body = await reply.json()
    assert reply.status == 422 and body["data"]["errors"][0]["field"] == "model_id"
    reply = await client.post(
        "/api/v1/models/download",
        json={"model_id": "broken", "components": ["missing"]},
        headers=headers,
    )
    assert reply.status == 404
    reply = await client.get("/api/v1/models/download/dl_nope", headers=headers)
    assert reply.status == 404 and (await reply.json())["data"]["download_id"] == "dl_nope"


async def test_cancel_over_rest(client, hub):
    hub.hold_at["transformer/diffusion_pytorch_model.safetensors"] = 1024 * 1024
    headers = auth("downloader")
    reply = await client.post(
        "/api/v1/models/download",
        json={"model_id": "flux", "components": ["diffusion_model"]},
        headers=headers,
    )
    download_id = (await reply.json())["data"]["download_id"]
    reply = await client.post(f"/api/v1/models/download/{download_id}/cancel", headers=headers)
    body = await reply.json()
    assert reply.status == 200 and body["data"]["status"] == "cancelled"


async def test_a_failing_hub_is_a_502_envelope(client, hub):
    hub.fail["vae/diffusion_pytorch_model.safetensors"] = 503
    reply = await client.post(
        "/api/v1/models/download",
        json={"model_id": "flux", "components": ["vae"]},
        headers=auth("downloader"),
    )
    body = await reply.json()
    assert reply.status == 502 and body["code"] == 502
    assert body["data"]["hub_status"] == 503
    assert GATED_TOKEN not in await reply.text()
