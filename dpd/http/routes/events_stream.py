"""``GET /api/v1/events/stream``: one server-sent event stream of everything the dashboard
shows live — every task's status, progress, metrics and alerts, GPU snapshots,
preprocessing and model downloads (log lines only when ``kinds`` asks for them).

Each message is ``id: <boot_id>:<n>``, ``event: <name>``, ``data: <the event as on NATS>``
(``dpd.events.ring``). ``Last-Event-ID`` (or ``last_event_id``) resumes right after that
event from the in-memory ring; an id from another daemon run or one the ring no longer
holds first gets ``event: resync`` (the client refetches its REST state) and then the
stream goes on from now. A client that falls behind the ring while connected gets the same.
A comment line every ``HEARTBEAT_SECONDS`` keeps proxies from closing a quiet stream; events
are written at most every ``BATCH_SECONDS``, several per write when they come fast.

Owns: the ring and the task that feeds it from the bus (started and stopped with the app),
and a GPU-monitor listener that adds one ``gpu`` event per snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from aiohttp import web

from dpd.errors import BadRequest
from dpd.events.bus import Subscription
from dpd.events.ring import EventRing
from dpd.http.common import principal
from dpd.logs.sse import HEARTBEAT, retry_hint
from dpd.services import SERVICES
from dpd.supervisor.gpus import GpuInfo

PATH: Final = "/api/v1/events/stream"
KINDS: Final = (
    "status",
    "progress",
    "metrics",
    "alert",
    "priority",
    "gpu",
    "preprocess",
    "download",
    "log",
)
DEFAULT_KINDS: Final = frozenset(KINDS) - {"log"}
HEARTBEAT_SECONDS: float = 15.0
# After each write a stream gathers events this long before the next one: a browser needs no
# more than a few updates a second, and with many tabs open the daemon then wakes each
# stream a few times a second, not once per event (bench/bench_dashboard_api.py).
BATCH_SECONDS: float = 0.2
CLIENT_CHECK_SECONDS: float = 1.0
RETRY_MILLISECONDS: Final = 2000
EVENT_RING: web.AppKey[EventRing] = web.AppKey("dpd.event_ring", EventRing)
OPEN: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("dpd.events_streams")


def setup(app: web.Application, ring: EventRing | None = None) -> None:
    app[EVENT_RING] = ring or EventRing()
    app[OPEN] = set()
    app.cleanup_ctx.append(_feed_ring)
    app.on_shutdown.append(_end_streams)
    app.router.add_get(PATH, stream_events)


def gpu_event(node: str, seq: int, snapshot: list[GpuInfo]) -> dict[str, Any]:
    return {
        "type": "gpu",
        "scope": "gpus",
        "task_id": None,
        "node": node,
        "seq": seq,
        "timestamp": time.time(),
        "data": {"gpus": [dataclasses.asdict(g) for g in snapshot]},
    }


async def _feed_ring(app: web.Application) -> AsyncIterator[None]:
    services, ring = app[SERVICES], app[EVENT_RING]
    subscription = services.bus.subscribe()
    feeding = True
    node = services.config.daemon.node

    def on_snapshot(snapshot: list[GpuInfo]) -> None:
        if feeding:
            ring.append(gpu_event(node, services.monitor.polls, snapshot))

    services.monitor.add_listener(on_snapshot)
    pump = asyncio.create_task(_pump(subscription, ring), name="event ring")
    yield
    feeding = False
    pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump
    services.bus.unsubscribe(subscription)


async def _pump(subscription: Subscription, ring: EventRing) -> None:
    async for event in subscription:
        ring.append(event)


async def _end_streams(app: web.Application) -> None:
    opened = app[OPEN]
    for task in list(opened):
        task.cancel()


def parse_stream_kinds(text: str | None) -> frozenset[str]:
    if text is None or text.strip() == "":
        return DEFAULT_KINDS
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    if not kinds or kinds - set(KINDS):
        raise BadRequest(f"query parameter 'kinds' takes a list of {', '.join(KINDS)}")
    return kinds


def resync_message(ring: EventRing) -> bytes:
    return (
        f"id: {ring.boot_id}:{ring.last}\nevent: resync\n"
        f'data: {{"boot_id":"{ring.boot_id}","last":{ring.last}}}\n\n'
    ).encode()


async def stream_events(request: web.Request) -> web.StreamResponse:
    principal(request)
    kinds = parse_stream_kinds(request.query.get("kinds"))
    resume = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    ring = request.app[EVENT_RING]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    await response.write(retry_hint(RETRY_MILLISECONDS))
    cursor = ring.last
    if resume:
        wanted = ring.parse_id(resume)
        if wanted is None or ring.after(wanted) is None:
            await response.write(resync_message(ring))
        else:
            cursor = wanted
    me = asyncio.current_task()
    if me is not None:
        request.app[OPEN].add(me)
    try:
        await _send(request, response, ring, kinds, cursor)
    finally:
        if me is not None:
            request.app[OPEN].discard(me)
    return response


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    ring: EventRing,
    kinds: frozenset[str],
    cursor: int,
) -> None:
    """Until the client goes (or the daemon stops); a heartbeat after every quiet spell."""
    quiet_since = time.monotonic()
    while True:
        entries = ring.after(cursor)
        if entries is None:  # fell behind what the ring holds
            await response.write(resync_message(ring))
            cursor = ring.last
            continue
        if entries:
            cursor = entries[-1].n
            chunk = b"".join(e.wire for e in entries if e.name in kinds)
            if chunk:
                await response.write(chunk)
                quiet_since = time.monotonic()
                await asyncio.sleep(BATCH_SECONDS)
            continue
        await ring.wait(cursor, min(HEARTBEAT_SECONDS, CLIENT_CHECK_SECONDS))
        if ring.last > cursor:
            continue
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        if time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
            await response.write(HEARTBEAT)
            quiet_since = time.monotonic()
