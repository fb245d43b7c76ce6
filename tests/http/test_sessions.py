"""Dashboard sessions against a real daemon: an API key exchanged for an HttpOnly cookie,
the cookie accepted on /api/v1 routes (streams and WebSockets included), CSRF on
mutations, a session ending with its key, logout, one-time login links, and no login at
all with auth disabled."""

from __future__ import annotations

import asyncio
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from dpd.config import AuthConfig
from dpd.http.sessions import COOKIE, CSRF_HEADER, SESSIONS, SessionStore
from dpd.keys import KeyStore
from tests.http.conftest import Api, MakeApi, Reply


def cookie_of(reply: Reply) -> tuple[str, Any]:
    jar: SimpleCookie = SimpleCookie()
    for header in reply.headers.getall("Set-Cookie"):
        jar.load(header)
    morsel = jar[COOKIE]
    return morsel.value, morsel


async def log_in(api: Api, raw_key: str) -> tuple[str, dict[str, Any]]:
    reply = await api.post("/api/v1/auth/session", key=None, json={"api_key": raw_key})
    assert reply.status == 200, reply.body
    value, _ = cookie_of(reply)
    return value, reply.body["data"]


def with_cookie(cookie: str, csrf: str | None = None) -> dict[str, str]:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    if csrf is not None:
        headers[CSRF_HEADER] = csrf
    return headers


async def test_login_sets_an_httponly_strict_expiring_cookie(api: Api) -> None:
    raw = api.key("training", user="alice")
    reply = await api.post("/api/v1/auth/session", key=None, json={"api_key": raw})
    assert reply.status == 200
    data = reply.body["data"]
    assert data["user"] == "alice" and data["permissions"] == ["training"]
    assert data["auth_enabled"] is True and data["csrf_token"] and data["expires_at"]
    value, morsel = cookie_of(reply)
    assert value and value != raw
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert morsel["max-age"] == str(12 * 3600)


async def test_a_bad_key_gets_401_and_no_cookie(api: Api) -> None:
    reply = await api.post("/api/v1/auth/session", key=None, json={"api_key": "sk_nope"})
    assert reply.status == 401
    assert "Set-Cookie" not in reply.headers
    missing = await api.post("/api/v1/auth/session", key=None, json={})
    assert missing.status == 422


async def test_login_takes_json_only_so_no_cross_site_form_can_log_in(api: Api) -> None:
    raw = api.key("training")
    form = await api.post(
        "/api/v1/auth/session",
        key=None,
        data=f'{{"api_key": "{raw}"}}',
        headers={"Content-Type": "text/plain"},
    )
    assert form.status == 400
    assert "Set-Cookie" not in form.headers


async def test_the_cookie_works_like_the_key_and_with_its_permissions(api: Api) -> None:
    cookie, data = await log_in(api, api.key("preprocessing"))
    listed = await api.get("/api/v1/training/list", key=None, headers=with_cookie(cookie))
    assert listed.status == 200
    current = await api.get("/api/v1/auth/session", key=None, headers=with_cookie(cookie))
    assert current.status == 200 and current.body["data"]["csrf_token"] == data["csrf_token"]
    refused = await api.post(
        "/api/v1/training/start",
        key=None,
        json=api.job(),
        headers=with_cookie(cookie, data["csrf_token"]),
    )
    assert refused.status == 403  # the key lacks "training"
    assert "training" in refused.body["message"]
    nobody = await api.get("/api/v1/training/list", key=None)
    assert nobody.status == 401


async def test_a_mutation_with_the_cookie_needs_the_csrf_token(api: Api) -> None:
    cookie, data = await log_in(api, api.key("training"))
    job = await api.parked_job("csrf-task")
    without = await api.post("/api/v1/training/start", key=None, json=job,
                             headers=with_cookie(cookie))  # fmt: skip
    assert without.status == 403 and CSRF_HEADER in without.body["message"]
    wrong = await api.post("/api/v1/training/start", key=None, json=job,
                           headers=with_cookie(cookie, "forged"))  # fmt: skip
    assert wrong.status == 403
    assert not api.daemon.services.store.exists("csrf-task")
    right = await api.post("/api/v1/training/start", key=None, json=job,
                           headers=with_cookie(cookie, data["csrf_token"]))  # fmt: skip
    assert right.status == 201, right.body
    assert api.daemon.services.store.exists("csrf-task")


