"""JobIntake: a spool batch and a REST submission take the same steps, in the same order:
validated, durable, announced, scheduler woken; nothing announced that is not on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from dpd.errors import BadRequest, Conflict, ValidationFailed
from dpd.spool.ingest import Outcome
from dpd.spool.intake import JobIntake
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission
from tests.jobfiles import job_document
from tests.spool.test_ingest import drop


class Recorder:
    """The announce and wake callables; each announcement checks the job is on disk."""

    def __init__(self, layout: SpoolLayout) -> None:
        self.layout = layout
        self.steps: list[tuple[str, Any]] = []

    def announce(self, event: dict[str, Any]) -> None:
        state = json.loads((self.layout.job_dir(event["task_id"]) / "state.json").read_text())
        assert state["status"] == "queued"  # durable before anyone hears of it
        self.steps.append(("announce", (event["task_id"], event["seq"], event["data"])))

    def wake(self) -> None:
        self.steps.append(("wake", None))


@pytest.fixture
def recorder(layout: SpoolLayout) -> Recorder:
    return Recorder(layout)


@pytest.fixture
def intake(layout: SpoolLayout, store: JobStore, data_root: Path, recorder: Recorder) -> JobIntake:
    return JobIntake(layout, store, [data_root], recorder.announce, recorder.wake)


def rest(body: bytes) -> Submission:
    return Submission("rest", "key-1", str(hash(body)))


async def test_a_rest_submission_is_written_then_announced_then_wakes(
    intake: JobIntake, store: JobStore, data_root: Path, recorder: Recorder
) -> None:
    body = json.dumps(job_document(data_root, task_id="cats")).encode()
    state = await intake.submit(await intake.validate(body), rest(body))
    assert state["task_id"] == "cats" and store.get("cats")["status"] == "queued"
    queued = {"status": "queued", "previous": None}
    assert recorder.steps == [("announce", ("cats", 1, queued)), ("wake", None)]


async def test_a_spool_batch_is_announced_in_order_and_wakes_once(
    intake: JobIntake, layout: SpoolLayout, data_root: Path, recorder: Recorder
) -> None:
    for name in ("a", "b"):
        drop(layout, f"{name}.json", json.dumps(job_document(data_root, task_id=name)))
    drop(layout, "broken.json", "{")
    results = await intake.ingest(["a.json", "broken.json", "b.json"])
    outcomes = [r.outcome for r in results]
    assert outcomes == [Outcome.ACCEPTED, Outcome.REJECTED, Outcome.ACCEPTED]
    announced = [step[1][0] for step in recorder.steps if step[0] == "announce"]
    assert announced == ["a", "b"]
    assert recorder.steps[-1] == ("wake", None) and len(recorder.steps) == 3
    assert os.listdir(layout.incoming) == []


async def test_a_batch_with_nothing_accepted_announces_nothing_and_wakes_nobody(
    intake: JobIntake, layout: SpoolLayout, recorder: Recorder
) -> None:
    drop(layout, "broken.json", "{")
    (result,) = await intake.ingest(["broken.json"])
    assert result.outcome is Outcome.REJECTED
    assert recorder.steps == []


async def test_bad_documents_are_refused_before_anything_is_written(
    intake: JobIntake, store: JobStore, data_root: Path, recorder: Recorder
) -> None:
    with pytest.raises(BadRequest):
        await intake.validate(b'{"model_type": ')
    doc = job_document(data_root)
    doc["model_type"] = "no-such-model"
    with pytest.raises(ValidationFailed):
        await intake.validate(json.dumps(doc).encode())
    assert store.task_ids() == [] and recorder.steps == []


async def test_a_taken_task_id_is_a_conflict_and_is_not_announced_again(
    intake: JobIntake, data_root: Path, recorder: Recorder
) -> None:
    first = json.dumps(job_document(data_root, task_id="cats")).encode()
    await intake.submit(await intake.validate(first), rest(first))
    second = json.dumps(job_document(data_root, task_id="cats", description="other")).encode()
    with pytest.raises(Conflict):
        await intake.submit(await intake.validate(second), rest(second))
    assert [step[0] for step in recorder.steps] == ["announce", "wake"]
