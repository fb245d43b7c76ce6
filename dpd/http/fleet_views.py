"""REST calls about jobs of other fleet nodes (FLEET.md §9.6–§9.8), fleet mode only.

Installed as a middleware, like ``fleet_submit``: on a call about one job
(``dpd.fleet.rpc.verb_for``, and the per-job SSE) it looks at the local spool and the job's
fleet record (``dpd.fleet.views.decide``). A job that is this host's goes to its route
unchanged; one that another node owns is answered by that owner over RPC, or by the fleet's
record and stream when it does not answer; one that no node holds yet by its record. The
route's own permission and rate checks run first in every case (``guarded``). Without
``[fleet]`` nothing here is installed: one host behaves exactly as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import nats.errors
from aiohttp import web
from nats.aio.msg import Msg

from dpd.errors import Conflict, NotFound, ServiceUnavailable
from dpd.events.subjects import job_subject
from dpd.fleet import resume as fleet_resume
from dpd.fleet import views as fv
from dpd.fleet.agent import FleetAgent
from dpd.fleet.heads import with_floor
from dpd.fleet.kv import TRANSIENT, CasConflict, Entry, OutcomeUnknown, Unavailable
from dpd.fleet.records import Desired, JobRecord, JobState, enc
from dpd.fleet.rpc import Call, RpcClient, RpcError, RpcRequest, verb_for
from dpd.fleet.transitions import TransitionRefused, cancel, public_status, request_stop
from dpd.fleet.transitions import resume as resume_record
from dpd.http import views as http_views
from dpd.http.common import (
    PRINCIPAL,
    envelope_response,
    parse_json,
    principal,
    query_choice,
    query_int,
)
from dpd.http.fleet_rpc import LocalAnswers
from dpd.http.routes import events_stream
from dpd.http.routes import logs as log_routes
from dpd.http.routes import stream as job_stream
from dpd.http.routes.training import STATUSES, metric_view
from dpd.http.routing import Route, declared_routes, guarded
from dpd.http.views import EMPTY_PROGRESS
from dpd.logs.entries import LEVELS, TYPES, live_entry, make_filter, parse_time
from dpd.logs.search import search_lines
from dpd.logs.sse import HEARTBEAT, event_messages, message, parse_cursor, parse_kinds, retry_hint
from dpd.services import SERVICES

log = logging.getLogger("dpd.http.fleet_views")

SSE_SUFFIX: Final = "/logs/stream"
LIST_PATH: Final = "/api/v1/training/list"
DESIRED_PERIOD: Final = 0.5
STOP_GRACE: Final = 10.0  # the stop RPC's timeout beyond trainer.stop_timeout (§9.6)
RUN_MARK: Final = b'"desired":"run"'  # as records.dump_json writes it


def sse_call(method: str, path: str) -> Call | None:
    """The per-job SSE route, served from stream DPD for another node's job."""
    if method != "GET" or not path.endswith(SSE_SUFFIX):
        return None
    inner = verb_for("GET", path[: -len(SSE_SUFFIX)])
    return Call("job.events", inner.task_id) if inner and inner.verb == "job.get" else None


