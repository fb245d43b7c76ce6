"""The multiplexed SSE stream on a real daemon: every task's events and GPU snapshots on one
connection, ``kinds`` filtering, ``Last-Event-ID`` resuming from the ring with nothing lost
or repeated, and ``resync`` for an id the ring cannot serve."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from dpd.client.sse import SseEvent, SseParser
from dpd.events.ring import EventRing
from dpd.http.routes.events_stream import EVENT_RING
from tests.http.conftest import BOOTSTRAP, Api

URL = "/api/v1/events/stream"


async def read_stream(
    api: Api,
    stop: Callable[[list[SseEvent]], bool],
    last_event_id: str | None = None,
    query: str = "",
    during: Callable[[], object] | None = None,
    timeout: float = 10.0,
) -> list[SseEvent]:
    headers = {"Authorization": f"Bearer {BOOTSTRAP}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    parser, events = SseParser(), []
    async with api.session.get(f"{api.url}{URL}{query}", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        if during is not None:
            result = during()
            if asyncio.iscoroutine(result):
                await result
        async with asyncio.timeout(timeout):
            async for line in response.content:
                event = parser.feed(line.decode())
                if event is not None:
                    events.append(event)
                    if stop(events):
                        break
    return events


def of_task(events: list[SseEvent], task_id: str) -> list[SseEvent]:
    return [e for e in events if e.event != "resync" and json.loads(e.data)["task_id"] == task_id]


async def test_one_stream_carries_every_tasks_events(api: Api) -> None:
    async def start_two() -> None:
        for task_id in ("multi-a", "multi-b"):
            reply = await api.post("/api/v1/training/start", json=await api.parked_job(task_id))
            assert reply.status == 201

    events = await read_stream(
        api,
        lambda es: bool(of_task(es, "multi-a")) and bool(of_task(es, "multi-b")),
        during=start_two,
    )
    for task_id in ("multi-a", "multi-b"):
        status = of_task(events, task_id)[0]
        assert status.event == "status"
        record = json.loads(status.data)
        assert record["data"]["status"] == "queued"
        assert {"type", "task_id", "node", "seq", "timestamp", "data"} <= set(record)
        assert status.id is not None and status.id.startswith(api_boot(api) + ":")


def api_boot(api: Api) -> str:
    return api.daemon.app[EVENT_RING].boot_id


async def test_gpu_snapshots_arrive_and_kinds_filter(api: Api) -> None:
    events = await read_stream(api, lambda es: len(es) >= 2, query="?kinds=gpu")
    assert {e.event for e in events} == {"gpu"}
    gpus = json.loads(events[0].data)["data"]["gpus"]
    assert [g["gpu_id"] for g in gpus] == [0, 1]
    assert {"memory_used", "utilization_gpu", "temperature", "power_usage", "processes"} <= set(
        gpus[0]
    )
    bad = await api.get(URL + "?kinds=gpu,nonsense")
    assert bad.status == 400


async def test_last_event_id_resumes_with_nothing_lost_or_repeated(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("resume-a"))
    first = await read_stream(
        api,
        lambda es: len(es) >= 3,
        query="?kinds=gpu,status",
    )
    last_id = first[-1].id
    assert last_id is not None
    await api.post("/api/v1/training/start", json=await api.parked_job("resume-b"))
    resumed = await read_stream(
        api,
        lambda es: bool(of_task(es, "resume-b")),
        last_event_id=last_id,
        query="?kinds=gpu,status",
    )
    assert resumed[0].event != "resync"
    numbers = [int(e.id.split(":")[1]) for e in resumed if e.id]
    assert numbers[0] > int(last_id.split(":")[1])
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert not {e.id for e in first} & {e.id for e in resumed}
    # exactly the ring's gpu and status events after the id, up to the last one read
    held = api.daemon.app[EVENT_RING].after(int(last_id.split(":")[1])) or []
    wanted = [e.n for e in held if e.name in ("gpu", "status") and e.n <= numbers[-1]]
    assert wanted == numbers


@pytest.mark.parametrize("stale", ["0123abcd:5", "garbage"])
async def test_an_id_from_another_run_gets_resync_first(api: Api, stale: str) -> None:
    events = await read_stream(api, lambda es: len(es) >= 2, last_event_id=stale,
                               query="?kinds=gpu")  # fmt: skip
    assert events[0].event == "resync"
    assert events[1].event == "gpu"


async def test_an_id_the_ring_dropped_gets_resync(api: Api) -> None:
    ring = api.daemon.app[EVENT_RING]
    old = f"{ring.boot_id}:{ring.last}"
    for index in range(ring.capacity + 5):
        ring.append({"type": "metrics", "task_id": "x", "seq": index, "data": {}})
    events = await read_stream(api, lambda es: len(es) >= 1, last_event_id=old)
    assert events[0].event == "resync"


def test_the_ring_serves_what_it_holds() -> None:
    ring = EventRing(capacity=3, boot_id="beef")
    assert ring.after(0) == []
    for n in range(5):
        ring.append({"type": "status", "task_id": "t", "seq": n, "data": {}})
    assert [e.n for e in ring.after(2) or []] == [3, 4, 5]
    assert ring.after(1) is None  # event 2 was dropped
    assert ring.after(5) == [] and ring.after(6) is None
    assert ring.parse_id("beef:4") == 4
    assert ring.parse_id("other:4") is None and ring.parse_id("4") is None
    entry = ring.after(4)[0]  # type: ignore[index]
    assert entry.wire.startswith(b"id: beef:5\nevent: status\ndata: {")
    assert ring.append({"type": "progress", "scope": "preprocess", "task_id": "p"}).name == (
        "preprocess"
    )


async def test_the_ring_wakes_a_waiting_reader() -> None:
    ring = EventRing()
    waiting = asyncio.create_task(ring.wait(0, 5.0))
    await asyncio.sleep(0)
    ring.append({"type": "status", "task_id": "t", "data": {}})
    await asyncio.wait_for(waiting, 1.0)


async def test_a_5000_digit_id_gets_resync_and_the_stream_goes_on(api: Api) -> None:
    """A Last-Event-ID too long to be a number (issue 14, hostile input) is a stale id:
    resync, then the stream, never an error."""
    for cursor in (f"{api_boot(api)}:" + "9" * 5000, "9" * 5000):
        events = await read_stream(api, lambda es: len(es) >= 2, last_event_id=cursor,
                                   query="?kinds=gpu")  # fmt: skip
        assert events[0].event == "resync"
        assert events[1].event == "gpu"
