"""Scheduler rule 6 in the live supervisor, fast (the fake launcher of test_runs): a queued
job whose dataset cache a live run is still building waits for that run to reach training,
though a GPU is free, and says so; a job on another dataset does not wait."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from dpd.config import StaticGpu
from dpd.jobs.spec import parse_job_document, validate_job
from dpd.spool.store import Submission
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.gpus import StaticInventory
from tests.jobfiles import job_document
from tests.supervisor.test_runs import SET_UP, Rig, ended, rig, until

__all__ = ["rig"]  # the fixture, shared with test_runs


async def two_gpus(rig: Rig) -> None:
    rig.monitor = GpuMonitor(StaticInventory([StaticGpu(), StaticGpu()]), 5.0)
    await rig.monitor.poll_now()
    await rig.start()


async def add_on(rig: Rig, task_id: str, dataset: Path) -> None:
    """Submit the standard job on ``dataset`` (validation checks paths: off the loop)."""
    doc = job_document(rig.data, task_id=task_id)
    doc["dataset"]["directories"][0]["path"] = str(dataset)

    def submit() -> None:
        body = json.dumps(doc).encode()
        spec = validate_job(parse_job_document(body, "json"), data_roots=[rig.data])
        rig.store.create_job(spec, Submission("cli", "test"))

    await asyncio.to_thread(submit)


def cats(rig: Rig) -> Path:
    return rig.data / "datasets" / "cats"


async def test_a_job_on_a_dataset_being_cached_waits_until_the_builder_trains(rig: Rig) -> None:
    await two_gpus(rig)
    await add_on(rig, "first", cats(rig))
    await rig.sup.schedule_once()
    await until(lambda: rig.launcher.alive("first") and rig.status("first") == "running")
    rig.launcher.print("first", "Grouped metadata is not cached. Caching it now.")
    await until(lambda: (rig.store.get("first")["progress"] or {}).get("phase") == "caching")

    await add_on(rig, "second", cats(rig))
    for _ in range(3):
        await rig.sup.schedule_once()
    assert rig.status("second") == "queued" and "second" not in rig.launcher.spawns
    assert rig.sup.queue_info()["second"]["waiting_for"] == {
        "reason": "dataset_cache",
        "cache": str(cats(rig) / "cache" / "sdxl"),
        "task_id": "first",
    }

    rig.launcher.print("first", *SET_UP)  # DeepSpeed is up: caching is over
    await until(lambda: (rig.store.get("first")["progress"] or {}).get("phase") == "training")
    await rig.sup.schedule_once()
    await until(lambda: rig.launcher.alive("second") and rig.status("second") == "running")
    assert set(rig.store.get("second")["gpu_ids"]) != set(rig.store.get("first")["gpu_ids"])


async def test_the_cache_is_let_go_when_its_builder_ends_before_training(rig: Rig) -> None:
    await two_gpus(rig)
    await add_on(rig, "first", cats(rig))
    await add_on(rig, "second", cats(rig))
    await rig.sup.schedule_once()
    await until(lambda: rig.launcher.alive("first"))
    assert rig.status("second") == "queued"  # the same pass placed only one builder
    rig.launcher.print("first", "Traceback (most recent call last):", "OSError: disk full")
    rig.launcher.end("first", 1)
    await ended(rig, "first", "failed")
    await rig.sup.schedule_once()  # (the end woke the loop too: either pass places it)
    await until(lambda: rig.launcher.alive("second"))


async def test_a_job_on_another_dataset_starts_beside_a_caching_run(rig: Rig) -> None:
    await two_gpus(rig)
    dogs = rig.data / "datasets" / "dogs"
    await asyncio.to_thread(shutil.copytree, cats(rig), dogs)
    await add_on(rig, "first", cats(rig))
    await rig.sup.schedule_once()
    await until(lambda: rig.launcher.alive("first"))
    await add_on(rig, "other", dogs)
    await rig.sup.schedule_once()
    await until(lambda: rig.launcher.alive("other"))
    assert (rig.store.get("first")["progress"] or {}).get("phase") == "starting"
