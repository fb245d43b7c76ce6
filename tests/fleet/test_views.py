"""The pure parts of reads and stops through any host (FLEET.md §9.6–§9.8): which node
answers a call, how an owner's answer and a fallback are marked, the stream reader's
reordering, and the RPC request's shape. No server, no NATS."""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiohttp import web

from dpd.errors import Conflict
from dpd.fleet import transitions as tr
from dpd.fleet import views as fv
from dpd.fleet.records import Desired, JobState, Lost
from dpd.fleet.rpc import Call, RpcRequest, reply_status, verb_for
from dpd.http.app import build_app
from dpd.http.common import envelope_response
from dpd.http.fleet_rpc import LocalAnswers
from dpd.http.fleet_views import sse_call
from dpd.http.routing import Route, add_routes
from dpd.logs.entries import live_entry
from tests.fleet.test_transitions import T0, new_job, running_on


def local(status: str = "running", attempt: int = 1) -> dict[str, object]:
    return {"task_id": "t1", "status": status, "fleet": {"attempt": attempt, "node": "c"}}


@pytest.mark.parametrize(
    ("method", "path", "call"),
    [
        ("GET", "/api/v1/training/t1", Call("job.get", "t1")),
        ("GET", "/api/v1/training/t1/logs", Call("job.logs", "t1")),
        ("GET", "/api/v1/training/t1/logs/search", Call("job.logs", "t1")),
        ("GET", "/api/v1/training/t1/progress", Call("job.metrics", "t1")),
        ("GET", "/api/v1/training/t1/metrics", Call("job.metrics", "t1")),
        ("POST", "/api/v1/training/t1/resume", Call("job.resume", "t1")),
        ("POST", "/api/v1/training/stop/t1", Call("job.stop", "t1")),
        ("GET", "/api/v1/training/stop/t1", None),
        ("GET", "/api/v1/training/list", None),
        ("POST", "/api/v1/training/start", None),
        ("POST", "/api/v1/training/t1", None),
        ("GET", "/api/v1/training/t1/files", None),  # not forwarded (yet): the local route
        ("GET", "/api/v1/training/t1/logs/stream", None),  # SSE: from the stream, not RPC
        ("GET", "/api/v1/gpu/status", None),
    ],
)
def test_only_the_named_job_calls_are_forwarded(method: str, path: str, call: Call | None) -> None:
    assert verb_for(method, path) == call


def test_the_per_job_sse_is_recognised_apart() -> None:
    assert sse_call("GET", "/api/v1/training/t1/logs/stream") == Call("job.events", "t1")
    assert sse_call("GET", "/api/v1/training/list/logs/stream") is None
    assert sse_call("POST", "/api/v1/training/t1/logs/stream") is None


def test_decide_who_answers() -> None:
    on_c = running_on("c")
    queued = new_job()
    assert fv.decide(None, None, "a") == fv.Decision(fv.Source.LOCAL)  # 404 as today
    assert fv.decide(None, on_c, "a") == fv.Decision(fv.Source.FORWARD, "c")
    assert fv.decide(local(), on_c, "c") == fv.Decision(fv.Source.LOCAL)
    assert fv.decide(None, queued, "a") == fv.Decision(fv.Source.KV)
    assert fv.decide(local(), None, "a") == fv.Decision(fv.Source.LOCAL)  # not a fleet job
    # an earlier attempt ran on a; the record's current one is c's
    assert fv.decide(local(attempt=0), on_c, "a") == fv.Decision(fv.Source.FORWARD, "c")
    assert fv.decide(local(attempt=1), on_c, "a") == fv.Decision(fv.Source.LOCAL)
    # it ended here and was resumed (T12): queued in the record, no node holds it yet
    ended_here = {**local(attempt=1), "status": "stopped"}
    assert fv.decide(ended_here, queued, "a") == fv.Decision(fv.Source.KV)


def test_the_owners_answer_gets_a_fleet_field_and_nothing_else_changes() -> None:
    record = running_on("c")
    envelope = {"code": 200, "message": "success", "data": {"task_id": "t1", "status": "running"}}
    marked = fv.with_fleet(envelope, record, "a")
    assert {k: v for k, v in marked["data"].items() if k != "fleet"} == envelope["data"]
    assert marked["data"]["fleet"] == {
        "node": "c",
        "via": "a",
        "state": "running",
        "attempt": 1,
        "desired": "run",
    }
    assert {k: v for k, v in marked.items() if k != "data"} == {"code": 200, "message": "success"}
    error = {"code": 409, "message": "no", "data": None}
    assert fv.with_fleet(error, record, "a") == error


