from __future__ import annotations

from pathlib import Path

import pytest

from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore
from tests.jobfiles import make_data_root


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return make_data_root(tmp_path / "data")


@pytest.fixture
def layout(tmp_path: Path) -> SpoolLayout:
    spool = SpoolLayout(tmp_path / "spool")
    spool.ensure()
    return spool


@pytest.fixture
def store(layout: SpoolLayout, tmp_path: Path) -> JobStore:
    job_store = JobStore(layout, tmp_path / "outputs", "test-node")
    job_store.load()
    return job_store
