"""A processed dataset directory is accepted as-is by the training job validator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from dpd.errors import ValidationFailed
from dpd.preprocess.tasks import PreprocessManager
from tests.preprocess.test_tasks import done, request
from tests.waiting import wait_until

spec = pytest.importorskip("dpd.jobs.spec")


async def test_processed_dataset_passes_job_validation(
    manager: PreprocessManager, clip: Callable[..., Path], tmp_path: Path
) -> None:
    task_id = (await manager.submit(request(manager, clip("t.mp4", seconds=3))))["task_id"]
    await wait_until(lambda: done(manager, task_id))
    dataset_dir = manager.get(task_id)["result"]["dataset_dir"]
    models = tmp_path / "data" / "models" / "wan"
    models.mkdir(parents=True)
    document = {
        "model_type": "wan",
        "dataset": {
            "resolutions": [256],
            "frame_buckets": [1, 33, 65, 81],
            "directories": [{"path": dataset_dir}],
        },
        "config": {
            "epochs": 1,
            "model": {"ckpt_path": str(models), "dtype": "bfloat16"},
            "adapter": {"type": "lora", "rank": 16, "dtype": "bfloat16"},
            "optimizer": {"type": "adamw_optimi", "lr": 2e-5},
            "save": {"save_every_n_epochs": 1},
        },
    }
    try:
        job = await asyncio.to_thread(spec.validate_job, document, data_roots=[tmp_path / "data"])
    except ValidationFailed as err:
        pytest.fail(f"refused: {err.errors}")
    assert job.dataset["directories"][0]["path"] == dataset_dir
