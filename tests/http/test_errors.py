"""Every error answer is the envelope with the right code, through a real daemon: unknown
routes, wrong methods, oversize bodies, bad query parameters, bad and invalid bodies, busy
and missing GPUs, and a handler that explodes (500, no traceback to the client, a full one
in the log)."""

from __future__ import annotations

import logging
import shutil
import time

import pytest
from aiohttp import web

from dpd.daemon import Daemon
from tests.http.conftest import Api, MakeApi
from tests.waiting import wait_until


def assert_envelope(body: dict, code: int) -> None:  # type: ignore[type-arg]
    assert set(body) == {"code", "message", "data", "timestamp"}, body
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert abs(body["timestamp"] - time.time()) < 60


async def test_404_unknown_route(api: Api) -> None:
    for path in ("/api/v1/nope", "/nope", "/api/v1/gpu/status/extra"):
        reply = await api.get(path)
        assert reply.status == 404, path
        assert_envelope(reply.body, 404)
        assert reply.body["data"] == {"path": path}


async def test_404_unknown_task(api: Api) -> None:
    reply = await api.get("/api/v1/training/no-such-task/progress")
    assert reply.status == 404
    assert_envelope(reply.body, 404)
    assert reply.body["data"] == {"task_id": "no-such-task"}


async def test_405_wrong_method(api: Api) -> None:
    reply = await api.get("/api/v1/auth/generate-key")
    assert reply.status == 405
    assert_envelope(reply.body, 405)
    assert reply.body["data"]["allowed_methods"] == ["POST"]
    wrong = await api.post("/api/v1/gpu/status")
    assert wrong.status == 405
    assert wrong.body["data"]["allowed_methods"] == ["GET", "HEAD"]


async def test_413_oversize_body(api: Api) -> None:
    big = b"{" + b" " * (api.daemon.config.http.max_body_kb * 1024 + 10) + b"}"
    for path in ("/api/v1/training/start", "/api/v1/auth/generate-key"):
        reply = await api.post(path, data=big, headers={"Content-Type": "application/json"})
        assert reply.status == 413, path
        assert_envelope(reply.body, 413)
    assert api.daemon.services.store.task_ids() == []


async def test_400_bad_query_parameters(api: Api) -> None:
    for path in (
        "/api/v1/training/list?limit=abc",
        "/api/v1/training/list?limit=0",
        "/api/v1/training/list?status=sleeping",
        "/api/v1/training/list?gpu_id=-1",
        "/api/v1/gpu/available?min_memory=big",
        "/api/v1/gpu/available?task_type=mining",
    ):
        reply = await api.get(path)
        assert reply.status == 400, path
        assert_envelope(reply.body, 400)


async def test_400_unparseable_and_422_invalid_bodies(api: Api) -> None:
    broken = await api.post("/api/v1/auth/generate-key", data=b"{nope")
    assert broken.status == 400
    assert_envelope(broken.body, 400)
    not_object = await api.post("/api/v1/auth/generate-key", json=[1])
    assert not_object.status == 400
    invalid = await api.post(
        "/api/v1/auth/generate-key",
        json={"user_id": "", "permissions": ["root", "admin"], "expire_days": -1, "x": 1},
    )
    assert invalid.status == 422
    assert_envelope(invalid.body, 422)
    fields = [e["field"] for e in invalid.body["data"]["errors"]]
    assert fields == ["user_id", "permissions[0]", "expire_days", "x"]
    start = await api.post("/api/v1/training/start", data=b"not json")
    assert start.status == 400
    assert_envelope(start.body, 400)


async def test_409_busy_gpu_and_507_missing_gpus(api: Api) -> None:
    first = await api.post("/api/v1/training/start", json=api.job(task_id="one", gpu_id=0))
    assert first.status == 201, first.body
    busy = None
    deadline = time.monotonic() + 10
    while busy is None or busy.status != 409:  # GPU 0 is taken once "one" is scheduled
        busy = await api.post("/api/v1/training/start", json=api.job(gpu_id=0))
        assert busy.status in (201, 409), busy.body
        assert time.monotonic() < deadline
    assert_envelope(busy.body, 409)
    missing = await api.post("/api/v1/training/start", json=api.job(gpu_ids=[0, 1, 2, 3]))
    assert missing.status == 507
    assert_envelope(missing.body, 507)


async def test_507_when_the_spool_is_short_of_room_and_nothing_is_created(api: Api) -> None:
    store = api.daemon.services.store
    free = shutil.disk_usage(store.layout.root).free
    store.min_free = free + 2**40  # the real free space, measured on the spool's file system
    refused = await api.post("/api/v1/training/start", json=api.job(task_id="full"))
    assert refused.status == 507, refused.body
    assert_envelope(refused.body, 507)
    assert "free space on the spool" in refused.body["data"]["recommended_action"]
    assert refused.body["data"]["free_bytes"] <= free + 2**30
    assert not store.exists("full")
    assert not (store.layout.jobs / "full").exists()
    store.min_free = 0
    accepted = await api.post("/api/v1/training/start", json=api.job(task_id="full"))
    assert accepted.status == 201, accepted.body


async def test_queued_jobs_wait_while_the_spool_is_short_of_room(api: Api) -> None:
    store, monitor = api.daemon.services.store, api.daemon.services.monitor
    queued = await api.post("/api/v1/training/start", json=await api.parked_job("waits"))
    assert queued.status == 201, queued.body
    store.min_free = shutil.disk_usage(store.layout.root).free + 2**40
    monitor.inventory.set_usage(1, 0)  # type: ignore[attr-defined]
    await monitor.poll_now()
    supervisor = api.daemon.services.supervisor
    for _ in range(2):  # scheduling passes that would place it, were there room
        await supervisor.schedule_once()
    assert store.get("waits")["status"] == "queued"
    store.min_free = 0
    supervisor.wake()
    await wait_until(
        lambda: store.get("waits")["status"] != "queued",
        what="the job to start once there was room",
    )


async def test_500_exploding_handler(make_api: MakeApi, caplog: pytest.LogCaptureFixture) -> None:
    async def explode(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals: /etc/shadow")

    def add_route(daemon: Daemon) -> None:
        daemon.app.router.add_get("/api/v1/test/explode", explode)

    api = await make_api(prepare=add_route)
    with caplog.at_level(logging.ERROR, logger="dpd.http"):
        reply = await api.get("/api/v1/test/explode")
    assert reply.status == 500
    assert_envelope(reply.body, 500)
    assert reply.body["data"] is None
    assert "secret" not in reply.text and "Traceback" not in reply.text
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    record = next(r for r in caplog.records if r.exc_info)
    assert "GET /api/v1/test/explode" in logged
    assert record.exc_info[0] is RuntimeError  # type: ignore[index]
    # auth still comes first: no key, no handler
    assert (await api.get("/api/v1/test/explode", key=None)).status == 401
