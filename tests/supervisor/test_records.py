"""The job record's two faces (dpd.jobs.record) read a state.json that dpd wrote before they
existed: a completed job recorded by commit c9c47b1 (its progress still says ``saving``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpd.http import views
from dpd.jobs.record import PRIVATE_FIELDS, PUBLIC_FIELDS, JobView, RunRecovery
from dpd.supervisor.follower import FollowState

OLD_STATE = Path(__file__).parent / "recorded" / "state_written_by_c9c47b1.json"
# what the detail left out before it became an allow-list
OLD_DENY_LIST = {
    "progress_state",
    "output_state",
    "log_offset",
    "run_log_start",
    "schema_version",
    "submitted_seq",
    "resume_run",
}


def old_state() -> dict[str, Any]:
    return json.loads(OLD_STATE.read_text())  # type: ignore[no-any-return]


def test_the_detail_of_an_old_state_names_the_same_fields_with_the_same_values() -> None:
    state = old_state()
    detail = views.task_detail(state)
    before = {k: v for k, v in state.items() if k not in OLD_DENY_LIST}
    assert set(detail) == set(before)
    for name, value in before.items():
        if name not in ("progress", "metrics"):
            assert detail[name] == value, name
    assert detail["progress"]["current_step"] == state["progress"]["current_step"]


def test_an_ended_job_is_in_no_phase_even_if_an_old_state_says_saving() -> None:
    state = old_state()
    assert state["status"] == "completed" and state["progress"]["phase"] == "saving"
    assert views.progress_view(state)["phase"] is None
    assert views.task_detail(state)["progress"]["phase"] is None
    running = {**state, "status": "running"}
    assert views.progress_view(running)["phase"] == "saving"


def test_the_view_is_an_allow_list() -> None:
    state = {**old_state(), "secret_of_the_daemon": "x", "output_state": {"parser": {}}}
    detail = JobView.from_state(state).as_dict()
    assert "secret_of_the_daemon" not in detail and not PRIVATE_FIELDS & set(detail)
    assert set(detail) <= set(PUBLIC_FIELDS)
    queued = JobView.from_state({"task_id": "q", "status": "queued"}).as_dict()
    assert queued == {"task_id": "q", "status": "queued"}  # no field it never had


def test_the_recovery_record_reads_an_old_state() -> None:
    state = old_state()
    recovery = RunRecovery.from_state(state)
    assert recovery.log_offset == state["log_offset"] > 0
    assert recovery.run == state["run"] and recovery.run_log_start == state["run_log_start"]
    assert recovery.output_state == state["output_state"]
    assert recovery.progress_state == state["progress_state"]
    assert RunRecovery.from_state({"task_id": "new", "status": "queued"}) == RunRecovery()


def test_the_follower_facts_of_an_old_state_keep_their_phase() -> None:
    """The earlier layout saved the phase twice (facts and progress); it is read from
    progress now, and from the old facts where progress has none."""
    state = old_state()
    facts = state["output_state"]["facts"]
    assert facts["phase"] == "saving"
    assert FollowState.from_state(facts, 0.0, state["progress"]["phase"]).phase == "saving"
    assert FollowState.from_state(facts, 0.0, None).phase == "saving"
    restored = FollowState.from_state(facts, 0.0, None)
    assert restored.completed and restored.run_dir == facts["run_dir"]
    assert "phase" not in restored.to_state()
