"""The SSE log stream on a real daemon: every event with its id, Last-Event-ID resuming with
nothing lost and nothing repeated (during a stand-in training and under a burst of events at
the replay/live seam), heartbeats, and the end of the stream."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpd.client.sse import SseEvent, SseParser
from dpd.http.routes import stream
from dpd.logs.entries import LineFilter
from dpd.logs.sse import event_messages, parse_kinds
from tests.http.conftest import BOOTSTRAP, Api, MakeApi, make_config
from tests.waiting import wait_until

TERMINAL = ("completed", "failed", "stopped")


async def fast_api(make_api: MakeApi, tmp_path: Path) -> Api:
    trainer = make_config(tmp_path / "unused").trainer
    env = dict(trainer.env, DPD_SIM_STEP_SECONDS="0.05")
    return await make_api(trainer=dataclasses.replace(trainer, env=env))


async def read_sse(
    api: Api,
    task_id: str,
    stop: Callable[[list[SseEvent]], bool],
    last_event_id: str | None = None,
    query: str = "",
    timeout: float = 8.0,
) -> tuple[list[SseEvent], list[str]]:
    """Events (and raw lines) until ``stop`` says so or the server ends the stream."""
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    parser, events, raw = SseParser(), [], []
    url = f"{api.url}/api/v1/training/{task_id}/logs/stream{query}"
    async with api.session.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        async with asyncio.timeout(timeout):
            async for line in response.content:
                raw.append(line.decode())
                event = parser.feed(line.decode())
                if event is not None:
                    events.append(event)
                    if stop(events):
                        break
    return events, raw


def expected_stream(api: Api, task_id: str) -> list[tuple[str, str | None, str]]:
    """What the stream must carry for the task: every recorded event, in order."""
    parser, out = SseParser(), []
    for record in api.daemon.services.store.read_events(task_id):
        for chunk in event_messages(record, parse_kinds(None), LineFilter()):
            for line in chunk.decode().split("\n"):
                event = parser.feed(line)
                if event is not None:
                    out.append((event.event, event.id, event.data))
    return out


def ended(events: list[SseEvent]) -> bool:
    return events[-1].event == "end"


async def test_resume_with_last_event_id_loses_nothing_during_a_training(
    make_api: MakeApi, tmp_path: Path
) -> None:
    api = await fast_api(make_api, tmp_path)
    assert (await api.post("/api/v1/training/start", json=api.job(task_id="s1"))).status == 201
    first, _ = await read_sse(api, "s1", lambda e: len(e) >= 12 or ended(e), last_event_id="0")
    rest, _ = await read_sse(api, "s1", ended, last_event_id=first[-1].id)
    assert rest[-1].event == "end"
    got = [(e.event, e.id, e.data) for e in first + rest[:-1]]
    assert api.daemon.services.store.get("s1")["status"] == "completed"
    assert got == await asyncio.to_thread(expected_stream, api, "s1")
    kinds = {event for event, _, _ in got}
    assert {"message", "status", "progress", "metrics"} <= kinds


async def test_the_replay_live_seam_under_a_burst_of_events(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("burst"))
    bus, store = api.daemon.services.bus, api.daemon.services.store
    total = 1500

    async def produce() -> None:
        for index in range(total):
            bus.emit("jobs", "burst", "log", {"lines": [f"line {index}"], "offset": 0})
            if index % 50 == 0:
                await asyncio.sleep(0.001)

    producer = asyncio.create_task(produce())
    await wait_until(lambda: store.last_event_seq("burst") >= 300, interval=0.001)
    final_seq = 1 + total  # the job's queued status is seq 1
    events, _ = await read_sse(
        api, "burst", lambda e: e[-1].id == str(final_seq), last_event_id="1", query="?kinds=log"
    )
    await producer
    assert [e.id for e in events] == [str(seq) for seq in range(2, final_seq + 1)]
    messages = [json.loads(e.data)["message"] for e in events]
    assert messages == [f"line {index}" for index in range(total)]


async def test_heartbeats_keep_an_idle_stream_open(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "HEARTBEAT_SECONDS", 0.05)
    await api.post("/api/v1/training/start", json=await api.parked_job("idle"))
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    url = f"{api.url}/api/v1/training/idle/logs/stream"
    beats = 0
    async with api.session.get(url, headers=headers) as response, asyncio.timeout(5):
        async for line in response.content:
            beats += line == b": heartbeat\n"
            if beats == 3:
                break
    assert beats == 3


async def test_a_finished_task_replays_and_ends(make_api: MakeApi, tmp_path: Path) -> None:
    api = await fast_api(make_api, tmp_path)
    await api.post("/api/v1/training/start", json=api.job(task_id="done"))
    store = api.daemon.services.store
    await wait_until(lambda: store.get("done")["status"] in TERMINAL)
    await api.daemon.services.bus.drain(2)
    now_only, _ = await read_sse(api, "done", ended)
    assert [e.event for e in now_only] == ["end"]
    everything, _ = await read_sse(api, "done", ended, last_event_id="0", query="?kinds=status")
    statuses: list[Any] = [e.data for e in everything if e.event == "status"]
    assert '"status":"completed"' in statuses[-1] and everything[-1].event == "end"
    errors, _ = await read_sse(api, "done", ended, query="?level=ERROR&kinds=log,status",
                               last_event_id="0")  # fmt: skip
    assert [e.event for e in errors] == ["status"] * len(errors[:-1]) + ["end"]


async def test_refusals_come_before_the_stream(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("p"))
    path = "/api/v1/training/p/logs/stream"
    assert (await api.get(path, key=None)).status == 401
    assert (await api.get("/api/v1/training/none/logs/stream")).status == 404
    bad = await api.get(path, headers={"Last-Event-ID": "x"})
    assert bad.status == 400 and bad.body["code"] == 400
    assert (await api.get(path + "?kinds=bogus")).status == 400


async def test_open_streams_do_not_hold_up_shutdown(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("held"))
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    url = f"{api.url}/api/v1/training/held/logs/stream"
    async with api.session.get(url, headers=headers) as response:
        assert (await response.content.readline()).startswith(b"retry:")
        async with asyncio.timeout(5):
            await api.daemon.shutdown()
