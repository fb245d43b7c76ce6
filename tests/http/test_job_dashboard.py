"""The job page's and submit form's routes on a real daemon: thinned series with min/max,
markers, priority of queued jobs, dry-run validation, config view, and the output files
with Range downloads confined to the task's output directory."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import pytest

from dpd.http.routes.job_dashboard import vram_warning
from dpd.jobs import series
from tests.http.conftest import BOOTSTRAP, Api, MakeApi, make_config

TERMINAL = ("completed", "failed", "stopped")


async def fast_api(make_api: MakeApi, tmp_path: Path) -> Api:
    trainer = make_config(tmp_path / "unused").trainer
    env = dict(trainer.env, DPD_SIM_STEP_SECONDS="0.02")
    return await make_api(trainer=dataclasses.replace(trainer, env=env))


async def wait_status(api: Api, task_id: str, statuses: tuple[str, ...], timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = api.daemon.services.store.get(task_id)
        if state["status"] in statuses:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"{task_id} never reached {statuses}")


def write_metrics(api: Api, task_id: str, values: list[float | None]) -> None:
    api.daemon.services.store.append_metrics(
        task_id,
        [
            {"type": "step", "metric": "loss", "step": i + 1, "epoch": 1, "value": v,
             "timestamp": "2026-12-07T00:00:00Z"}
            for i, v in enumerate(values)
        ],
    )  # fmt: skip


# ------------------------------------------------------------------ series


async def test_a_long_series_is_thinned_keeping_its_spikes(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("series-task"))
    values: list[float | None] = [1.0] * 10_000
    values[4321] = 500.0  # one spike
    values[77] = None  # a NaN the parser wrote as null
    await asyncio.to_thread(write_metrics, api, "series-task", values)
    reply = await api.get("/api/v1/training/series-task/series?kind=step_loss&max_points=100")
    assert reply.status == 200, reply.body
    data = reply.body["data"]
    assert data["thinned"] is True and data["total"] == 10_000
    assert len(data["points"]) == 100
    assert max(p["max"] for p in data["points"]) == 500.0  # the spike survives as a max
    assert all(p["min"] == 1.0 for p in data["points"])
    assert [p["step"] for p in data["points"]] == sorted(p["step"] for p in data["points"])
    assert data["points"][-1]["step"] == 10_000
    whole = await api.get("/api/v1/training/series-task/series?kind=step_loss&max_points=20000")
    assert whole.body["data"]["thinned"] is False
    assert len(whole.body["data"]["points"]) == 10_000
    assert whole.body["data"]["points"][77]["value"] is None
    assert "min" not in whole.body["data"]["points"][0]
    empty = await api.get("/api/v1/training/series-task/series?kind=eval_loss")
    assert empty.body["data"]["points"] == [] and empty.body["data"]["total"] == 0
    assert (await api.get("/api/v1/training/series-task/series?kind=nope")).status == 400
    assert (await api.get("/api/v1/training/nope/series")).status == 404


async def test_series_and_alerts_follow_appends_after_the_first_answer(api: Api) -> None:
    """The route's cache (dpd.http.jobcache) answers what the files hold now."""
    await api.post("/api/v1/training/start", json=await api.parked_job("grows"))
    await asyncio.to_thread(write_metrics, api, "grows", [2.0] * 300)
    url = "/api/v1/training/grows/series?kind=step_loss&max_points=100"
    first = (await api.get(url)).body["data"]
    assert first["total"] == 300 and first["points"][-1]["step"] == 300
    assert (await api.get("/api/v1/training/grows/alerts")).body["data"]["alerts"] == []
    await asyncio.to_thread(write_metrics, api, "grows", [2.0] * 300 + [9.0] * 50)
    await asyncio.to_thread(
        api.daemon.services.store.append_event, "grows", "alert", {"kind": "stalled"}
    )
    later = (await api.get(url)).body["data"]
    assert later["total"] == 650 and later["points"][-1]["max"] == 9.0
    alerts = (await api.get("/api/v1/training/grows/alerts")).body["data"]["alerts"]
    assert [a["data"]["kind"] for a in alerts] == ["stalled"]


