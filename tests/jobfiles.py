"""Job documents and the data they point at, shared by the tests."""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from dpd.jobs.spec import parse_job_document, validate_job
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission


def make_data_root(root: Path, images: int = 4) -> Path:
    """A data root with one captioned image dataset and an SDXL checkpoint file."""
    dataset = root / "datasets" / "cats"
    dataset.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        (dataset / f"cat{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
        (dataset / f"cat{index}.txt").write_text(f"a cat, number {index}")
    models = root / "models"
    models.mkdir(exist_ok=True)
    (models / "sdxl.safetensors").write_bytes(b"weights")
    return root


def own_dataset(data_root: Path, name: str) -> Path:
    """A copy of the data root's dataset for one job (made once per name, safe from several
    threads): jobs on one dataset build its cache one at a time (scheduler rule 6), which a
    test or benchmark of placement must not measure."""
    own = data_root / "datasets" / f"of-{name}"
    if not own.exists():
        staged = own.with_name(f".{own.name}.{uuid.uuid4().hex}")
        shutil.copytree(data_root / "datasets" / "cats", staged, ignore=_NO_CACHE)
        with contextlib.suppress(OSError):  # another thread made it first
            staged.rename(own)
        shutil.rmtree(staged, ignore_errors=True)
    return own


_NO_CACHE = shutil.ignore_patterns("cache")


def job_document(data_root: Path, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model_type": "sdxl",
        "description": "cats LoRA",
        "dataset": {
            "resolutions": [512],
            "directories": [{"path": str(data_root / "datasets" / "cats"), "num_repeats": 2}],
        },
        "config": {
            "epochs": 2,
            "micro_batch_size_per_gpu": 1,
            "model": {
                "checkpoint_path": str(data_root / "models" / "sdxl.safetensors"),
                "dtype": "bfloat16",
            },
            "adapter": {"type": "lora", "rank": 16, "dtype": "bfloat16"},
            "optimizer": {"type": "adamw_optimi", "lr": 2e-5},
            "save": {"save_every_n_epochs": 1},
        },
    }
    doc.update(overrides)
    return doc


def new_store(root: Path) -> tuple[JobStore, Path]:
    """An empty, loaded job store under ``root``, and the data root its jobs may name."""
    data = make_data_root(root / "data")
    layout = SpoolLayout(root / "spool")
    layout.ensure()
    store = JobStore(layout, data / "training_runs", "test")
    store.load()
    return store, data


def add_job(store: JobStore, data: Path, task_id: str) -> None:
    """Submit the standard job document as ``task_id``, as the CLI would."""
    body = json.dumps(job_document(data, task_id=task_id)).encode()
    spec = validate_job(parse_job_document(body, "json"), data_roots=[data])
    store.create_job(spec, Submission("cli", "test"))
