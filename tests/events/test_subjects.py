from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpd.events.subjects import (
    encode_payload,
    event_subject,
    gpu_subject,
    id_from_token,
    job_subject,
    message_id,
    subject_token,
)

TASK_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
TOKEN_OK = re.compile(r"[^\s.*>]+")


def event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "type": "status",
        "task_id": "cats",
        "node": "n1",
        "seq": 3,
        "timestamp": 1.5,
        "data": {"status": "running"},
        "scope": "jobs",
    }
    base.update(fields)
    return base


def test_job_events_go_to_their_kind_subject() -> None:
    for kind in ("status", "progress", "metrics", "log"):
        assert event_subject("dpd", event(type=kind)) == f"dpd.jobs.cats.{kind}"
    assert event_subject("dpd", event(scope="preprocess")) == "dpd.preprocess.cats.status"
    models = event(scope="models", task_id="dl_1", type="progress")
    assert event_subject("fleet.a", models) == "fleet.a.models.dl_1.progress"


def test_dots_in_a_task_id_stay_one_token_and_never_collide() -> None:
    assert event_subject("dpd", event(task_id="my.run.1")) == "dpd.jobs.my~run~1.status"
    assert subject_token("my.run.1") != subject_token("my_run_1")
    assert id_from_token("my~run~1") == "my.run.1"


@given(TASK_ID)
def test_every_task_id_maps_to_one_valid_token_and_back(task_id: str) -> None:
    token = subject_token(task_id)
    assert TOKEN_OK.fullmatch(token)
    assert id_from_token(token) == task_id


@given(st.text(min_size=1, max_size=40))
def test_any_identifier_maps_to_a_valid_token_and_back(identifier: str) -> None:
    token = subject_token(identifier)
    assert TOKEN_OK.fullmatch(token), token
    assert id_from_token(token) == identifier


def test_gpu_subject_escapes_a_dotted_host_name() -> None:
    assert gpu_subject("dpd", "gpu-box-1.example.com") == "dpd.gpus.gpu-box-1~example~com"


def test_payload_is_the_event_without_scope() -> None:
    payload = json.loads(encode_payload(event(task_id="a.b")))
    assert payload == {
        "type": "status",
        "task_id": "a.b",
        "node": "n1",
        "seq": 3,
        "timestamp": 1.5,
        "data": {"status": "running"},
    }


def test_an_oversized_log_batch_keeps_its_seq_and_offset_but_not_its_lines() -> None:
    big = event(type="log", data={"lines": ["x" * 1000] * 100, "offset": 4242})
    assert len(encode_payload(big)) > 50_000
    payload = json.loads(encode_payload(big, max_bytes=10_000))
    assert payload["seq"] == 3
    assert payload["data"] == {"truncated": True, "bytes": len(encode_payload(big)), "offset": 4242}
    assert json.loads(encode_payload(big, max_bytes=1_000_000))["data"]["lines"]


def test_message_id_is_task_and_seq() -> None:
    assert message_id(event(task_id="a.b", seq=17)) == "a.b:17"


def test_unknown_scope_and_empty_id_are_refused() -> None:
    with pytest.raises(ValueError):
        event_subject("dpd", event(scope="nope"))
    with pytest.raises(ValueError):
        subject_token("")


@given(TASK_ID, st.sampled_from(["status", "progress", "metrics", "log"]))
def test_job_subject_is_the_subject_of_a_job_event(task_id: str, kind: str) -> None:
    assert job_subject("dpd", task_id, kind) == event_subject(
        "dpd", event(task_id=task_id, type=kind)
    )


def test_an_event_read_from_disk_encodes_like_one_from_the_bus() -> None:
    from_bus = event(data={"status": "running", "note": "é"})
    from_disk = {key: value for key, value in from_bus.items() if key != "scope"}
    assert encode_payload(from_disk) == encode_payload(from_bus)
    assert "scope" not in json.loads(encode_payload(from_bus))


def test_truncating_a_payload_leaves_the_event_untouched() -> None:
    for with_scope in (True, False):
        big = event(type="log", data={"lines": ["x" * 1000] * 20, "offset": 7})
        if not with_scope:
            del big["scope"]
        before = json.dumps(big, sort_keys=True)
        assert json.loads(encode_payload(big, max_bytes=1000))["data"]["truncated"] is True
        assert json.dumps(big, sort_keys=True) == before