def test_thinning_puts_every_point_in_one_bucket() -> None:
    records = [{"step": i, "value": float(i)} for i in range(1, 1001)]
    thinned = series.thin(records, 7)
    assert len(thinned.points) == 7
    assert thinned.points[0]["min"] == 1.0 and thinned.points[-1]["max"] == 1000.0
    # buckets meet: each bucket's min is one past the previous bucket's max
    for before, after in zip(thinned.points, thinned.points[1:], strict=False):
        assert after["min"] == before["max"] + 1
    mean = sum(range(1, 1001)) / 1000
    weights = [p["max"] - p["min"] + 1 for p in thinned.points]
    assert math.isclose(sum(p["value"] * w for p, w in zip(thinned.points, weights, strict=True))
                        / 1000, mean)  # fmt: skip


def test_resume_markers_come_from_running_statuses() -> None:
    events = [
        {"type": "status", "data": {"status": "running"}},
        {"type": "progress", "data": {"current_step": 40}},
        {"type": "status", "data": {"status": "stopped"}},
        {"type": "status", "data": {"status": "queued"}},
        {"type": "status", "data": {"status": "running"}},
    ]
    found = series.markers(events, ["epoch1", "step30"], [40], {1: 25})
    assert found == [
        {"step": 25, "kind": "save", "run": None, "name": "epoch1"},
        {"step": 30, "kind": "save", "run": None, "name": "step30"},
        {"step": 40, "kind": "checkpoint", "run": None, "name": "global_step40"},
        {"step": 40, "kind": "resume", "run": 2, "name": "run 2"},
    ]


# ------------------------------------------------------------------ a real run


async def test_a_finished_run_has_markers_config_and_downloadable_files(
    make_api: MakeApi, tmp_path: Path
) -> None:
    api = await fast_api(make_api, tmp_path)
    reply = await api.post("/api/v1/training/start", json=api.job(task_id="files-task"))
    assert reply.status == 201, reply.body
    state = await wait_status(api, "files-task", TERMINAL)
    assert state["status"] == "completed", state

    markers = await api.get("/api/v1/training/files-task/markers")
    kinds = [m["kind"] for m in markers.body["data"]["markers"]]
    assert kinds.count("save") == 2  # epochs 1 and 2 (save_every_n_epochs = 1)
    assert all(m["step"] is not None for m in markers.body["data"]["markers"])

    config = await api.get("/api/v1/training/files-task/config")
    assert config.status == 200
    assert config.body["data"]["job"]["model_type"] == "sdxl"
    assert "[model]" in config.body["data"]["config_toml"]
    assert "[[directory]]" in config.body["data"]["dataset_toml"]

    listed = await api.get("/api/v1/training/files-task/files")
    files = listed.body["data"]["files"]
    models = [f for f in files if f["kind"] == "model" and f["path"].endswith(".safetensors")]
    assert len(models) == 2, files
    wanted = models[0]
    url = f"/api/v1/training/files-task/files/{wanted['path']}"
    full = (Path(state["output_dir"]) / wanted["path"]).read_bytes()
    assert len(full) == wanted["size"] > 6
    auth = {"Authorization": f"Bearer {BOOTSTRAP}"}
    async with api.session.get(api.url + url, headers=auth) as whole:
        assert whole.status == 200
        assert whole.headers["Content-Disposition"].startswith("attachment")
        assert await whole.read() == full
    async with api.session.get(api.url + url, headers={**auth, "Range": "bytes=2-5"}) as part:
        assert part.status == 206
        assert await part.read() == full[2:6]


