"""``/api/v1/ws/training/{id}``: a WebSocket pushing progress, log, metrics and status
messages (api.md §9; format in ``dpd.logs.wsmessages``).

Auth on connect: the auth middleware takes ``Authorization: Bearer`` or, for browsers,
``?token=`` on /api/v1/ws/ paths; the handshake is refused (401/404/400) before the upgrade.
``since_seq`` replays the recorded events after that seq first (the same feed as the SSE
stream, so nothing is lost or repeated at the seam); without it the first message is a
``progress`` snapshot of the task as it stands. Once the task has ended the socket is
closed normally (1000). Messages from the client are read and ignored; a close ends it.

Owns per connection: one reader task and one pusher task; each ends the other.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

from aiohttp import WSCloseCode, web

from dpd.errors import BadRequest
from dpd.http.common import query_int
from dpd.http.routing import Route, add_routes
from dpd.logs.feed import Finished, TaskFeed
from dpd.logs.wsmessages import MessageBuilder
from dpd.services import SERVICES

PATH = "/api/v1/ws/training/{task_id}"
PING_SECONDS: Final = 20.0
WAIT_SECONDS: Final = 5.0


# Open sockets, closed (1001 going away) when the daemon shuts down.
OPEN_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("dpd.websockets")


def setup(app: web.Application) -> None:
    sockets: set[web.WebSocketResponse] = set()
    app[OPEN_SOCKETS] = sockets
    app.on_shutdown.append(_close_sockets)
    add_routes(app, ROUTES)


async def _close_sockets(app: web.Application) -> None:
    opened = app[OPEN_SOCKETS]
    for socket in list(opened):
        await socket.close(code=WSCloseCode.GOING_AWAY, message=b"dpd is shutting down")


async def training_socket(request: web.Request) -> web.WebSocketResponse:
    since = query_int(request, "since_seq", None, minimum=0)
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    state = services.store.get(task_id)
    socket = web.WebSocketResponse(heartbeat=PING_SECONDS)
    if not socket.can_prepare(request).ok:
        raise BadRequest("this route needs a WebSocket upgrade")
    builder = MessageBuilder.from_state(state)
    with TaskFeed(services.store, services.bus, task_id, since) as feed:
        await socket.prepare(request)
        request.app[OPEN_SOCKETS].add(socket)
        if since is None:
            await socket.send_json(builder.snapshot(services.store.get(task_id), feed.cursor))
        reader = asyncio.create_task(_read_until_closed(socket))
        pusher = asyncio.create_task(_push(socket, feed, builder))
        try:
            await asyncio.wait({reader, pusher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, pusher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            request.app[OPEN_SOCKETS].discard(socket)
    if not socket.closed:
        await socket.close(code=WSCloseCode.OK, message=b"task finished")
    return socket


async def _read_until_closed(socket: web.WebSocketResponse) -> None:
    async for _ in socket:
        pass


async def _push(socket: web.WebSocketResponse, feed: TaskFeed, builder: MessageBuilder) -> None:
    while not socket.closed:
        event = await feed.next(WAIT_SECONDS)
        if event is None:
            continue
        if isinstance(event, Finished):
            return
        message: dict[str, Any] | None = builder.message(event)
        if message is not None:
            await socket.send_json(message)


ROUTES = (Route("GET", PATH, training_socket, rate="logs"),)
