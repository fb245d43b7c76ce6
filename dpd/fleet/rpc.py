"""Request-reply between fleet nodes (FLEET.md §6.6, §9.6, §9.8): a node answers REST calls
about the jobs it owns for the other nodes, with exactly the envelope its own REST gives.

Subjects ``dpdctl.rpc.<node>.<verb>`` (outside ``dpd.>``, so stream ``DPD`` never stores a
request), served through nats-py's ``nats.micro`` service API, so ``$SRV.PING.dpd`` lists the
fleet. A request carries the REST call (method, path with its query) and the caller's key id
and permissions as the receiving node authenticated them (one trust domain, §9.8); the owner
(``dpd.http.fleet_rpc``) checks the permission against its own route table, runs the route's
handler in-process behind the same error mapping as its HTTP server, and the body goes back
as is with its status in the ``Dpd-Status`` header. Only the calls ``verb_for`` names are
served: this is not a general proxy.

Pure parts (``verb_for``, the request's encoding) are separate from the service and client.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import nats.errors
import nats.micro
from nats.aio.client import Client as NATS
from nats.micro.request import Request as MicroRequest
from nats.micro.service import EndpointConfig, Service, ServiceConfig

from dpd.errors import DpdError

log = logging.getLogger("dpd.fleet.rpc")

SUBJECT_ROOT: Final = "dpdctl.rpc"
SERVICE_NAME: Final = "dpd"
PROTOCOL_VERSION: Final = "1.0.0"  # of these requests and replies (semver, as nats.micro wants)
STATUS_HEADER: Final = "Dpd-Status"
TRAINING: Final = "/api/v1/training"
RESERVED: Final = frozenset({"list", "start", "stop", "validate"})  # not task ids here

# (method, path below /training/{task_id}) -> verb (§6.6)
_JOB_VERBS: Final = {
    ("GET", ""): "job.get",
    ("GET", "/logs"): "job.logs",
    ("GET", "/logs/search"): "job.logs",
    ("GET", "/progress"): "job.metrics",
    ("GET", "/metrics"): "job.metrics",
    ("POST", "/resume"): "job.resume",
}
VERBS: Final = (
    "job.get",
    "job.logs",
    "job.metrics",
    "job.stop",
    "job.resume",
    "job.events",
    "ping",
)
EVENTS_LIMIT: Final = 1000  # events per job.events answer
_JOB_PATH: Final = re.compile(
    r"/api/v1/training/([^/]+)(/logs/search|/logs|/progress|/metrics|/resume)?"
)
_STOP_PATH: Final = re.compile(r"/api/v1/training/stop/([^/]+)")


class RpcError(Exception):
    """The owner gave no answer (no responder, timeout, connection down)."""


@dataclass(frozen=True)
class Call:
    """One REST call for another node: what its verb is and which task it is about."""

    verb: str
    task_id: str


def verb_for(method: str, path: str) -> Call | None:
    """The RPC verb serving ``method path`` for a job, or None (not a forwarded call)."""
    stop = _STOP_PATH.fullmatch(path)
    if stop is not None:
        return Call("job.stop", stop.group(1)) if method == "POST" else None
    match = _JOB_PATH.fullmatch(path)
    if match is None or match.group(1) in RESERVED:
        return None
    verb = _JOB_VERBS.get((method, match.group(2) or ""))
    return None if verb is None else Call(verb, match.group(1))


def subject(node: str, verb: str) -> str:
    return f"{SUBJECT_ROOT}.{node}.{verb}"


@dataclass(frozen=True)
class RpcRequest:
    method: str
    path_qs: str  # the path with its query string, as the client sent it
    key_id: str = ""
    user: str = ""
    permissions: tuple[str, ...] = ()
    caller: str = ""  # the node that forwards

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> RpcRequest:
        d = json.loads(data)
        if not isinstance(d, dict):
            raise ValueError("an RPC request is a JSON object")
        return cls(
            method=str(d["method"]),
            path_qs=str(d["path_qs"]),
            key_id=str(d.get("key_id", "")),
            user=str(d.get("user", "")),
            permissions=tuple(str(p) for p in d.get("permissions", ())),
            caller=str(d.get("caller", "")),
        )


@dataclass(frozen=True)
class RpcReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def envelope(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


def reply_status(headers: dict[str, str] | None) -> int:
    try:
        return int((headers or {}).get(STATUS_HEADER, "200"))
    except ValueError:
        return 502


# ------------------------------------------------------------------------ the service


Answer = Callable[[RpcRequest, str], Awaitable[RpcReply]]  # (request, verb) -> the reply
EventsAfter = Callable[[str, int], Awaitable[list[dict[str, Any]]]]  # (task, seq) -> events


class RpcService:
    """Serves ``dpdctl.rpc.<node>.*``: ``answer`` gives the REST answer of a call (the HTTP
    layer runs this node's own route), ``events_after`` a task's events for ``job.events``.
    This module knows the transport only."""

    def __init__(self, node: str, answer: Answer, events_after: EventsAfter) -> None:
        self.node = node
        self.answer = answer
        self.events_after = events_after
        self.service: Service | None = None
        self.served = 0
        self.busy: set[str] = set()  # tasks with a call being answered

    async def start(self, nc: NATS) -> None:
        config = ServiceConfig(
            name=SERVICE_NAME,
            version=PROTOCOL_VERSION,
            description="dpd fleet node",
            metadata={"node": self.node},
        )
        self.service = await nats.micro.add_service(nc, config)
        handlers: dict[str, Any] = {"ping": self._handle_ping, "job.events": self._handle_events}
        for verb in VERBS:
            await self.service.add_endpoint(
                EndpointConfig(
                    name=verb.replace(".", "_"),
                    subject=subject(self.node, verb),
                    handler=handlers.get(verb, self._handle),
                    queue_group=f"dpd-rpc-{self.node}",
                )
            )

    async def stop(self) -> None:
        if self.service is not None:
            service, self.service = self.service, None
            await service.stop()

    async def _handle_events(self, request: MicroRequest) -> None:
        """``{"task_id", "after"}`` → the task's events after that seq (at most
        ``EVENTS_LIMIT``): what an SSE reader elsewhere fills a hole with."""
        try:
            query = json.loads(request.data)
            task_id, after = str(query["task_id"]), int(query["after"])
            events = await self.events_after(task_id, after)
        except (ValueError, KeyError, TypeError, DpdError) as err:
            await request.respond(b"[]", {STATUS_HEADER: "400", "Dpd-Error": str(err)[:200]})
            return
        body = json.dumps(events[:EVENTS_LIMIT], separators=(",", ":")).encode()
        await request.respond(body, {STATUS_HEADER: "200"})

    async def _handle_ping(self, request: MicroRequest) -> None:
        await request.respond(json.dumps({"node": self.node}).encode())

    async def _handle(self, request: MicroRequest) -> None:
        wanted = ".".join(request.subject.rsplit(".", 2)[-2:])
        try:
            call = RpcRequest.decode(request.data)
        except (ValueError, KeyError) as err:
            await request.respond(
                error_body(400, f"bad RPC request: {err}"), {STATUS_HEADER: "400"}
            )
            return
        found = verb_for(call.method, call.path_qs.split("?", 1)[0])
        if found is None or found.verb != wanted:
            body = error_body(400, f"{call.method} {call.path_qs} is not a {wanted} call")
            await request.respond(body, {STATUS_HEADER: "400"})
            return
        self.busy.add(found.task_id)
        try:
            response = await self.answer(call, wanted)
        finally:
            self.busy.discard(found.task_id)
        self.served += 1
        await request.respond(response.body, {STATUS_HEADER: str(response.status)})


def error_body(code: int, message: str) -> bytes:
    return json.dumps({"code": code, "message": message, "data": None, "timestamp": 0}).encode()


# ------------------------------------------------------------------------- the client


class RpcClient:
    def __init__(self, nc: NATS, caller: str) -> None:
        self.nc = nc
        self.caller = caller

    async def call(self, node: str, verb: str, request: RpcRequest, timeout: float) -> RpcReply:
        """The owner's answer, or ``RpcError`` when none comes within ``timeout``."""
        try:
            msg = await self.nc.request(subject(node, verb), request.encode(), timeout=timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as err:
            raise RpcError(f"{node} did not answer {verb} ({type(err).__name__})") from err
        except nats.errors.Error as err:
            raise RpcError(f"{node}: {err!r}") from err
        headers = dict(msg.headers or {})
        if "Nats-Service-Error-Code" in headers:
            raise RpcError(f"{node}: {headers.get('Nats-Service-Error', 'service error')}")
        return RpcReply(reply_status(headers), msg.data, headers)

    async def events(
        self, node: str, task_id: str, after: int, timeout: float
    ) -> list[dict[str, Any]]:
        """The owner's events of ``task_id`` after ``after`` (``job.events``)."""
        try:
            msg = await self.nc.request(
                subject(node, "job.events"),
                json.dumps({"task_id": task_id, "after": after}).encode(),
                timeout=timeout,
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError) as err:
            raise RpcError(f"{node} did not answer job.events") from err
        if reply_status(dict(msg.headers or {})) != 200:
            raise RpcError(f"{node} refused job.events")
        events = json.loads(msg.data)
        return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []

    async def ping(self, node: str, timeout: float) -> bool:
        try:
            await self.call(node, "ping", RpcRequest("GET", "", caller=self.caller), timeout)
            return True
        except RpcError:
            return False