def test_a_fallback_is_marked_stale_with_its_source_and_the_owners_state() -> None:
    record = running_on("c")
    view = fv.stale_view({"task_id": "t1"}, record, "a", "kv")
    assert view["stale"] is True and view["source"] == "kv"
    assert view["node_state"] == "unreachable"
    lost = dataclasses.replace(record, lost=Lost("c", "2025-01-01T00:00:00Z", "b"))
    assert fv.stale_view({}, lost, "a", "stream")["node_state"] == "lost"
    queued = fv.stale_view({}, new_job(), "a", "kv")  # nobody holds it: the record is the truth
    assert queued["stale"] is False and queued["node_state"] is None


def test_kv_detail_prefers_the_streams_newer_status_and_progress() -> None:
    record = running_on("c")
    assert fv.kv_detail(record, {})["status"] == "running"
    last = {
        "status": {"seq": record.seq + 3, "data": {"status": "stopping"}},
        "progress": {"seq": record.seq + 4, "data": {"step": 7}},
    }
    detail = fv.kv_detail(record, last)
    assert detail["status"] == "stopping"
    assert detail["progress"] == {"step": 7}
    assert detail["last_seq"] == record.seq + 4
    assert detail["model_type"] == "flux"
    assert record.seq == 1
    old = {"status": {"seq": 0, "data": {"status": "queued"}}}
    assert fv.kv_detail(record, old)["status"] == "running"


def test_log_page_keeps_the_last_lines_in_seq_order() -> None:
    events = [
        {"type": "log", "seq": 3, "timestamp": T0, "data": {"lines": ["c", "d"]}},
        {"type": "log", "seq": 2, "timestamp": T0, "data": {"lines": ["a", "b"]}},
        {"type": "status", "seq": 4, "timestamp": T0, "data": {"status": "completed"}},
    ]
    lines, total, last = fv.log_page(events, 3, lambda e: True, None, live_entry)
    assert [line["message"] for line in lines] == ["b", "c", "d"]
    assert (total, last) == (4, 4)
    lines, total, _ = fv.log_page(events, 10, lambda e: e["message"] != "c", None, live_entry)
    assert [line["message"] for line in lines] == ["a", "b", "d"] and total == 3


def test_reorder_sends_each_seq_once_in_order_and_skips_an_old_hole() -> None:
    order = fv.Reorder(cursor=2)
    assert order.push({"seq": 2}, 0.0) == []  # the client has it
    assert order.push({"seq": 4}, 0.0) == []  # 3 missing: held
    assert [e["seq"] for e in order.push({"seq": 3}, 0.5)] == [3, 4]
    assert order.push({"seq": 4}, 0.6) == []  # twice: once
    assert order.push({"seq": 6}, 1.0) == []
    assert order.ready(1.0 + fv.HOLE_WAIT / 2) == []
    assert [e["seq"] for e in order.ready(1.0 + fv.HOLE_WAIT)] == [6]  # 5 given up
    holed = fv.Reorder(cursor=0)
    assert holed.hole_age(5.0) == 0.0
    holed.push({"seq": 2}, 5.0)  # 1 missing
    assert holed.hole_age(5.0 + fv.FILL_AFTER) == fv.FILL_AFTER  # time to ask the owner
    assert [e["seq"] for e in holed.push({"seq": 1}, 5.5)] == [1, 2]  # the owner's answer
    assert holed.hole_age(9.0) == 0.0
    fresh = fv.Reorder(cursor=None)  # from now: the first event seen sets the start
    assert [e["seq"] for e in fresh.push({"seq": 9}, 0.0)] == [9]


def test_the_owner_applies_a_recorded_stop_only_to_its_own_current_run() -> None:
    record = running_on("c")
    stop = tr.request_stop(record, "a", T0)
    assert stop.desired is Desired.STOP
    assert fv.applies_desired(stop, "c", local())
    assert not fv.applies_desired(record, "c", local())  # no stop asked
    assert not fv.applies_desired(stop, "a", local())  # not a's
    assert not fv.applies_desired(stop, "c", None)  # nothing here
    assert not fv.applies_desired(stop, "c", local(attempt=0))  # an older attempt
    assert not fv.applies_desired(stop, "c", local(status="stopping"))  # already under way
    ended = dataclasses.replace(stop, state=JobState.STOPPED)
    assert not fv.applies_desired(ended, "c", local())


def test_other_nodes_events_are_rebuilt_with_their_scope() -> None:
    payload = json.dumps({"type": "status", "task_id": "a.b", "node": "c", "seq": 2}).encode()
    event = fv.event_from_subject("dpd.jobs.a~b.status", payload, "dpd")
    assert event is not None and event["scope"] == "jobs" and event["task_id"] == "a.b"
    assert fv.event_from_subject("other.jobs.t.status", payload, "dpd") is None
    assert fv.event_from_subject("dpd.jobs.t.status", b"not json", "dpd") is None


