"""GPU routes: the pure shaping, then /gpu/status and /gpu/available on a real daemon with
static GPUs and a stand-in training occupying one of them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dpd.http.routes.gpu import available_entries, gpu_entry, summary, task_fields
from dpd.supervisor.gpus import GpuInfo, unknown_gpu
from tests.http.conftest import Api
from tests.waiting import wait_until

GPU_FIELDS = {
    "gpu_id", "name", "memory_total", "memory_used", "memory_free", "memory_utilization",
    "utilization_gpu", "temperature", "power_usage", "power_limit", "status", "current_task",
    "task_type", "task_progress", "estimated_remaining_time",
}  # fmt: skip


def info(gpu_id: int, total: int, used: int) -> GpuInfo:
    return GpuInfo(gpu_id, f"GPU {gpu_id}", total, used, total - used, None, None, None, 1, 2)


def entry(gpu_id: int, total: int, used: int, status: str) -> dict[str, Any]:
    return gpu_entry(info(gpu_id, total, used), status, task_fields(None, None, None))


# ------------------------------------------------------------------ pure


def test_task_fields_of_a_training() -> None:
    state = {
        "model_type": "flux",
        "config": {"adapter": {"type": "lora"}},
        "progress": {"overall_progress": 45.6, "eta_seconds": 3600},
    }
    assert task_fields("t1", "training", state) == {
        "current_task": "t1",
        "task_type": "flux_lora",
        "task_progress": 45.6,
        "estimated_remaining_time": 3600,
    }
    assert task_fields("p1", "preprocessing", None)["task_type"] == "preprocessing"
    assert task_fields(None, None, None)["current_task"] is None


def test_summary_counts_and_memory() -> None:
    entries = [
        entry(0, 24576, 8192, "available"),
        entry(1, 24576, 20480, "training"),
        gpu_entry(unknown_gpu(2, "GPU 2", 16000, "lost"), "unknown", task_fields(None, None, None)),
    ]
    assert summary(entries) == {
        "total_gpus": 3,
        "available_gpus": 1,
        "busy_gpus": 1,
        "unknown_gpus": 1,
        "total_memory": 24576 * 2 + 16000,
        "available_memory": 16384 + 4096,
    }
    assert entries[2]["error"] == "lost"


def test_available_filters_and_recommendations() -> None:
    entries = [
        entry(0, 24576, 0, "available"),
        entry(1, 81920, 0, "available"),
        entry(2, 81920, 0, "training"),
        entry(3, 8192, 0, "available"),
        entry(4, 81920, 0, "busy"),
    ]

    def recommend(memory_mb: int) -> list[str]:
        return [m for m, need in (("sdxl", 10000), ("wan", 30000)) if memory_mb >= need]

    every = available_entries(entries, recommend)
    assert [e["gpu_id"] for e in every] == [0, 1, 3]
    assert every[1]["recommended_for"] == ["sdxl", "wan"] and every[2]["recommended_for"] == []
    big = available_entries(entries, recommend, min_memory=30000)
    assert [e["gpu_id"] for e in big] == [1]
    training = available_entries(entries, recommend, task_type="training")
    assert [e["gpu_id"] for e in training] == [0, 1]  # too small for any model type
    preprocessing = available_entries(entries, recommend, task_type="preprocessing")
    assert [e["gpu_id"] for e in preprocessing] == [0, 1, 3]


# ------------------------------------------------------------------ through a daemon


async def test_gpu_status_of_idle_static_gpus(api: Api) -> None:
    reply = await api.get("/api/v1/gpu/status", api.key("preprocessing"))
    assert reply.status == 200 and reply.body["code"] == 200
    gpus = reply.body["data"]["gpus"]
    assert [g["gpu_id"] for g in gpus] == [0, 1]
    assert all(set(g) >= GPU_FIELDS for g in gpus)
    assert [g["name"] for g in gpus] == ["Simulated RTX 4090", "Simulated A100"]
    assert {g["status"] for g in gpus} == {"available"}
    assert reply.body["data"]["summary"]["total_memory"] == 24576 + 81920
    assert reply.body["data"]["summary"]["available_gpus"] == 2


async def test_a_training_shows_on_its_gpu_and_leaves_the_available_list(api: Api) -> None:
    started = await api.post(
        "/api/v1/training/start", json=api.job(task_id="cats", gpu_id=0, queue=True)
    )
    assert started.status == 201, started.body

    async def gpu0() -> dict[str, Any]:
        return (await api.get("/api/v1/gpu/status")).body["data"]["gpus"][0]

    async def training_on_gpu0() -> dict[str, Any] | None:
        entry = await gpu0()
        return entry if entry["status"] == "training" else None

    busy = await wait_until(training_on_gpu0)
    assert busy["current_task"] == "cats"
    assert busy["task_type"] == "sdxl_lora"
    status = (await api.get("/api/v1/gpu/status")).body["data"]["summary"]
    assert status["busy_gpus"] == 1 and status["available_gpus"] == 1

    available = (await api.get("/api/v1/gpu/available")).body["data"]["available_gpus"]
    assert [g["gpu_id"] for g in available] == [1]
    assert set(available[0]) == {
        "gpu_id", "name", "memory_total", "memory_free", "status", "recommended_for",
    }  # fmt: skip


async def test_available_query_parameters(api: Api) -> None:
    big = await api.get("/api/v1/gpu/available?min_memory=30000&task_type=training")
    assert [g["gpu_id"] for g in big.body["data"]["available_gpus"]] == [1]
    none = await api.get("/api/v1/gpu/available?min_memory=100000")
    assert none.body["data"]["available_gpus"] == []
    for query in ("min_memory=-1", "min_memory=1.5", "min_memory=x", "task_type=inference"):
        bad = await api.get(f"/api/v1/gpu/available?{query}")
        assert bad.status == 400 and bad.body["code"] == 400, query
        assert bad.body["message"], query


async def test_recommended_for_comes_from_the_model_catalog(api: Api) -> None:
    catalog_module = pytest.importorskip("dpd.models.catalog")
    catalog = await asyncio.to_thread(catalog_module.load_catalog)
    available = (await api.get("/api/v1/gpu/available")).body["data"]["available_gpus"]
    for gpu in available:
        assert gpu["recommended_for"] == list(catalog.recommended_for(gpu["memory_free"]))
    assert len(available[1]["recommended_for"]) >= len(available[0]["recommended_for"]) > 0