@pytest.mark.parametrize("path", ["../../../etc/passwd", "%2e%2e/%2e%2e/job.json", "nope.bin"])
async def test_downloads_stay_inside_the_output_dir(api: Api, path: str) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("jail-task"))
    output = Path(api.daemon.services.store.get("jail-task")["output_dir"])
    output.mkdir(parents=True, exist_ok=True)
    (output.parent / "secret.txt").write_text("SECRET")
    reply = await api.get(f"/api/v1/training/jail-task/files/{path}")
    assert reply.status == 404
    assert "SECRET" not in reply.text and "root:" not in reply.text
    (output / "escape").symlink_to(output.parent / "secret.txt")
    linked = await api.get("/api/v1/training/jail-task/files/escape")
    assert linked.status == 404 and "SECRET" not in linked.text


async def test_files_need_a_key(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("auth-task"))
    assert (await api.get("/api/v1/training/auth-task/files", key=None)).status == 401
    assert (await api.get("/api/v1/training/auth-task/files/x", key=None)).status == 401


# ------------------------------------------------------------------ priority


async def test_a_queued_jobs_priority_changes_and_a_running_ones_does_not(api: Api) -> None:
    await api.post("/api/v1/training/start", json=await api.parked_job("prio-a"))
    await api.post("/api/v1/training/start", json=await api.parked_job("prio-b"))
    assert api.daemon.services.supervisor.queue_info()["prio-b"]["position"] == 2
    reply = await api.post("/api/v1/training/prio-b/priority", json={"priority": 5})
    assert reply.status == 200, reply.body
    assert reply.body["data"]["priority"] == 5
    assert reply.body["data"]["queue_position"] == 1
    assert api.daemon.services.store.get("prio-b")["priority"] == 5
    for bad in ({"priority": "high"}, {"priority": 10**9}, {}, {"priority": True}):
        refused = await api.post("/api/v1/training/prio-b/priority", json=bad)
        assert refused.status == 422, bad
    assert api.daemon.services.store.get("prio-b")["priority"] == 5
    await api.post("/api/v1/training/stop/prio-a", json={"force": True})
    stopped = await api.post("/api/v1/training/prio-a/priority", json={"priority": 1})
    assert stopped.status == 409
    assert (await api.post("/api/v1/training/nope/priority", json={"priority": 1})).status == 404
    plain = await api.post("/api/v1/training/prio-b/priority", key=api.key("preprocessing"),
                           json={"priority": 1})  # fmt: skip
    assert plain.status == 403


# ------------------------------------------------------------------ validate


async def test_validate_is_a_dry_run_with_the_generated_files(api: Api) -> None:
    job = api.job(task_id="dry-task")
    reply = await api.post("/api/v1/training/validate", json=job)
    assert reply.status == 200, reply.body
    data = reply.body["data"]
    assert data["valid"] is True and data["required_gpus"] == 1
    assert "[model]" in data["config_toml"] and "dry-task" in data["config_toml"]
    assert "[[directory]]" in data["dataset_toml"]
    assert data["warnings"] == []  # sdxl needs 10 GB; the simulated GPUs have 24 and 80
    assert not api.daemon.services.store.exists("dry-task")
    bad = await api.post("/api/v1/training/validate", json=dict(job, model_type="nope"))
    assert bad.status == 422
    assert any(e["field"] == "model_type" for e in bad.body["data"]["errors"])


async def test_validate_warns_when_no_gpu_has_the_models_memory(api: Api) -> None:
    inventory: Any = api.daemon.services.monitor.inventory
    for gpu in (0, 1):
        inventory.set_usage(gpu, 24576 - 2048 if gpu == 0 else 81920 - 2048)
    await api.daemon.services.monitor.poll_now()
    reply = await api.post("/api/v1/training/validate", json=api.job())
    warnings = reply.body["data"]["warnings"]
    assert any("at least 10 GB" in w for w in warnings), warnings


def test_vram_warning() -> None:
    assert vram_warning(10, [20 * 1024, 4096]) is None
    assert vram_warning(None, [1]) is None
    assert vram_warning(10, []) is None
    assert "at least 24 GB" in (vram_warning(24, [8192, 16384]) or "")
