"""The dashboard's routes answer what the OpenAPI document says (status and body schema)."""

from __future__ import annotations

from typing import Any

import pytest

from dpd.http.openapi import load_document
from dpd.http.sessions import COOKIE, CSRF_HEADER
from tests.http.conftest import Api
from tests.http.test_openapi import check_reply


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_document()


async def test_dashboard_answers_match_the_document(api: Api, document: dict[str, Any]) -> None:
    admin, plain = api.key("admin"), api.key("preprocessing")
    raw, record = api.daemon.keys.create("doc-user", ["training"])
    await api.post("/api/v1/training/start", json=await api.parked_job("doc-a"))
    await api.post("/api/v1/training/start", json=await api.parked_job("doc-b"))
    login = await api.post("/api/v1/auth/session", key=None, json={"api_key": raw})
    check_reply(document, "POST", "/api/v1/auth/session", login)
    cookie = {"Cookie": f"{COOKIE}={login.headers['Set-Cookie'].split(';')[0].split('=', 1)[1]}"}
    csrf = {**cookie, CSRF_HEADER: login.body["data"]["csrf_token"]}
    calls: list[tuple[str, str, str, str | None, Any, dict[str, str] | None]] = [
        ("POST", "/api/v1/auth/session", "/api/v1/auth/session", None, {"api_key": "bad"}, None),
        ("POST", "/api/v1/auth/session", "/api/v1/auth/session", None, {}, None),
        ("GET", "/api/v1/auth/session", "/api/v1/auth/session", None, None, cookie),
        ("GET", "/api/v1/auth/session", "/api/v1/auth/session", None, None, None),
        ("POST", "/api/v1/auth/login-link", "/api/v1/auth/login-link", admin, None, None),
        ("POST", "/api/v1/auth/login-link", "/api/v1/auth/login-link", plain, None, None),
        ("GET", "/api/v1/auth/keys", "/api/v1/auth/keys", admin, None, None),
        ("GET", "/api/v1/training/{task_id}/series", "/api/v1/training/doc-a/series", plain,
         None, None),
        ("GET", "/api/v1/training/{task_id}/series", "/api/v1/training/nope/series", plain,
         None, None),
        ("GET", "/api/v1/training/{task_id}/markers", "/api/v1/training/doc-a/markers", plain,
         None, None),
        ("GET", "/api/v1/training/{task_id}/config", "/api/v1/training/doc-a/config", plain,
         None, None),
        ("GET", "/api/v1/training/{task_id}/files", "/api/v1/training/doc-a/files", plain,
         None, None),
        ("POST", "/api/v1/training/{task_id}/priority", "/api/v1/training/doc-b/priority",
         None, {"priority": 3}, csrf),
        ("POST", "/api/v1/training/{task_id}/priority", "/api/v1/training/doc-b/priority",
         None, {"priority": 3}, cookie),
        ("POST", "/api/v1/training/{task_id}/priority", "/api/v1/training/doc-b/priority",
         raw, {"priority": "x"}, None),
        ("POST", "/api/v1/training/validate", "/api/v1/training/validate", raw, api.job(), None),
        ("POST", "/api/v1/training/validate", "/api/v1/training/validate", raw, {"x": 1}, None),
        ("DELETE", "/api/v1/auth/session", "/api/v1/auth/session", None, None, csrf),
        ("DELETE", "/api/v1/auth/keys/{key_id}", f"/api/v1/auth/keys/{record.key_id}", admin,
         None, None),
        ("DELETE", "/api/v1/auth/keys/{key_id}", "/api/v1/auth/keys/key_nope", admin, None,
         None),
    ]  # fmt: skip
    statuses = set()
    for method, template, path, key, body, headers in calls:
        reply = await api.call(method, path, key=key, json=body, headers=headers)
        check_reply(document, method, template, reply)
        statuses.add(reply.status)
    assert {200, 201, 401, 403, 404, 422} <= statuses


async def test_the_catalog_route_answers_what_models_list_does(api: Api) -> None:
    catalog = await api.get("/api/v1/models/catalog", key=api.key("preprocessing"))
    listed = await api.get("/api/v1/models/list")
    assert catalog.status == 200
    assert catalog.body["data"] == listed.body["data"]
    sdxl = next(m for m in catalog.body["data"]["models"] if m["id"] == "sdxl")
    assert sdxl["min_vram_gb"] == 10 and "installed" in sdxl
    assert sdxl["components"][0]["config_key"]
    assert (await api.get("/api/v1/models/catalog", key=None)).status == 401
