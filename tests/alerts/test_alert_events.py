"""Alerts from real stand-in trainings on a real daemon: recorded as ``alert`` events in
events.jsonl (so NATS and SSE carry them) and POSTed to a webhook served by a real aiohttp
server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dpd.config import AlertsConfig
from tests.http.conftest import Api, MakeApi, make_config


@dataclasses.dataclass
class Receiver:
    url: str
    received: list[dict[str, Any]]


@pytest.fixture
async def webhook() -> AsyncIterator[Receiver]:
    received: list[dict[str, Any]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Receiver(f"http://127.0.0.1:{port}/hook", received)
    await runner.cleanup()


async def alert_api(make_api: MakeApi, tmp_path: Path, alerts: AlertsConfig, **env: str) -> Api:
    trainer = make_config(tmp_path / "unused").trainer
    return await make_api(
        trainer=dataclasses.replace(trainer, env=dict(trainer.env, **env)), alerts=alerts
    )


async def recorded_alerts(api: Api, task_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = await asyncio.to_thread(api.daemon.services.store.read_events, task_id)
        found = [e for e in events if e["type"] == "alert"]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"no alert recorded for {task_id}")


async def test_a_nan_loss_is_recorded_and_posted_to_the_webhook(
    make_api: MakeApi, tmp_path: Path, webhook: Receiver
) -> None:
    api = await alert_api(make_api, tmp_path, AlertsConfig(webhook_url=webhook.url),
                          DPD_SIM_LOSS_START="nan", DPD_SIM_STEP_SECONDS="0.02")  # fmt: skip
    assert (
        await api.post("/api/v1/training/start", json=api.job(task_id="nan-task"))
    ).status == 201
    alert = (await recorded_alerts(api, "nan-task"))[0]
    assert alert["data"]["kind"] == "nan_loss"
    assert alert["data"]["value"] is None and alert["data"]["step"] == 1
    listed = await api.get("/api/v1/training/nan-task/alerts")
    assert listed.status == 200 and listed.body["data"]["alerts"][0] == alert
    deadline = time.monotonic() + 10
    while not webhook.received:
        assert time.monotonic() < deadline, "the webhook got nothing"
        await asyncio.sleep(0.05)
    posted = webhook.received[0]
    assert posted["type"] == "alert" and posted["task_id"] == "nan-task"
    assert posted["seq"] == alert["seq"] and posted["data"] == alert["data"]


async def test_an_exploding_loss_is_recorded(make_api: MakeApi, tmp_path: Path) -> None:
    api = await alert_api(make_api, tmp_path, AlertsConfig(loss_window=20),
                          DPD_SIM_LOSS_DECAY="1.3", DPD_SIM_STEP_SECONDS="0.02")  # fmt: skip
    job = api.job(task_id="boom-task")
    job["config"]["epochs"] = 20
    assert (await api.post("/api/v1/training/start", json=job)).status == 201
    alert = (await recorded_alerts(api, "boom-task"))[0]
    assert alert["data"]["kind"] == "loss_explosion"
    assert alert["data"]["value"] > 0 and alert["data"]["step"] > 10


async def test_a_stalled_run_is_recorded(make_api: MakeApi, tmp_path: Path) -> None:
    api = await alert_api(make_api, tmp_path, AlertsConfig(stall_seconds=0.5),
                          DPD_SIM_STEP_SECONDS="3")  # fmt: skip
    assert (
        await api.post("/api/v1/training/start", json=api.job(task_id="slow-task"))
    ).status == 201
    alert = (await recorded_alerts(api, "slow-task"))[0]
    assert alert["data"]["kind"] == "stalled"
    assert "no training step" in alert["data"]["message"]


async def test_a_healthy_run_raises_nothing(make_api: MakeApi, tmp_path: Path) -> None:
    api = await alert_api(make_api, tmp_path, AlertsConfig(), DPD_SIM_STEP_SECONDS="0.02")
    assert (await api.post("/api/v1/training/start", json=api.job(task_id="ok-task"))).status == 201
    deadline = time.monotonic() + 60
    while api.daemon.services.store.get("ok-task")["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    events = await asyncio.to_thread(api.daemon.services.store.read_events, "ok-task")
    assert [e for e in events if e["type"] == "alert"] == []
    assert (await api.get("/api/v1/training/ok-task/alerts")).body["data"]["alerts"] == []
    assert any(e["type"] == "metrics" for e in events)
