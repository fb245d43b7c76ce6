"""``GET /training/{id}/logs/stream``: server-sent events (api.md §5.2, DESIGN §4).

Log lines as api.md's line objects, status/progress/metrics as named events, each with an
``id:`` (``dpd.logs.sse``). ``Last-Event-ID`` (or the ``last_event_id`` query parameter, for
clients that cannot set headers) resumes exactly after what the client had, replaying from
events.jsonl; without it the stream starts with what happens from now. A comment line every
``HEARTBEAT_SECONDS`` keeps proxies from closing an idle stream. Once the task has ended
(its terminal status was sent) an ``end`` event closes the stream.

Query: ``level``, ``type`` filter log lines like /logs; ``kinds`` (``log,status,progress,
metrics``, default all) picks the events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from dpd.http.common import query_choice
from dpd.http.routing import Route, add_routes
from dpd.logs.entries import LEVELS, TYPES, make_filter
from dpd.logs.feed import Finished, TaskFeed
from dpd.logs.sse import HEARTBEAT, event_messages, message, parse_cursor, parse_kinds, retry_hint
from dpd.services import SERVICES

PREFIX = "/api/v1/training"
HEARTBEAT_SECONDS: float = 15.0
# How often an idle stream looks whether its client has gone (a write would fail anyway,
# but only at the next heartbeat).
CLIENT_CHECK_SECONDS: float = 1.0
RETRY_MILLISECONDS: Final = 2000
# The handler tasks of open streams: ended when the daemon shuts down, so shutdown never
# waits for clients that would otherwise keep their stream forever.
OPEN_STREAMS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("dpd.sse_streams")


def setup(app: web.Application) -> None:
    streams: set[asyncio.Task[Any]] = set()
    app[OPEN_STREAMS] = streams
    app.on_shutdown.append(_end_streams)
    add_routes(app, ROUTES)


async def _end_streams(app: web.Application) -> None:
    opened = app[OPEN_STREAMS]
    for task in list(opened):
        task.cancel()


async def stream_logs(request: web.Request) -> web.StreamResponse:
    keep = make_filter(query_choice(request, "level", LEVELS), query_choice(request, "type", TYPES))
    kinds = parse_kinds(request.query.get("kinds"))
    cursor = parse_cursor(
        request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    )
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    services.store.get(task_id)  # 404 before the stream starts
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass events through as they come
        }
    )
    after = cursor.after_seq if cursor is not None else None

    def render(event: dict[str, Any]) -> list[bytes]:
        return event_messages(event, kinds, keep, cursor)

    me = asyncio.current_task()
    streams = request.app[OPEN_STREAMS]
    with TaskFeed(services.store, services.bus, task_id, after) as feed:
        await response.prepare(request)
        await response.write(retry_hint(RETRY_MILLISECONDS))
        if me is not None:
            streams.add(me)
        try:
            await _send_events(request, response, feed, render)
        finally:
            if me is not None:
                streams.discard(me)
    return response


async def _send_events(
    request: web.Request,
    response: web.StreamResponse,
    feed: TaskFeed,
    render: Callable[[dict[str, Any]], list[bytes]],
) -> None:
    """Until the task ends or the client goes; a heartbeat after every quiet spell."""
    quiet_since = time.monotonic()
    while True:
        event = await feed.next(min(HEARTBEAT_SECONDS, CLIENT_CHECK_SECONDS))
        if event is None:
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            if time.monotonic() - quiet_since >= HEARTBEAT_SECONDS:
                await response.write(HEARTBEAT)
                quiet_since = time.monotonic()
            continue
        if isinstance(event, Finished):
            end = {"task_id": feed.task_id, "last_seq": feed.cursor}
            await response.write(message(end, str(feed.cursor), "end"))
            return
        for chunk in render(event):
            await response.write(chunk)
        quiet_since = time.monotonic()


ROUTES = (Route("GET", f"{PREFIX}/{{task_id}}/logs/stream", stream_logs, rate="logs"),)
