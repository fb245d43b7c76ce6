"""``POST /api/v1/training/start`` in fleet mode (FLEET.md §9.1.1): the job goes to the
fleet queue (its record created in ``dpd_jobs``), not to this host's spool.

Installed as a middleware in front of the single-host route, and only when ``fleet.enabled``:
the route's own checks look at this host's GPUs, which in a fleet decide nothing (a 4-GPU job
sent to a 2-GPU host runs on the 4-GPU one). Validation is the intake's, unchanged.

Answers: 201 once the record exists (durable on a quorum); 200 with the existing task for a
client ``task_id`` that exists (DESIGN §3); 507 when no registered node of this host's
``filesystem_domain`` can ever run it; 409 when it may not queue (no ``queue: true``) and no
live node's last heartbeat shows enough free GPUs — best effort, another claim may take them
first; 503 with ``Retry-After`` while the queue is unreachable (nothing was created).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from aiohttp import web

from dpd.errors import Conflict, InsufficientResources, ServiceUnavailable
from dpd.fleet.agent import FleetAgent
from dpd.fleet.placer import fit, free_views
from dpd.fleet.records import JobRecord
from dpd.fleet.submit import QueueUnavailable
from dpd.fleet.transitions import NodeFacts, public_status
from dpd.http.common import envelope_response, principal
from dpd.http.routing import Route, guarded
from dpd.jobs.spec import JobSpec
from dpd.spool.intake import JobIntake
from dpd.spool.store import Submission
from dpd.supervisor.scheduler import QueuedJob

START_PATH: Final = "/api/v1/training/start"
RETRY_AFTER: Final = 5


def middleware(agent: FleetAgent, intake: JobIntake) -> Any:
    """Serves the start route itself, behind the route's own permission and rate checks."""

    async def start(request: web.Request) -> web.StreamResponse:
        return await start_training(request, agent, intake)

    guarded_start = guarded(
        Route("POST", START_PATH, start, permission="training", rate="training")
    )

    @web.middleware
    async def fleet_start(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and request.path == START_PATH:
            return await guarded_start(request)
        response: web.StreamResponse = await handler(request)
        return response

    return fleet_start


async def start_training(
    request: web.Request, agent: FleetAgent, intake: JobIntake
) -> web.Response:
    who = principal(request)
    body = await request.read()
    spec = await intake.validate(body, "json")
    if not agent.ready.is_set():
        return unavailable("not connected yet")
    if spec.task_id is not None:
        existing = await agent.existing(spec.task_id)
        if existing is not None:
            return envelope_response(created_view(existing), 200, "task already exists")
    check_feasible(agent, spec)
    submission = Submission("rest", who.key_id or "", hashlib.sha256(body).hexdigest())
    try:
        done = await agent.commit(spec, submission, who.key_id)
    except QueueUnavailable as err:
        return unavailable(str(err))
    if not done.created:
        return envelope_response(created_view(done.record), 200, "task already exists")
    return envelope_response(created_view(done.record), 201, "training task created")


def unavailable(reason: str) -> web.Response:
    """503: nothing was created; the same request (same task_id) may be sent again."""
    data = {"retry_after": RETRY_AFTER, "reason": reason}
    headers = {"Retry-After": str(RETRY_AFTER)}
    return envelope_response(data, ServiceUnavailable.code, "fleet queue unavailable", headers)


def check_feasible(agent: FleetAgent, spec: JobSpec) -> None:
    """507: no registered, not-down node of this domain could ever run it; 409: it may not
    queue and no live node shows enough free GPUs now (§9.1.1 step 2)."""
    domain = agent.fleet.filesystem_domain
    job = QueuedJob.submitted(spec)
    nodes = [n for n in agent.registered_nodes() if n.filesystem_domain == domain and not n.down]
    largest = max((len(n.gpus) for n in nodes), default=0)
    if not any(len(n.gpus) >= job.needed for n in nodes):
        raise InsufficientResources(
            f"no node of the fleet has {job.needed} GPU(s)",
            {
                "required_gpus": job.needed,
                "recommended_action": "ask for fewer GPUs or add a larger node",
                "fleet": {"largest_node_gpus": largest},
            },
        )
    if spec.queue:
        return
    alive = agent.alive_nodes()
    for node in nodes:
        beat = alive.get(node.node)
        if beat is None:
            continue
        facts = NodeFacts(node.node, domain, node.labels, {g.id: g.memory_total for g in node.gpus})
        if fit(job, free_views(beat.free, facts)) is not None:
            return
    raise Conflict(
        "no GPU in the fleet is free for this job now; send queue=true to wait for one",
        {
            "available_gpus": {n: [g.id for g in a.free] for n, a in alive.items()},
            "current_tasks": sorted({t for a in alive.values() for t in a.running}),
        },
    )


def created_view(record: JobRecord) -> dict[str, Any]:
    spec = record.spec or {}
    return {
        "task_id": record.task_id,
        "status": public_status(record.state),
        "gpu_id": None,
        "gpu_ids": list(record.owner.gpus) if record.owner else None,
        "gpu_name": None,
        "model_type": spec.get("model_type"),
        "config": spec.get("config"),
        "description": spec.get("description"),
        "created_at": record.submitted_at,
        "queue_position": None,
        "estimated_start_time": None,
        "estimated_duration": None,
        "fleet": {
            "state": record.state.value,
            "owner": record.owner.node if record.owner else None,
        },
    }