class FleetViews:
    def __init__(self, agent: FleetAgent) -> None:
        self.agent = agent
        self.node = agent.node
        self.prefix = agent.config.nats.subject_prefix
        self.rpc_timeout = agent.fleet.rpc_timeout
        self.stop_timeout = agent.config.trainer.stop_timeout + STOP_GRACE
        self.forwarded = 0
        self.fallbacks = 0

    # ------------------------------------------------------------------------ life

    async def run(self, app: web.Application) -> None:
        """Once the agent is connected: serve RPC, feed the other nodes' events into this
        node's event ring, and apply stops asked for while this node was away."""
        await self.agent.ready.wait()
        nc = self.agent.nc
        assert nc is not None
        service = LocalAnswers(app).service(self.node)
        while True:  # the service's subscriptions need a connection: wait for one
            try:
                await service.start(nc)
                break
            except (nats.errors.Error, TimeoutError, OSError) as err:
                log.warning("fleet RPC service not started (%r); retrying", err)
                await service.stop()
                await asyncio.sleep(1.0)
        ring = app[events_stream.EVENT_RING]

        async def to_ring(msg: Msg) -> None:
            event = fv.event_from_subject(msg.subject, msg.data, self.prefix)
            if event is not None and event.get("node") != self.node:
                ring.append(event)

        subs = [
            await nc.subscribe(f"{self.prefix}.{scope}.>", cb=to_ring)
            for scope in ("jobs", "preprocess", "models")
        ]
        grace = 2 * self.rpc_timeout
        try:
            await desired_loop(self.agent, DESIRED_PERIOD, grace, service.busy)
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            # bounded: the agent closes the shared connection meanwhile, and a stop whose
            # connection closes under it waits out nats-py's flush timeout (10 s)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(service.stop(), self.rpc_timeout)

    # ----------------------------------------------------------------- the decision

    def middleware(self) -> Any:
        @web.middleware
        async def fleet_views(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.method == "GET" and request.path == LIST_PATH and self.agent.ready.is_set():
                return await self.serve_list(request)
            call = verb_for(request.method, request.path) or sse_call(request.method, request.path)
            if call is None:
                response: web.StreamResponse = await handler(request)
                return response
            return await self.serve(request, call, handler)

        return fleet_views

    async def record(self, task_id: str) -> JobRecord | None:
        table = self.agent.job_table
        seen = table.get(enc(task_id)) if table is not None else None
        if seen is not None and seen.entry.present:
            return fv.record_of(seen.entry.value)
        return await self.agent.existing(task_id)

    async def serve(self, request: web.Request, call: Call, local: Any) -> web.StreamResponse:
        principal(request)  # 401 before anything is looked up (as the route's own guard)
        store = request.app[SERVICES].store
        state = store.get(call.task_id) if store.exists(call.task_id) else None
        if state is not None and not isinstance(state.get("fleet"), dict):
            response: web.StreamResponse = await local(request)  # not a fleet job: as ever
            return response
        record = await self.record(call.task_id)
        if call.verb == "job.resume" and record is not None:  # T12, on whichever host
            route = _route_of(request)
            resume = guarded(Route(request.method, request.path, self.resume, *route))
            return await resume(request)
        decision = fv.decide(state, record, self.node)
        if decision.source is fv.Source.LOCAL or record is None:
            response = await local(request)
            return response

        async def remote(request: web.Request) -> web.StreamResponse:
            assert record is not None
            return await self.answer(request, call, record, decision)

        route = _route_of(request)
        checked = guarded(Route(request.method, request.path, remote, route[0], route[1]))
        return await checked(request)

    async def serve_list(self, request: web.Request) -> web.StreamResponse:
        """``GET /training/list``: every job of the fleet (the watched records, a hint
        fresh within a heartbeat), this host's details for its own; ``node`` filters."""

        async def fleet_list(request: web.Request) -> web.StreamResponse:
            query = fv.ListQuery(
                status=query_choice(request, "status", STATUSES),
                gpu_id=query_int(request, "gpu_id", None, minimum=0),
                node=request.query.get("node") or None,
                limit=query_int(request, "limit", 50, minimum=1, maximum=1000) or 50,
                offset=query_int(request, "offset", 0, minimum=0) or 0,
            )
            store = request.app[SERVICES].store
            local_states = {s["task_id"]: s for s in store.states()}
            records = [r for r, _ in self.agent.records()]
            rows = fv.fleet_rows(
                records, local_states, self.node, http_views.task_summary, EMPTY_PROGRESS
            )
            return envelope_response(fv.list_page(rows, query))

        route = _route_of(request)
        checked = guarded(Route("GET", LIST_PATH, fleet_list, route[0], route[1]))
        return await checked(request)

    # ----------------------------------------------------------------- the answers

    async def answer(
        self, request: web.Request, call: Call, record: JobRecord, decision: fv.Decision
    ) -> web.StreamResponse:
        if call.verb == "job.events":
            return await self.sse(request, call.task_id, record)
        path_qs = request.path_qs
        if call.verb == "job.stop":
            force = await _force(request)
            record = await self.request_stop(record, force)
            if decision.source is fv.Source.KV:
                return await self.cancel(record)
            path_qs = request.path + "?" + urlencode({"force": "true" if force else "false"})
        client = self.client()
        if client is not None and decision.node is not None:
            timeout = self.stop_timeout if call.verb == "job.stop" else self.rpc_timeout
            try:
                reply = await client.call(
                    decision.node, call.verb, self.rpc_request(request, path_qs), timeout
                )
                self.forwarded += 1
                envelope = fv.with_fleet(reply.envelope(), record, self.node)
                return web.json_response(envelope, status=reply.status)
            except RpcError as err:
                log.info("%s: %s; answering from the fleet's record", call.task_id, err)
        if decision.node is not None:
            self.fallbacks += 1
        return await self.fallback(request, call, record)

    def client(self) -> RpcClient | None:
        nc = self.agent.nc
        if nc is None or not nc.is_connected:
            return None
        return RpcClient(nc, self.node)

    def rpc_request(self, request: web.Request, path_qs: str) -> RpcRequest:
        who = request.get(PRINCIPAL)
        return RpcRequest(
            method=request.method,
            path_qs=path_qs,
            key_id=who.key_id if who else "",
            user=who.user if who else "",
            permissions=tuple(sorted(who.permissions)) if who else (),
            caller=self.node,
        )

    async def fallback(self, request: web.Request, call: Call, record: JobRecord) -> web.Response:
        """The owner did not answer: what the record and stream DPD know, marked stale."""
        if call.verb == "job.stop":
            data = {"task_id": record.task_id, "pending": True, **_fleet(record, self.node)}
            return envelope_response(data, 202, "stop recorded; the owner applies it")
        path = request.path
        if call.verb == "job.get" or path.endswith("/progress"):
            last = await self.last_events(record.task_id)
            detail = fv.kv_detail(record, last)
            if path.endswith("/progress"):
                detail = {
                    "task_id": record.task_id,
                    "status": detail["status"],
                    "progress": detail["progress"],
                }
            return envelope_response(fv.stale_view(detail, record, self.node, "kv"))
        if call.verb == "job.logs" and path.endswith("/logs"):
            return await self.stream_logs(request, record)
        if path.endswith("/metrics"):
            return await self.stream_metrics(request, record)
        if path.endswith("/logs/search"):
            return await self.stream_search(request, record)
        raise ServiceUnavailable(
            f"the node holding task {record.task_id} does not answer; try again later",
            fv.stale_view({"task_id": record.task_id}, record, self.node, "kv"),
        )

    async def last_events(self, task_id: str) -> dict[str, Any]:
        nc = self.agent.nc
        if nc is None or not nc.is_connected:
            return {}
        return await fv.last_events(nc, self.prefix, task_id, self.rpc_timeout)

    async def stream_logs(self, request: web.Request, record: JobRecord) -> web.Response:
        keep = make_filter(
            query_choice(request, "level", LEVELS), query_choice(request, "type", TYPES)
        )
        tail = query_int(request, "tail", 100, minimum=1, maximum=10_000) or 100
        since = parse_time("since", request.query.get("since"))
        nc = self.agent.nc
        if nc is None or not nc.is_connected:
            raise ServiceUnavailable("neither the job's node nor NATS can be reached")
        subject = job_subject(self.prefix, record.task_id, "log")
        try:
            events = await fv.read_all(nc, subject, max(self.rpc_timeout, 2.0))
        except TimeoutError as err:
            raise ServiceUnavailable("stream DPD did not answer in time") from err
        lines, total, last_seq = fv.log_page(events, tail, keep.keeps_entry, since, live_entry)
        data = {
            "task_id": record.task_id,
            "log_file": None,
            "total_lines": total,
            "returned_lines": len(lines),
            "last_seq": last_seq,
            "logs": lines,
        }
        return envelope_response(fv.stale_view(data, record, self.node, "stream"))

    async def stream_search(self, request: web.Request, record: JobRecord) -> web.Response:
        """``/logs/search`` over the task's ``log`` events in stream DPD, marked stale."""
        query, echoed = log_routes.search_query(request)
        events = await self._stream_events(record.task_id, "log")
        lines = [
            text
            for event in sorted(events, key=lambda e: int(e.get("seq", 0)))
            for text in (event.get("data") or {}).get("lines") or []
        ]
        page = search_lines(lines, query)
        data = log_routes.search_data(record.task_id, query, echoed, page)
        return envelope_response(fv.stale_view(data, record, self.node, "stream"))

    async def _stream_events(self, task_id: str, kind: str) -> list[dict[str, Any]]:
        nc = self.agent.nc
        if nc is None or not nc.is_connected:
            raise ServiceUnavailable("neither the job's node nor NATS can be reached")
        subject = job_subject(self.prefix, task_id, kind)
        try:
            return await fv.read_all(nc, subject, max(self.rpc_timeout, 2.0))
        except TimeoutError as err:
            raise ServiceUnavailable("stream DPD did not answer in time") from err

    async def stream_metrics(self, request: web.Request, record: JobRecord) -> web.Response:
        """``/metrics`` from the task's ``metrics`` events in stream DPD, marked stale."""
        metric = request.query.get("metric") or "loss"
        kind = query_choice(request, "type", ("step", "epoch", "eval"), "step") or "step"
        limit = query_int(request, "limit", None, minimum=1, maximum=100_000)
        events = await self._stream_events(record.task_id, "metrics")
        points = [metric_view(p, kind) for p in fv.metric_points(events, metric, kind, limit)]
        data = {"task_id": record.task_id, "metric": metric, "type": kind, "data": points}
        return envelope_response(fv.stale_view(data, record, self.node, "stream"))

    # ------------------------------------------------------------------- stop

    async def request_stop(self, record: JobRecord, force: bool) -> JobRecord:
        """T9, durable before anything else (§9.6); 409 for a job that already ended."""
        jobs = self.agent.jobs
        if jobs is None:
            raise ServiceUnavailable("the fleet queue is not connected yet")
        if record.terminal:
            raise Conflict(
                f"task {record.task_id} is {record.state.value}, not running",
                {"task_id": record.task_id, "status": record.state.value},
            )

        def t9(entry: Entry | None) -> bytes | None:
            if entry is None:
                raise TransitionRefused("T9 request stop", "the record is gone")
            current = JobRecord.from_json(entry.value)
            if current.desired is not Desired.RUN and not force:
                return None  # already asked
            return request_stop(current, self.node, time.time(), force).to_json()

        try:
            result = await jobs.cas_update(enc(record.task_id), t9)
        except TransitionRefused as err:
            raise Conflict(str(err), {"task_id": record.task_id}) from err
        except (CasConflict, Unavailable, OutcomeUnknown, *TRANSIENT) as err:
            raise ServiceUnavailable(f"the stop could not be recorded: {err}") from err
        if result.entry is None:
            return record
        return JobRecord.from_json(result.entry.value)

    async def cancel(self, record: JobRecord) -> web.Response:
        """T8 for a job no node holds (queued, or claimed and not fenced yet)."""
        jobs = self.agent.jobs
        assert jobs is not None

        floor = await self.agent.seq_floor(record.task_id)  # the event numbers after it

        def t8(entry: Entry | None) -> bytes | None:
            if entry is None:
                raise TransitionRefused("T8 cancel", "the record is gone")
            current = with_floor(JobRecord.from_json(entry.value), floor)
            return cancel(current, self.node, time.time()).to_json()

        try:
            result = await jobs.cas_update(enc(record.task_id), t8)
        except TransitionRefused:  # a node took it meanwhile: it applies the recorded stop
            data = {"task_id": record.task_id, "pending": True, **_fleet(record, self.node)}
            return envelope_response(data, 202, "stop recorded; the owner applies it")
        except (CasConflict, Unavailable, OutcomeUnknown, *TRANSIENT) as err:
            raise ServiceUnavailable(f"the cancel could not be recorded: {err}") from err
        assert result.entry is not None
        self.agent.wake()  # its pass publishes the announcement
        done = JobRecord.from_json(result.entry.value)
        data = {
            "task_id": done.task_id,
            "status": "stopped",
            "stopped_at": done.updated_at,
            "checkpoint_saved": False,
            "last_checkpoint": None,
            "last_model": None,
            "training_time": None,
            **_fleet(done, self.node),
        }
        return envelope_response(data, 200, "training task stopped")

    # ----------------------------------------------------------------- resume

    async def resume(self, request: web.Request) -> web.Response:
        """T12 (§9.6): a stopped or failed fleet job queued again in the fleet's record, to
        resume from its latest checkpoint on whichever node claims it; the refusals and the
        envelope of the single-host resume."""
        task_id = request.match_info["task_id"]
        jobs = self.agent.jobs
        if jobs is None or not self.agent.connected:
            raise ServiceUnavailable("the fleet queue is not connected yet")
        output_dir = Path(self.agent.store.output_root) / task_id
        floor = await self.agent.seq_floor(task_id)  # the event numbers after it

        def t12(entry: Entry | None) -> bytes | None:
            if entry is None or not entry.present:
                raise NotFound(f"task {task_id} not found")
            current = JobRecord.from_json(entry.value)
            if current.state not in (JobState.FAILED, JobState.STOPPED):
                status = public_status(current.state)
                raise Conflict(
                    f"task {task_id} is {status}; only stopped or failed tasks can be resumed",
                    {"task_id": task_id, "status": status},
                )
            if not fleet_resume.has_checkpoint(output_dir):
                raise Conflict(
                    f"task {task_id} has no checkpoint to resume from",
                    {"task_id": task_id, "output_dir": str(output_dir)},
                )
            return resume_record(with_floor(current, floor), self.node, time.time()).to_json()

        try:
            result = await jobs.cas_update(enc(task_id), t12)
        except TransitionRefused as err:
            raise Conflict(str(err), {"task_id": task_id}) from err
        except (CasConflict, Unavailable, OutcomeUnknown, *TRANSIENT) as err:
            raise ServiceUnavailable(f"the resume could not be recorded: {err}") from err
        assert result.entry is not None
        self.agent.wake()  # its pass publishes the announcement
        done = JobRecord.from_json(result.entry.value)
        self.agent.wake()
        data = {**fv.kv_detail(done, {}), **_fleet(done, self.node)}
        return envelope_response(data, 200, "training task queued for resume")

    # -------------------------------------------------------------------- SSE

    async def sse(
        self, request: web.Request, task_id: str, record: JobRecord
    ) -> web.StreamResponse:
        """The per-job stream from stream DPD: the owner's messages, same ids."""
        keep = make_filter(
            query_choice(request, "level", LEVELS), query_choice(request, "type", TYPES)
        )
        kinds = parse_kinds(request.query.get("kinds"))
        cursor = parse_cursor(
            request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        )
        nc = self.agent.nc
        if nc is None or not nc.is_connected:
            raise ServiceUnavailable("stream DPD cannot be reached from this host")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        await response.write(retry_hint(job_stream.RETRY_MILLISECONDS))
        me = asyncio.current_task()
        streams = request.app[job_stream.OPEN_STREAMS]
        if me is not None:
            streams.add(me)
        try:
            await self._send_stream(request, response, nc, task_id, record, cursor, kinds, keep)
        finally:
            if me is not None:
                streams.discard(me)
        return response

    async def _send_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        nc: Any,
        task_id: str,
        record: JobRecord,
        cursor: Any,
        kinds: frozenset[str],
        keep: Any,
    ) -> None:
        order = fv.Reorder(cursor.after_seq if cursor is not None else None)
        subject = job_subject(self.prefix, task_id, "*")
        quiet_since = time.monotonic()
        caught_up = cursor is None
        idle = min(job_stream.HEARTBEAT_SECONDS, job_stream.CLIENT_CHECK_SECONDS)
        filled_at: int | None = None  # the cursor whose hole the owner was asked for
        async for event, pending in fv.stream_events(nc, subject, cursor is not None, idle):
            now = time.monotonic()
            ready = order.push(event, now) if event is not None else order.ready(now)
            if order.hole_age(now) >= fv.FILL_AFTER and filled_at != order.cursor:
                filled_at = order.cursor  # once per hole: then HOLE_WAIT gives up on it
                for missing in await self.fill(record, task_id, order.cursor or 0):
                    ready += order.push(missing, now)
            for item in ready:
                for chunk in event_messages(item, kinds, keep, cursor):
                    await response.write(chunk)
                quiet_since = time.monotonic()
                if _ends(item):
                    await self._end(response, task_id, order.cursor)
                    return
            if event is not None and pending == 0:
                caught_up = True
            if event is None:
                if caught_up and record.terminal and not order.held:
                    await self._end(response, task_id, order.cursor)
                    return
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                if time.monotonic() - quiet_since >= job_stream.HEARTBEAT_SECONDS:
                    await response.write(HEARTBEAT)
                    quiet_since = time.monotonic()
                fresh = await self.record(task_id)
                record = fresh or record

    async def fill(self, record: JobRecord, task_id: str, after: int) -> list[dict[str, Any]]:
        """The events after ``after`` from the owner's events.jsonl: a hole in what stream
        DPD delivered (FLEET.md §9.8); none when the owner does not answer."""
        client = self.client()
        if client is None or record.owner is None:
            return []
        try:
            return await client.events(record.owner.node, task_id, after, self.rpc_timeout)
        except RpcError as err:
            log.info("%s: hole after seq %d not filled (%s)", task_id, after, err)
            return []

    async def _end(self, response: web.StreamResponse, task_id: str, last: int | None) -> None:
        end = {"task_id": task_id, "last_seq": last or 0}
        await response.write(message(end, str(last or 0), "end"))


