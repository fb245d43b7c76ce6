"""Hostile input through a real daemon: every such request answers a 400/413/422 envelope,
never a 500; a malformed request never puts a header (an API key) in the log and is logged
briefly and at a bounded rate."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from dpd.logsetup import SERVER_LOGGER, MalformedRequestFilter
from tests.http.conftest import Api
from tests.http.test_errors import assert_envelope

DEEP = b"[" * 5000 + b"]" * 5000  # far past the interpreter's recursion limit
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000
JSON_ROUTES = (
    "/api/v1/training/start",
    "/api/v1/training/stop/some-task",
    "/api/v1/auth/generate-key",
    "/api/v1/models/download",
)


@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_deeply_nested_json_is_a_400_on_every_json_route(api: Api, path: str) -> None:
    for body in (DEEP, DEEP_OBJECT):
        reply = await api.post(path, data=body, headers={"Content-Type": "application/json"})
        assert reply.status == 400, (path, reply.status, reply.text[:200])
        assert_envelope(reply.body, reply.status)


@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_invalid_utf8_and_huge_numbers_are_client_errors(api: Api, path: str) -> None:
    for body in (b'{"x": "\xff\xfe"}', b'{"force": 1e999999}', b'{"x": ' + b"9" * 5000 + b"}"):
        reply = await api.post(path, data=body, headers={"Content-Type": "application/json"})
        assert reply.status in (400, 422), (path, body[:20], reply.status, reply.text[:200])
        assert_envelope(reply.body, reply.status)


async def test_huge_expire_days_is_a_422_and_creates_no_key(api: Api) -> None:
    before = len(await asyncio.to_thread(api.daemon.keys.list_keys))
    for days in (10**9, 10**30):
        reply = await api.post(
            "/api/v1/auth/generate-key",
            json={"user_id": "x", "permissions": ["training"], "expire_days": days},
        )
        assert reply.status == 422, reply.text
        assert [e["field"] for e in reply.body["data"]["errors"]] == ["expire_days"]
    assert len(await asyncio.to_thread(api.daemon.keys.list_keys)) == before


async def test_a_5000_digit_last_event_id_is_a_400(api: Api) -> None:
    queued = await api.post("/api/v1/training/start", json=await api.parked_job("parked"))
    assert queued.status == 201, queued.body
    for cursor in ("9" * 5000, "1:" + "9" * 5000):
        reply = await api.get(
            "/api/v1/training/parked/logs/stream", headers={"Last-Event-ID": cursor}
        )
        assert reply.status == 400, reply.text[:200]
        assert_envelope(reply.body, 400)
        query = await api.get(f"/api/v1/training/parked/logs/stream?last_event_id={cursor}")
        assert query.status == 400, query.text[:200]


def _multipart(filename: bytes, body: bytes = b"video bytes", end: bool = True) -> bytes:
    parts = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="prompt"\r\n\r\n'
        b"a prompt\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="video"; filename="' + filename + b'"\r\n'
        b"Content-Type: video/mp4\r\n\r\n" + body
    )
    return parts + (b"\r\n--XyZ--\r\n" if end else b"")


async def test_multipart_upload_with_nul_name_or_truncated_body_is_a_client_error(
    api: Api,
) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    bodies = {
        "nul in name": _multipart(b"clip\x00.mp4"),
        "percent-encoded nul": _multipart(b"clip%00.mp4"),
        "truncated": _multipart(b"clip.mp4", end=False),
        "cut in the headers": b'--XyZ\r\nContent-Disposition: form-data; name="vid',
        "no parts": b"--XyZ--\r\n",
        "garbage": b"\x00\xff" * 100,
    }
    staging = api.daemon.config.daemon.preprocessed_root
    for name, body in bodies.items():
        reply = await api.post("/api/v1/preprocess/upload", data=body, headers=headers)
        assert reply.status in (400, 413, 422), (name, reply.status, reply.text[:300])
        assert_envelope(reply.body, reply.status)
    leftovers = [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []
    assert leftovers == []


@pytest.fixture
def fresh_guard() -> MalformedRequestFilter:
    """The daemon's guard on aiohttp's server logger, with none of this minute's quota
    spent by earlier tests in this process."""
    logger = logging.getLogger(SERVER_LOGGER)
    for old in [f for f in logger.filters if isinstance(f, MalformedRequestFilter)]:
        logger.removeFilter(old)
    guard = MalformedRequestFilter()
    logger.addFilter(guard)
    return guard


async def _raw_request(api: Api, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.daemon.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_malformed_request_never_logs_the_api_key(
    api: Api, caplog: pytest.LogCaptureFixture, fresh_guard: MalformedRequestFilter
) -> None:
    secret = "dpd_SECRETkeyvalue0123456789"
    caplog.set_level(logging.DEBUG)
    malformed = (
        b"GET /api/v1/gpu/status HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + secret.encode() + b"\x01\r\n\r\n",
        b"GET /api/v1/gpu/status HTTP/1.1\r\nAuthorization: Bearer "
        + secret.encode()
        + b"\r\nBroken header line "
        + secret.encode()
        + b"\r\n\r\n",
        b"GET /api/v1/gpu/status HTTP/1.1\r\nAuthorization : Bearer "
        + secret.encode()
        + b"\r\n\r\n",
    )
    for request in malformed:
        answer = await _raw_request(api, request)
        assert answer.split(b" ", 2)[1] == b"400", answer[:100]
    texts = [record.getMessage() for record in caplog.records]
    texts += [caplog.text]
    assert not any(secret in text for text in texts), caplog.text
    assert not any(record.exc_info for record in caplog.records if "aiohttp" in record.name)
    malformed_lines = [r for r in caplog.records if r.name.startswith("aiohttp.server")]
    assert 1 <= len(malformed_lines) <= len(malformed)
    assert all("\n" not in r.getMessage() for r in malformed_lines)


async def test_a_flood_of_malformed_requests_is_logged_at_a_bounded_rate(
    api: Api, caplog: pytest.LogCaptureFixture, fresh_guard: MalformedRequestFilter
) -> None:
    caplog.set_level(logging.DEBUG)
    for _ in range(60):
        answer = await _raw_request(api, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        assert answer.split(b" ", 2)[1] == b"400"
    lines = [r for r in caplog.records if r.name.startswith("aiohttp.server")]
    assert len(lines) == fresh_guard.per_minute, [r.getMessage() for r in lines]
    assert fresh_guard.dropped == 60 - fresh_guard.per_minute
    healthy = await api.get("/healthz")
    assert healthy.status == 200


async def test_a_yaml_alias_bomb_dropped_in_the_spool_is_rejected_and_the_daemon_answers(
    api: Api,
) -> None:
    layout = api.daemon.services.layout
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    staged = layout.root / "bomb.yaml.tmp"
    staged.write_text("\n".join(lines))
    staged.rename(layout.incoming / "bomb.yaml")
    reason = layout.rejected / "bomb.yaml.error.json"
    deadline = asyncio.get_running_loop().time() + 15
    while not reason.exists():
        assert asyncio.get_running_loop().time() < deadline, "the bomb was not rejected"
        healthy = await api.get("/healthz")
        assert healthy.status == 200
        await asyncio.sleep(0.05)
    assert json.loads(reason.read_text())["code"] == 400
    assert (await api.get("/api/v1/gpu/status")).status == 200
