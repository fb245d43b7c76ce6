"""The fleet records: key encoding, JSON round trips, and refusal of malformed records."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpd.fleet.records import (
    AliveRecord,
    Constraints,
    FreeGpu,
    GpuInfo,
    JobRecord,
    NodeRecord,
    RecordError,
    SubmittedBy,
    UnknownVersion,
    dec,
    enc,
    node_key,
)
from dpd.fleet.transitions import submit
from dpd.jobs.spec import TASK_ID_RE

KV_KEY_RE = r"^[-/_=\.a-zA-Z0-9]+$"
task_ids = st.from_regex(TASK_ID_RE, fullmatch=True)


@given(task_ids)
def test_enc_gives_a_valid_kv_key_and_dec_inverts_it(task_id: str) -> None:
    key = enc(task_id)
    assert re.fullmatch(KV_KEY_RE, key)
    assert not key.endswith(".") and ".." not in key
    assert dec(key) == task_id


@given(task_ids, task_ids)
def test_enc_is_injective(a: str, b: str) -> None:
    assert (enc(a) == enc(b)) == (a == b)


@pytest.mark.parametrize("task_id", ["a.", "a..b", "x.y.z", "train_20251207_01000042"])
def test_dotted_ids_that_would_be_invalid_keys(task_id: str) -> None:
    key = enc(task_id)
    assert key.startswith("job.") and "." not in key[len("job.") :]
    assert dec(key) == task_id


@pytest.mark.parametrize("bad", ["", ".a", "a b", "a=b", "x" * 65])
def test_enc_refuses_invalid_task_ids(bad: str) -> None:
    with pytest.raises(RecordError):
        enc(bad)


def test_dec_refuses_foreign_keys() -> None:
    with pytest.raises(RecordError):
        dec("node.gpu-a")
    with pytest.raises(RecordError):
        dec("job.")


def test_node_key_checks_the_name() -> None:
    assert node_key("gpu-b") == "node.gpu-b"
    for bad in ("gpu.b", "-x", "", "x" * 64):
        with pytest.raises(RecordError):
            node_key(bad)


def sample_job() -> JobRecord:
    constraints = Constraints(
        required_gpus=2,
        filesystem_domain="lab",
        gpu_ids=None,
        min_memory_mb=1000,
        labels={"r": "1"},
    )
    return submit(
        "train_x.1",
        constraints,
        {"model_type": "flux", "config": {"epochs": 1}},
        SubmittedBy("gpu-a", "rest", "k_12"),
        now=1765069200.123,
        priority=2,
    )


def test_job_record_round_trips_through_json() -> None:
    record = sample_job()
    data = record.to_json()
    assert JobRecord.from_json(data) == record
    parsed = json.loads(data)
    assert parsed["v"] == 1 and parsed["state"] == "queued" and parsed["seq"] == 1
    assert parsed["log_head"][0]["data"] == {"status": "queued", "previous": None}
    assert parsed["submitted_at"] == "2025-12-07T01:00:00.123Z"


def test_unknown_fields_are_ignored_and_unknown_version_refused() -> None:
    d: dict[str, Any] = sample_job().to_dict()
    d["future_field"] = 1
    assert JobRecord.from_dict(d) == sample_job()
    d["v"] = 2
    with pytest.raises(UnknownVersion):
        JobRecord.from_dict(d)


@pytest.mark.parametrize(
    "path,value,expect",
    [
        (("state",), "sleeping", "job.state: unknown value"),
        (("attempt",), "1", "job.attempt: expected int"),
        (("attempt",), True, "job.attempt: expected a number"),
        (("constraints", "labels"), {"a": 1}, "job.constraints.labels"),
        (("constraints", "gpu_ids"), [0, "1"], "job.constraints.gpu_ids"),
        (("task_id",), "a b", "job.task_id"),
        (("log_head",), [1], "job.log_head"),
    ],
)
def test_malformed_job_records_name_the_field(
    path: tuple[str, ...], value: Any, expect: str
) -> None:
    d: dict[str, Any] = sample_job().to_dict()
    target = d
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(RecordError, match=expect.replace(".", r"\.")):
        JobRecord.from_dict(d)


def test_missing_field_and_non_json() -> None:
    d = sample_job().to_dict()
    del d["desired"]
    with pytest.raises(RecordError, match="missing 'desired'"):
        JobRecord.from_dict(d)
    with pytest.raises(RecordError, match="not JSON"):
        JobRecord.from_json(b"{nope")
    with pytest.raises(RecordError, match="expected a JSON object"):
        JobRecord.from_json(b"[]")


def test_node_and_alive_records_round_trip() -> None:
    node = NodeRecord(
        node="gpu-b",
        url="http://gpu-b:5000",
        gpus=(GpuInfo(0, "RTX", 24564, "GPU-1"),),
        filesystem_domain="lab",
        data_roots=("/data",),
        output_root="/data/runs",
        labels={"rack": "r1"},
        boot_id="b",
        machine_id="m",
        instance="i",
        version="0.1.0",
        registered_at="2025-12-07T01:00:00.000Z",
    )
    assert NodeRecord.from_json(node.to_json()) == node
    alive = AliveRecord(
        "gpu-b", "i", "b", "m", 7, "2025-12-07T01:00:00.000Z", (FreeGpu(0, 2000),), ("t1",), 1
    )
    assert AliveRecord.from_json(alive.to_json()) == alive
    bad = alive.to_dict()
    bad["running"] = [1]
    with pytest.raises(RecordError, match=r"alive\.running"):
        AliveRecord.from_dict(bad)
    # which running tasks may still write dataset caches; an older node's beat says nothing
    caching = dataclasses.replace(alive, caching=("t1",))
    assert AliveRecord.from_json(caching.to_json()) == caching
    older = caching.to_dict()
    del older["caching"]
    assert AliveRecord.from_dict(older).caching is None
    older["caching"] = [1]
    with pytest.raises(RecordError, match=r"alive\.caching"):
        AliveRecord.from_dict(older)