def _ends(event: dict[str, Any]) -> bool:
    status = (event.get("data") or {}).get("status")
    return event.get("type") == "status" and status in fv.TERMINAL_STATUSES


def _fleet(record: JobRecord, me: str) -> dict[str, Any]:
    return {"fleet": fv.fleet_field(record, me)}


def _route_of(request: web.Request) -> tuple[str | None, str | None]:
    """The permission and rate class of the route the request resolved to."""
    handler = request.match_info.handler
    original = getattr(handler, "__wrapped__", handler)
    for route in declared_routes(request.app):
        if route.handler is original:
            return route.permission, route.rate
    raise NotFound(f"no route for {request.method} {request.path}")


async def _force(request: web.Request) -> bool:
    """``force`` as the stop route reads it: the query, then a JSON body."""
    text = request.query.get("force", "false").lower()
    force = text in ("1", "true", "yes")
    if request.can_read_body:
        body = await request.read()
        if body.strip():
            data = parse_json(body)
            if isinstance(data, dict) and isinstance(data.get("force"), bool):
                force = data["force"]
    return force


async def desired_loop(agent: FleetAgent, period: float, grace: float, busy: set[str]) -> None:
    """The owner's side of a stop asked for while it was away, or whose RPC never came
    (§9.6): each record this node owns with ``desired`` stop gets the staged stop, after
    ``grace`` seconds of this node seeing it (the RPC usually comes first)."""
    first_seen: dict[tuple[str, int], float] = {}
    stopping: set[str] = set()
    store, supervisor = agent.store, agent.supervisor
    while True:
        await asyncio.sleep(period)
        if not agent.ready.is_set():
            continue
        table = agent.job_table
        for watched in list(table.entries.values()) if table is not None else []:
            if RUN_MARK in watched.entry.value:  # most records: decided without parsing
                continue
            record = fv.record_of(watched.entry.value)
            if record is None:
                continue
            task_id = record.task_id
            if task_id in stopping or task_id in busy:
                continue
            local = store.get(task_id) if store.exists(task_id) else None
            if not fv.applies_desired(record, agent.node, local):
                first_seen.pop((task_id, record.attempt), None)
                continue
            seen = first_seen.setdefault((task_id, record.attempt), time.monotonic())
            if time.monotonic() - seen < grace:
                continue
            force = record.desired is Desired.FORCE_STOP
            log.info("%s: applying the fleet's desired %s", task_id, record.desired.value)
            stopping.add(task_id)

            async def stop(task_id: str = task_id, force: bool = force) -> None:
                try:
                    with contextlib.suppress(Conflict, NotFound):
                        await supervisor.stop(task_id, force=force)
                finally:
                    stopping.discard(task_id)

            task = asyncio.create_task(stop(), name=f"desired stop {task_id}")
            agent._tasks.add(task)
            task.add_done_callback(agent._tasks.discard)