async def test_revoking_the_key_ends_its_session(api: Api) -> None:
    admin = api.key("admin")
    raw, record = api.daemon.keys.create("bob", ["training"])
    cookie, _ = await log_in(api, raw)
    before = await api.get("/api/v1/training/list", key=None, headers=with_cookie(cookie))
    assert before.status == 200
    listed = await api.get("/api/v1/auth/keys", key=admin)
    assert listed.status == 200
    ids = {k["key_id"] for k in listed.body["data"]["keys"]}
    assert record.key_id in ids
    assert all("key_hash" not in k and "api_key" not in k for k in listed.body["data"]["keys"])
    revoked = await api.call("DELETE", f"/api/v1/auth/keys/{record.key_id}", key=admin)
    assert revoked.status == 200 and revoked.body["data"]["revoked"] is True
    after = await api.get("/api/v1/training/list", key=None, headers=with_cookie(cookie))
    assert after.status == 401
    unknown = await api.call("DELETE", "/api/v1/auth/keys/key_nope", key=admin)
    assert unknown.status == 404
    not_admin = await api.get("/api/v1/auth/keys", key=raw)
    assert not_admin.status == 401  # revoked
    assert (await api.get("/api/v1/auth/keys", key=api.key("training"))).status == 403


async def test_logout_forgets_the_session(api: Api) -> None:
    cookie, data = await log_in(api, api.key("training"))
    out = await api.call("DELETE", "/api/v1/auth/session", key=None,
                         headers=with_cookie(cookie, data["csrf_token"]))  # fmt: skip
    assert out.status == 200
    _, morsel = cookie_of(out)
    assert morsel.value == "" and morsel["max-age"] == "0"
    after = await api.get("/api/v1/training/list", key=None, headers=with_cookie(cookie))
    assert after.status == 401


async def test_logout_without_the_csrf_token_is_refused(api: Api) -> None:
    cookie, _ = await log_in(api, api.key("training"))
    out = await api.call("DELETE", "/api/v1/auth/session", key=None, headers=with_cookie(cookie))
    assert out.status == 403
    still = await api.get("/api/v1/training/list", key=None, headers=with_cookie(cookie))
    assert still.status == 200