def test_rpc_request_round_trip_and_bad_status_header() -> None:
    request = RpcRequest("GET", "/api/v1/training/t1/logs?tail=5", "k1", "ann", ("training",), "a")
    assert RpcRequest.decode(request.encode()) == request
    with pytest.raises(ValueError):
        RpcRequest.decode(b"[1]")
    assert reply_status({"Dpd-Status": "202"}) == 202
    assert reply_status({}) == 200
    assert reply_status({"Dpd-Status": "x"}) == 502


async def test_the_owner_answers_from_its_own_handler_behind_the_asserted_permission() -> None:
    """The owner runs the route's handler with its error mapping; the caller's key must
    hold the route's permission."""
    seen: list[tuple[str, str]] = []

    async def stop(request: web.Request) -> web.Response:
        seen.append((request.match_info["task_id"], request.query.get("force", "")))
        if request.match_info["task_id"] == "ended":
            raise Conflict("task ended is stopped, not running", {"task_id": "ended"})
        return envelope_response({"task_id": request.match_info["task_id"]}, 200, "stopped")

    app = build_app()
    add_routes(app, [Route("POST", "/api/v1/training/stop/{task_id}", stop, "training")])
    service = LocalAnswers(app)

    def call(path: str, permissions: tuple[str, ...] = ("training",)) -> RpcRequest:
        return RpcRequest("POST", path, "k1", "ann", permissions, "a")

    reply = await service.answer(call("/api/v1/training/stop/t1?force=true"), "job.stop")
    assert reply.status == 200
    assert reply.envelope()["data"] == {"task_id": "t1"}
    assert seen == [("t1", "true")]
    reply = await service.answer(call("/api/v1/training/stop/ended"), "job.stop")
    assert reply.status == 409 and reply.envelope()["data"] == {"task_id": "ended"}
    reply = await service.answer(call("/api/v1/training/stop/t1", ("read",)), "job.stop")
    assert reply.status == 403
    assert len(seen) == 2


def test_the_desired_prefilter_matches_how_records_are_written() -> None:
    """The owner's loop skips records by this byte pattern before parsing them."""
    from dpd.http.fleet_views import RUN_MARK

    record = running_on("c")
    assert RUN_MARK in record.to_json()
    assert RUN_MARK not in tr.request_stop(record, "a", T0).to_json()
    assert RUN_MARK not in tr.request_stop(record, "a", T0, force=True).to_json()


def test_the_fleet_list_merges_local_details_and_filters_by_node() -> None:
    on_c = running_on("c")
    queued = dataclasses.replace(new_job(T0 + 1), task_id="t2")
    mine = {"task_id": "t3", "status": "completed", "created_at": "2030-01-01T00:00:00Z"}

    def summary(state: dict[str, object]) -> dict[str, object]:
        return {"task_id": state["task_id"], "status": state["status"], "created_at":
                state.get("created_at"), "gpu_ids": [0], "local": True}  # fmt: skip

    rows = fv.fleet_rows([on_c, queued], {"t3": mine}, "a", summary, {"eta_seconds": None})
    assert [(r["task_id"], r["node"], r.get("local", False)) for r in rows] == [
        ("t1", "c", False),
        ("t2", None, False),
        ("t3", "a", True),
    ]
    page = fv.list_page(rows, fv.ListQuery(limit=2))
    assert [r["task_id"] for r in page["tasks"]] == ["t3", "t2"]  # newest first
    assert page["pagination"] == {"total": 3, "limit": 2, "offset": 0, "has_more": True}
    only_c = fv.list_page(rows, fv.ListQuery(node="c"))
    assert [r["task_id"] for r in only_c["tasks"]] == ["t1"]
    assert only_c["tasks"][0]["status"] == "running"
    assert fv.list_page(rows, fv.ListQuery(status="queued"))["pagination"]["total"] == 1
    # c's own list: its local details win over the record
    local_c = {"t1": {"task_id": "t1", "status": "running", "created_at": on_c.submitted_at,
                      "fleet": {"attempt": 1}}}  # fmt: skip
    rows_c = fv.fleet_rows([on_c], local_c, "c", summary, {})
    assert rows_c[0]["local"] is True and rows_c[0]["node"] == "c"


def test_metric_points_are_the_newest_of_one_metric_and_kind_oldest_first() -> None:
    def point(step: int, metric: str = "loss", kind: str = "step") -> dict[str, object]:
        return {"type": "metrics", "data": {"metric": metric, "type": kind, "step": step}}

    events = [point(1), point(2, "lr"), point(3), point(4, kind="epoch"), point(5)]
    assert [p["step"] for p in fv.metric_points(events, "loss", "step", None)] == [1, 3, 5]
    assert [p["step"] for p in fv.metric_points(events, "loss", "step", 2)] == [3, 5]
    assert fv.metric_points(events, "grad_norm", "step", None) == []
