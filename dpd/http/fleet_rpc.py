"""The owner's side of fleet RPC (FLEET.md §9.6, §9.8): a call another node forwards is
answered by this node's own route, in-process, exactly as its HTTP server would answer it.

The request is rebuilt from the forwarded method and path (with its query), resolved by the
app's router, checked against the route's permission with the caller's permissions as the
forwarding node asserted them (it authenticated the caller; one trust domain), and run
behind ``error_middleware``, the one place errors become envelopes. The rate limit was
counted on the forwarding node.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from dpd.fleet.rpc import RpcReply, RpcRequest, RpcService, error_body
from dpd.http.common import PRINCIPAL, Principal
from dpd.http.middlewares import error_middleware
from dpd.http.routing import declared_routes
from dpd.services import SERVICES


class LocalAnswers:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    def service(self, node: str) -> RpcService:
        return RpcService(node, self.answer, self.events_after)

    async def answer(self, call: RpcRequest, verb: str) -> RpcReply:
        """This node's REST answer to ``call``."""
        request = make_mocked_request(call.method, call.path_qs, app=self.app)
        match = await self.app.router.resolve(request)
        handler = getattr(match.handler, "__wrapped__", match.handler)  # behind its guard
        permission = _permission_of(self.app, handler)
        who = Principal(call.key_id, call.user, frozenset(call.permissions))
        if permission is not None and not who.has(permission):
            message = f"this API key lacks the {permission!r} permission"
            return RpcReply(403, error_body(403, message))
        request = make_mocked_request(
            call.method, call.path_qs, app=self.app, match_info=dict(match)
        )
        request[PRINCIPAL] = who
        response = await error_middleware(request, handler)
        body = response.body if isinstance(response, web.Response) else None
        if not isinstance(body, bytes):
            return RpcReply(500, error_body(500, "the route gave no JSON body"))
        return RpcReply(response.status, body)

    async def events_after(self, task_id: str, after: int) -> list[dict[str, Any]]:
        """The task's events after seq ``after`` from its events.jsonl (404 if unknown)."""
        store = self.app[SERVICES].store
        return await asyncio.to_thread(store.read_events, task_id, after)


def _permission_of(app: web.Application, handler: Any) -> str | None:
    for route in declared_routes(app):
        if route.handler is handler:
            return route.permission
    return None