async def test_the_cookie_opens_streams_and_websockets(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("stream-task"))
    cookie, _ = await log_in(api, api.key("training"))
    url = f"{api.url}/api/v1/training/stream-task/logs/stream"
    async with api.session.get(url, headers=with_cookie(cookie)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
    async with api.session.get(
        f"{api.url}/api/v1/events/stream", headers=with_cookie(cookie)
    ) as events:
        assert events.status == 200
    output = Path(api.daemon.services.store.get("stream-task")["output_dir"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "lora.safetensors").write_bytes(b"0123456789")
    file_url = f"{api.url}/api/v1/training/stream-task/files/lora.safetensors"
    async with api.session.get(
        file_url, headers={**with_cookie(cookie), "Range": "bytes=3-4"}
    ) as part:
        assert part.status == 206 and await part.read() == b"34"
    ws_url = f"{api.url}/api/v1/ws/training/stream-task"
    async with api.session.ws_connect(ws_url, headers=with_cookie(cookie)) as ws:
        assert not ws.closed
    async with api.session.get(url) as refused:
        assert refused.status == 401
    evil = {**with_cookie(cookie), "Origin": "http://evil.example"}
    async with api.session.get(url, headers=evil) as cross_site:
        assert cross_site.status == 403
    same = {**with_cookie(cookie), "Origin": api.url}
    async with api.session.get(url, headers=same) as same_site:
        assert same_site.status == 200
    proxied = {**same, "Origin": "https://dash.example", "X-Forwarded-Host": "dash.example"}
    async with api.session.get(url, headers=proxied) as behind_a_proxy:
        assert behind_a_proxy.status == 200
    try:
        async with api.session.ws_connect(ws_url, headers=evil):
            raise AssertionError("a cross-site WebSocket was accepted")
    except aiohttp.WSServerHandshakeError as err:
        assert err.status == 403


async def test_a_login_link_works_once(api: Api) -> None:
    admin = api.key("admin", user="root")
    made = await api.post("/api/v1/auth/login-link", key=admin)
    assert made.status == 201
    link = made.body["data"]["url"]
    assert link.startswith(f"{api.url}/login?token=")
    async with aiohttp.ClientSession() as browser:
        async with browser.get(link, allow_redirects=False) as first:
            assert first.status == 303 and first.headers["Location"] == "/"
            cookie = first.cookies[COOKIE].value
            assert first.cookies[COOKIE]["httponly"] is True
        async with browser.get(link, allow_redirects=False) as second:
            assert second.status == 303 and second.headers["Location"] == "/#/login"
            assert COOKIE not in second.cookies
    who = await api.get("/api/v1/auth/session", key=None, headers=with_cookie(cookie))
    assert who.status == 200 and who.body["data"]["user"] == "root"
    refused = await api.post("/api/v1/auth/login-link", key=api.key("training"))
    assert refused.status == 403


async def test_the_start_link_logs_the_local_user_in(api: Api) -> None:
    link = api.daemon.dashboard_link()
    assert link.startswith(f"http://127.0.0.1:{api.daemon.port}/login?token=")
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(link, allow_redirects=False) as opened,
    ):
        assert opened.status == 303
        cookie = opened.cookies[COOKIE].value
    who = await api.get("/api/v1/auth/session", key=None, headers=with_cookie(cookie))
    assert who.status == 200 and who.body["data"]["permissions"] == ["admin"]


def test_links_and_sessions_expire() -> None:
    now = [1000.0]
    store = SessionStore(60.0, clock=lambda: now[0])
    token, expires = store.make_link(raw_key="sk_x", seconds=10)
    assert expires == 1010.0
    now[0] = 1011.0
    assert store.open_from_link(token) is None
    opened = store.open(raw_key="sk_x")
    assert store.get(opened.cookie) is not None
    now[0] += 61
    assert store.get(opened.cookie) is None
    assert len(store) == 0


async def test_with_auth_disabled_nobody_logs_in(make_api: MakeApi) -> None:
    api = await make_api(auth=AuthConfig(enabled=False))
    current = await api.get("/api/v1/auth/session", key=None)
    assert current.status == 200
    assert current.body["data"]["auth_enabled"] is False
    assert current.body["data"]["permissions"] == ["admin"]
    assert (await api.get("/api/v1/training/list", key=None)).status == 200
    assert api.daemon.dashboard_link() == f"http://127.0.0.1:{api.daemon.port}/"


async def test_an_expired_session_gets_401(api: Api) -> None:
    cookie, _ = await log_in(api, api.key("training"))
    api.daemon.app[SESSIONS].clock = lambda: 10.0**12
    reply = await api.get("/api/v1/training/list", key=None, headers=with_cookie(cookie))
    assert reply.status == 401


async def test_a_key_revoked_by_dpd_keys_ends_its_session(api: Api) -> None:
    """``dpd keys revoke`` writes keys.json from another process; the daemon re-reads it."""
    raw, record = api.daemon.keys.create("carol", ["training"])
    cookie, _ = await log_in(api, raw)
    other_process = KeyStore(api.daemon.keys.path)  # its own view of keys.json
    await asyncio.to_thread(other_process.revoke, record.key_id)
    deadline = time.monotonic() + 10
    while True:
        reply = await api.get("/api/v1/training/list", key=None, headers=with_cookie(cookie))
        if reply.status == 401:
            break
        assert reply.status == 200 and time.monotonic() < deadline
        await asyncio.sleep(0.1)
