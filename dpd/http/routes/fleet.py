"""``/api/v1/fleet/*`` (fleet mode only, FLEET.md §15): the fleet as this host's agent sees it.

Read from the agent's watched tables: a hint (a watch reads one replica, §3.4), fresh within
a heartbeat. Phase 1 has ``GET /api/v1/fleet/nodes`` and ``GET /api/v1/fleet/stats``;
phase 3 the operator's writes (admin permission): ``POST …/nodes/{node}/drain`` (body
``{"undo": true}`` to undo) and ``POST …/nodes/{node}/down`` (body ``{"reason": "…"}``; 409
while the node heartbeats).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Final

from aiohttp import web

from dpd.errors import BadRequest, ServiceUnavailable
from dpd.fleet.agent import FleetAgent
from dpd.fleet.submit import QueueUnavailable
from dpd.http.common import envelope_response, json_body, principal
from dpd.http.routing import Route, add_routes

PREFIX: Final = "/api/v1/fleet"
AGENT: Final = web.AppKey("fleet_agent", FleetAgent)


def setup(app: web.Application, agent: FleetAgent) -> None:
    app[AGENT] = agent
    add_routes(app, ROUTES)


async def list_nodes(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    data = {"node": agent.node, "ready": agent.ready.is_set(), "nodes": agent.nodes_view()}
    return envelope_response(data)


async def stats(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    return envelope_response({"node": agent.node, **asdict(agent.stats)})


# --- phase 3: the operator's writes (FLEET.md §9.3, §9.6)


def _object(body: object, allowed: dict[str, type]) -> dict[str, object]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    for name, value in body.items():
        kind = allowed.get(name)
        if kind is None:
            raise BadRequest(f"unknown field {name!r} (allowed: {', '.join(sorted(allowed))})")
        if not isinstance(value, kind):
            raise BadRequest(f"{name} must be a {kind.__name__}")
    return body


def _node_view(agent: FleetAgent, node: str) -> dict[str, object]:
    for view in agent.nodes_view():
        if view["node"] == node:
            return view
    return {"node": node}


async def drain_node(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    node = request.match_info["node"]
    body = _object(await json_body(request), {"undo": bool})
    undo = bool(body.get("undo", False))
    try:
        record = await agent.drain(node, not undo)
    except QueueUnavailable as err:
        raise ServiceUnavailable(f"fleet registry unavailable: {err}") from err
    data = {**_node_view(agent, node), "node": node, "draining": record.draining}
    return envelope_response(data, message="drain undone" if undo else "draining")


async def mark_node_down(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    node = request.match_info["node"]
    body = _object(await json_body(request), {"reason": str})
    reason = str(body.get("reason") or "marked down by an operator")
    who = principal(request)
    try:
        record = await agent.node_down(node, f"{agent.node}/{who.key_id}", reason)
    except QueueUnavailable as err:
        raise ServiceUnavailable(f"fleet registry unavailable: {err}") from err
    data = {**_node_view(agent, node), "node": node, "down": record.down}
    return envelope_response(data, message="marked down")


ROUTES: Final = (
    Route("GET", f"{PREFIX}/nodes", list_nodes),
    Route("GET", f"{PREFIX}/stats", stats),
    Route("POST", f"{PREFIX}/nodes/{{node}}/drain", drain_node, permission="admin"),  # phase 3
    Route("POST", f"{PREFIX}/nodes/{{node}}/down", mark_node_down, permission="admin"),
)
