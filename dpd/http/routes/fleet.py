"""``/api/v1/fleet/*`` (fleet mode only, FLEET.md §15): the fleet as this host's agent sees it.

Read from the agent's watched tables: a hint (a watch reads one replica, §3.4), fresh within
a heartbeat. Phase 1 has ``GET /api/v1/fleet/nodes`` and ``GET /api/v1/fleet/stats``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Final

from aiohttp import web

from dpd.fleet.agent import FleetAgent
from dpd.http.common import envelope_response
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


ROUTES: Final = (
    Route("GET", f"{PREFIX}/nodes", list_nodes),
    Route("GET", f"{PREFIX}/stats", stats),
)
