"""Task ids and constraints of the fleet commit (FLEET.md §9.1.1, §9.1.4). Pure."""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

from dpd.fleet.submit import constraints_for, random_ids, spool_ids
from dpd.jobs.spec import JobSpec
from dpd.spool.store import Submission

ID = re.compile(r"^train_\d{8}_\d{2}\d{6}$")


def spec(**changes: Any) -> JobSpec:
    base = JobSpec(None, "sdxl", "", None, 0, True, None, None, 1, {}, {})
    return dataclasses.replace(base, **changes)


def drop(name: str = "job.json", inode: int = 7) -> Submission:
    return Submission("spool", name, "ab" * 32, 1000, inode, 1_765_069_200_123_456_789)


def test_a_spool_file_computes_the_same_ids_again_and_another_file_others() -> None:
    first = list(itertools.islice(spool_ids(drop()), 5))
    assert first == list(itertools.islice(spool_ids(drop()), 5))  # a re-ingest finds its own
    assert all(ID.match(i) for i in first) and len(set(first)) == 5
    assert first[0].startswith("train_20251207_01")  # the hour of the file's mtime
    assert list(itertools.islice(spool_ids(drop(inode=8)), 5)) != first


def test_rest_ids_are_random_in_the_submitters_hour() -> None:
    ids = list(itertools.islice(random_ids(1_765_069_200.0), 20))
    assert all(i.startswith("train_20251207_01") and ID.match(i) for i in ids)
    assert len(set(ids)) > 15


def test_explicit_gpus_pin_the_job_to_the_submitting_node() -> None:
    pinned = constraints_for(spec(gpu_ids=(0, 1), required_gpus=2), "gpu-a", "lab")
    assert pinned.node == "gpu-a" and pinned.gpu_ids == (0, 1) and pinned.needed == 2
    free = constraints_for(spec(required_gpus=4, min_memory_mb=40000), "gpu-a", "lab")
    assert free.node is None and free.gpu_ids is None
    assert (free.required_gpus, free.min_memory_mb, free.filesystem_domain) == (4, 40000, "lab")
