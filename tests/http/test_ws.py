"""The WebSocket of api.md §9 on a real daemon: auth on connect (header or ?token=), the four
message kinds during a stand-in training, since_seq replay, close when the task ends."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.http.conftest import BOOTSTRAP, Api, MakeApi, make_config
from tests.waiting import wait_until

TERMINAL = ("completed", "failed", "stopped")


async def fast_api(make_api: MakeApi, tmp_path: Path) -> Api:
    trainer = make_config(tmp_path / "unused").trainer
    env = dict(trainer.env, DPD_SIM_STEP_SECONDS="0.05")
    return await make_api(trainer=dataclasses.replace(trainer, env=env))


async def receive_all(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> list[Any]:
    messages = []
    async with asyncio.timeout(timeout):
        async for message in ws:
            assert message.type == aiohttp.WSMsgType.TEXT
            messages.append(message.json())
    return messages


async def test_messages_during_a_training(make_api: MakeApi, tmp_path: Path) -> None:
    api = await fast_api(make_api, tmp_path)
    await api.post("/api/v1/training/start", json=await api.parked_job("other"))
    url = f"{api.url}/api/v1/ws/training/w1?token={api.key('preprocessing')}"
    assert (await api.post("/api/v1/training/start", json=api.job(task_id="w1"))).status == 201
    async with api.session.ws_connect(url) as ws:
        messages = await receive_all(ws)
        assert ws.close_code == aiohttp.WSCloseCode.OK
    assert all(set(m) == {"type", "timestamp", "seq", "data"} for m in messages)
    assert messages[0]["type"] == "progress" and messages[0]["data"]["task_id"] == "w1"
    kinds = {m["type"] for m in messages}
    assert kinds == {"progress", "log", "metrics", "status"}
    assert messages[-1]["type"] == "status" and messages[-1]["data"]["status"] == "completed"
    progress = [m["data"] for m in messages if m["type"] == "progress"][-1]
    assert {"task_id", "status", "progress", "current_epoch", "total_epochs",
            "current_loss"} <= set(progress)  # fmt: skip
    assert progress["status"] == "running" and isinstance(progress["current_loss"], float)
    lines = [line for m in messages if m["type"] == "log" for line in m["data"]["lines"]]
    assert any(line["message"] == "TRAINING COMPLETE!" for line in lines)
    assert {"timestamp", "level", "type", "message", "epoch", "step"} == set(lines[0])
    seqs = [m["seq"] for m in messages[1:]]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert all(m["data"]["task_id"] == "w1" for m in messages)


async def test_since_seq_replays_everything_without_gaps(make_api: MakeApi, tmp_path: Path) -> None:
    api = await fast_api(make_api, tmp_path)
    await api.post("/api/v1/training/start", json=api.job(task_id="w2"))
    store = api.daemon.services.store
    await wait_until(lambda: store.get("w2")["status"] in TERMINAL)
    await api.daemon.services.bus.drain(2)
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    url = f"{api.url}/api/v1/ws/training/w2?since_seq=3"
    async with api.session.ws_connect(url, headers=headers) as ws:
        messages = await receive_all(ws)
    recorded = await asyncio.to_thread(store.read_events, "w2", 3)
    assert [m["seq"] for m in messages] == [e["seq"] for e in recorded]
    assert [m["type"] for m in messages] == [e["type"] for e in recorded]


@pytest.mark.parametrize("query", ["", "?token=wrong"])
async def test_a_handshake_without_a_valid_key_is_refused(api: Api, query: str) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("w3"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.session.ws_connect(f"{api.url}/api/v1/ws/training/w3{query}")
    assert refused.value.status == 401


async def test_unknown_task_and_plain_get(api: Api) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.session.ws_connect(f"{api.url}/api/v1/ws/training/nope?token={BOOTSTRAP}")
    assert refused.value.status == 404
    await api.post("/api/v1/training/start", json=await api.parked_job("w4"))
    plain = await api.get("/api/v1/ws/training/w4")
    assert plain.status == 400 and plain.body["code"] == 400


async def test_open_sockets_do_not_hold_up_shutdown(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("w5"))
    url = f"{api.url}/api/v1/ws/training/w5?token={BOOTSTRAP}"
    async with api.session.ws_connect(url) as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "progress" and first["data"]["status"] == "queued"
        async with asyncio.timeout(5):
            await api.daemon.shutdown()
        closing = await ws.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
