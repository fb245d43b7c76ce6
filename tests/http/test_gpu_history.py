"""GPU history and the per-process view of /gpu/status, on a real daemon: samples of every
GPU as the monitor takes them, bounded to the last hour; each process on a GPU attributed to
the job whose trainer it descends from, or flagged foreign."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from dpd.daemon import Daemon
from dpd.http.gpu_history import GpuHistory, process_owners
from dpd.supervisor.gpus import GpuInfo, GpuProcess, NvmlInventory
from tests.fakes import fake_nvml
from tests.http.conftest import Api, MakeApi


def gpu(gpu_id: int, used: int, error: str | None = None) -> GpuInfo:
    return GpuInfo(gpu_id, f"GPU {gpu_id}", 1000, used, 1000 - used, None, 7, 40, 100, 300,
                   (), error)  # fmt: skip


async def test_history_holds_the_monitors_samples(api: Api) -> None:
    inventory = api.daemon.services.monitor.inventory
    inventory.set_usage(0, 4096, 77)  # type: ignore[attr-defined]
    await api.daemon.services.monitor.poll_now()
    deadline = time.monotonic() + 10
    while True:
        reply = await api.get("/api/v1/gpu/history?seconds=600")
        assert reply.status == 200
        gpus = reply.body["data"]["gpus"]
        if all(len(g["samples"]) >= 3 for g in gpus):
            break
        assert time.monotonic() < deadline, gpus
        await asyncio.sleep(0.1)
    assert reply.body["data"]["interval"] == 0.2
    assert [g["gpu_id"] for g in gpus] == [0, 1]
    assert gpus[0]["name"] == "Simulated RTX 4090"
    t, util, memory, _temp, _power = gpus[0]["samples"][-1]
    assert util == 77 and memory == 4096 and abs(t - time.time()) < 60
    stamps = [s[0] for s in gpus[0]["samples"]]
    assert stamps == sorted(stamps)
    assert (await api.get("/api/v1/gpu/history?seconds=0")).status == 400
    assert (await api.get("/api/v1/gpu/history", key=None)).status == 401


def test_history_keeps_one_hour_and_skips_unknown_gpus() -> None:
    now = [0.0]
    history = GpuHistory(keep_seconds=3600, clock=lambda: now[0])
    for second in range(0, 7200, 10):
        now[0] = float(second)
        history.record([gpu(0, second % 1000), gpu(1, 0, error="lost")])
    view = history.view(3600)
    assert view[1]["samples"] == [] and view[1]["name"] == "GPU 1"
    samples = view[0]["samples"]
    assert samples[0][0] == 7190 - 3600 and samples[-1][0] == 7190
    assert len(samples) == 361
    assert len(history.view(60)[0]["samples"]) == 7


def test_processes_belong_to_the_job_whose_trainer_they_descend_from() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        owners = process_owners(
            [GpuProcess(child.pid, 500), GpuProcess(os.getpid(), 10), GpuProcess(1, 5)],
            {os.getpid(): "my-task"},
        )
    finally:
        child.kill()
        child.wait()
    assert owners == {child.pid: "my-task", os.getpid(): "my-task", 1: None}


async def test_gpu_status_lists_processes_and_flags_foreign_ones(make_api: MakeApi) -> None:
    machine = fake_nvml.FakeMachine(gpus=[fake_nvml.FakeGpu(processes=[(1, 1234)])])

    def use_nvml(daemon: Daemon) -> None:
        daemon.services.monitor.inventory = NvmlInventory(nvml=fake_nvml.module(machine))

    api = await make_api(prepare=use_nvml)
    reply = await api.get("/api/v1/gpu/status")
    assert reply.status == 200
    entry = reply.body["data"]["gpus"][0]
    assert entry["processes"] == [
        {"pid": 1, "used_memory_mb": 1234, "task_id": None, "foreign": True}
    ]
    assert entry["foreign_processes"] == 1
    assert entry["status"] == "busy"
