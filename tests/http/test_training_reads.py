"""``GET /training/list`` (newest first, filters, pagination) and ``GET /training/{id}/progress``:
their cached encodings (``ListPages``, ``ProgressViews``) never answer with an older store than
the one the request found."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from dpd.errors import NotFound
from dpd.http import views
from dpd.http.routes.training import ListPages, ProgressViews
from dpd.jobs.states import Status
from dpd.spool.store import JobStore
from tests.http.conftest import Api
from tests.jobfiles import add_job, new_store


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    """Seven jobs t0..t6 submitted in order; t1 and t4 completed on GPU 1."""
    store, data = new_store(tmp_path)
    for index in range(7):
        add_job(store, data, f"t{index}")
    for task_id in ("t1", "t4"):
        store.transition(task_id, Status.QUEUED, Status.RUNNING, gpu_id=1, gpu_ids=[1])
        store.transition(task_id, Status.RUNNING, Status.COMPLETED)
    return store


def answer(pages: ListPages, store: JobStore, *key: Any) -> dict[str, Any]:
    body = pages.page(store, key) + b"1700000000}"
    document = json.loads(body)
    assert (document["code"], document["message"], document["timestamp"]) == (
        200,
        "success",
        1700000000,
    )
    return document["data"]  # type: ignore[no-any-return]


def ids(data: dict[str, Any]) -> list[str]:
    return [task["task_id"] for task in data["tasks"]]


def test_pages_are_newest_first_with_pagination(store: JobStore) -> None:
    pages = ListPages()
    first = answer(pages, store, None, None, 3, 0)
    assert ids(first) == ["t6", "t5", "t4"]
    assert first["pagination"] == {"total": 7, "limit": 3, "offset": 0, "has_more": True}
    last = answer(pages, store, None, None, 3, 6)
    assert ids(last) == ["t0"]
    assert last["pagination"]["has_more"] is False
    assert ids(answer(pages, store, None, None, 50, 7)) == []


def test_summaries_are_the_task_views(store: JobStore) -> None:
    tasks = answer(ListPages(), store, None, None, 50, 0)["tasks"]
    expected = [views.task_summary(s) for s in reversed(store.states())]
    assert tasks == json.loads(json.dumps(expected))


def test_filters_by_status_and_gpu(store: JobStore) -> None:
    pages = ListPages()
    completed = answer(pages, store, "completed", None, 50, 0)
    assert ids(completed) == ["t4", "t1"]
    assert completed["pagination"]["total"] == 2
    assert ids(answer(pages, store, None, 1, 1, 0)) == ["t4"]
    assert ids(answer(pages, store, "queued", 1, 50, 0)) == []
    assert len(ids(answer(pages, store, "queued", None, 50, 0))) == 5


def test_a_change_to_the_store_is_seen_by_the_next_request(store: JobStore, tmp_path: Path) -> None:
    pages = ListPages()
    assert answer(pages, store, None, None, 2, 0)["tasks"][1]["status"] == "queued"
    store.transition("t5", Status.QUEUED, Status.STOPPED)
    assert answer(pages, store, None, None, 2, 0)["tasks"][1]["status"] == "stopped"
    assert answer(pages, store, "stopped", None, 50, 0)["pagination"]["total"] == 1
    add_job(store, tmp_path / "data", "t7")
    newest = answer(pages, store, None, None, 2, 0)
    assert ids(newest) == ["t7", "t6"]
    assert newest["pagination"]["total"] == 8


def test_the_number_of_pages_kept_is_bounded(store: JobStore) -> None:
    pages = ListPages()
    for offset in range(ListPages.MAX_PAGES + 10):
        answer(pages, store, None, None, 1, offset)
    assert len(pages.pages) <= ListPages.MAX_PAGES
    assert ids(answer(pages, store, None, None, 1, 2)) == ["t4"]


async def test_the_route_lists_tasks_created_between_requests(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("first"))
    reply = await api.get("/api/v1/training/list")
    assert reply.status == 200
    assert [t["task_id"] for t in reply.body["data"]["tasks"]] == ["first"]
    await api.post("/api/v1/training/start", json=await api.parked_job("second"))
    reply = await api.get("/api/v1/training/list?limit=1")
    assert [t["task_id"] for t in reply.body["data"]["tasks"]] == ["second"]
    assert reply.body["data"]["pagination"] == {
        "total": 2,
        "limit": 1,
        "offset": 0,
        "has_more": True,
    }
    assert abs(reply.body["timestamp"] - time.time()) < 5


def test_progress_views_follow_the_store(store: JobStore) -> None:
    progress = ProgressViews()
    assert json.loads(progress.encoded(store, "t3")) == views.progress_view(store.get("t3"))
    store.transition("t3", Status.QUEUED, Status.RUNNING, gpu_id=0, gpu_ids=[0])
    store.update_state("t3", {"progress": {"current_step": 7, "total_steps": 16}})
    seen = json.loads(progress.encoded(store, "t3"))
    assert seen == views.progress_view(store.get("t3"))
    assert (seen["status"], seen["progress"]["current_step"]) == ("running", 7)
    with pytest.raises(NotFound):
        progress.encoded(store, "nope")


async def test_the_progress_route_answers_the_envelope(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("watched"))
    reply = await api.get("/api/v1/training/watched/progress")
    assert reply.status == 200
    assert (reply.body["code"], reply.body["message"]) == (200, "success")
    assert abs(reply.body["timestamp"] - time.time()) < 5
    state = api.daemon.services.store.get("watched")
    assert reply.body["data"] == json.loads(json.dumps(views.progress_view(state)))
    missing = await api.get("/api/v1/training/nope/progress")
    assert (missing.status, missing.body["code"]) == (404, 404)
