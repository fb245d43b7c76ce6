from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from dpd.errors import Conflict, NotFound
from dpd.jobs.spec import validate_job
from dpd.jobs.states import Status
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission
from tests.jobfiles import job_document


def spec_for(data_root: Path, **overrides: object):
    return validate_job(job_document(data_root, **overrides), data_roots=[data_root])


def test_create_job_writes_a_complete_directory(store: JobStore, data_root: Path) -> None:
    state = store.create_job(spec_for(data_root), Submission("rest", "key1"))
    job_dir = store.layout.job_dir(state["task_id"])
    assert sorted(os.listdir(job_dir)) == [
        "config.toml",
        "dataset.toml",
        "events.jsonl",
        "job.json",
        "state.json",
    ]
    on_disk = json.loads((job_dir / "state.json").read_text())
    assert on_disk["status"] == "queued"
    assert on_disk["task_id"] == state["task_id"]
    config = tomllib.loads((job_dir / "config.toml").read_text())
    assert config["output_dir"] == str(store.output_root / state["task_id"])
    assert config["dataset"] == str(job_dir / "dataset.toml")
    events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    assert events[0]["seq"] == 1 and events[0]["data"]["status"] == "queued"
    assert events[0]["node"] == "test-node"
    assert not [n for n in os.listdir(store.layout.jobs) if n.startswith(".")]


def test_client_task_id_is_kept_and_a_second_use_is_a_conflict(
    store: JobStore, data_root: Path
) -> None:
    store.create_job(spec_for(data_root, task_id="my-run.1"), Submission("rest"))
    assert store.get("my-run.1")["status"] == "queued"
    with pytest.raises(Conflict):
        store.create_job(spec_for(data_root, task_id="my-run.1"), Submission("rest"))
    assert len(store.task_ids()) == 1


def test_generated_ids_never_collide_across_restarts(
    layout: SpoolLayout, data_root: Path, tmp_path: Path
) -> None:
    ids = set()
    for _ in range(3):
        store = JobStore(layout, tmp_path / "outputs", "n")
        store.load()
        for _ in range(5):
            ids.add(store.create_job(spec_for(data_root), Submission("rest"))["task_id"])
    assert len(ids) == 15
    assert all(i.startswith("train_") for i in ids)


def test_load_rebuilds_the_index_and_removes_half_built_dirs(
    store: JobStore, layout: SpoolLayout, data_root: Path, tmp_path: Path
) -> None:
    first = store.create_job(spec_for(data_root, priority=5), Submission("rest"))
    half = layout.jobs / ".new-train_x-1234"
    half.mkdir()
    (half / "job.json").write_text("{")
    reloaded = JobStore(layout, tmp_path / "outputs", "n")
    assert reloaded.load() == [first["task_id"]]
    assert reloaded.get(first["task_id"])["priority"] == 5
    assert not half.exists()


def test_unreadable_job_directory_is_quarantined_not_guessed(
    store: JobStore, layout: SpoolLayout, data_root: Path, tmp_path: Path
) -> None:
    good = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    bad = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    (layout.job_dir(bad) / "state.json").write_text('{"status": "runn')
    reloaded = JobStore(layout, tmp_path / "outputs", "n")
    assert reloaded.load() == [good]
    quarantined = os.listdir(layout.quarantine)
    assert len(quarantined) == 1 and quarantined[0].startswith(bad)
    reason = (layout.quarantine / quarantined[0] / "QUARANTINE_REASON").read_text()
    assert "JSONDecodeError" in reason or "Expecting" in reason


def test_status_changes_follow_the_state_machine(store: JobStore, data_root: Path) -> None:
    task_id = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    with pytest.raises(Conflict):
        store.transition(task_id, Status.QUEUED, Status.COMPLETED)  # never ran
    event = store.transition(task_id, Status.QUEUED, Status.RUNNING, started_at="now")
    assert event.data == {"status": "running", "previous": "queued"}
    assert event.state["started_at"] == "now"
    store.transition(task_id, Status.RUNNING, Status.COMPLETED, announce={"error": None})
    with pytest.raises(Conflict):
        store.transition(task_id, Status.COMPLETED, Status.RUNNING)
    on_disk = json.loads((store.layout.job_dir(task_id) / "state.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["started_at"] == "now"


def test_a_transition_from_a_status_the_task_left_is_a_conflict_and_writes_nothing(
    store: JobStore, data_root: Path
) -> None:
    """The stop/launch race: whoever comes second finds the status moved on."""
    task_id = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    stopped = store.transition(task_id, Status.QUEUED, Status.STOPPED, stopped_at="t")
    assert stopped.previous is Status.QUEUED
    with pytest.raises(Conflict) as lost:
        store.transition(task_id, Status.QUEUED, Status.RUNNING, master_port=123)
    assert lost.value.code == 409 and lost.value.data["status"] == "stopped"
    state = store.get(task_id)
    assert state["status"] == "stopped" and "master_port" not in state
    # a set of expected statuses: any of them will do
    store.transition(task_id, {Status.STOPPED, Status.FAILED}, Status.QUEUED)
    assert store.get(task_id)["status"] == "queued"


def test_update_state_never_changes_a_status(store: JobStore, data_root: Path) -> None:
    task_id = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    with pytest.raises(ValueError):
        store.update_state(task_id, {"status": "running"})
    assert store.get(task_id)["status"] == "queued"


def test_event_seq_is_gapless_and_survives_a_restart(
    store: JobStore, layout: SpoolLayout, data_root: Path, tmp_path: Path
) -> None:
    task_id = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    assert [store.append_event(task_id, "log", {"n": i})["seq"] for i in range(3)] == [2, 3, 4]
    reloaded = JobStore(layout, tmp_path / "outputs", "n")
    reloaded.load()
    assert reloaded.append_event(task_id, "log", {})["seq"] == 5
    assert [e["seq"] for e in reloaded.read_events(task_id)] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in reloaded.read_events(task_id, after_seq=3)] == [4, 5]


def test_a_fleet_job_numbers_on_from_other_hosts_seqs_and_keeps_that_over_a_restart(
    store: JobStore, layout: SpoolLayout, data_root: Path, tmp_path: Path
) -> None:
    """FLEET.md §9.7: a job taken over from other hosts starts at ``first_seq``; one taken
    back after them jumps with ``set_next_seq`` (never backwards); a reload goes on from
    the file."""
    task_id = store.create_job(spec_for(data_root), Submission("rest"), first_seq=41)["task_id"]
    assert [e["seq"] for e in store.read_events(task_id)] == [41]
    assert store.append_event(task_id, "log", {})["seq"] == 42
    store.set_next_seq(task_id, 90)
    store.set_next_seq(task_id, 50)  # behind what is already promised: no change
    assert [r["seq"] for r in store.append_events(task_id, [("log", {}), ("log", {})])] == [
        90,
        91,
    ]
    reloaded = JobStore(layout, tmp_path / "outputs", "n")
    reloaded.load()
    assert reloaded.last_event_seq(task_id) == 91
    assert reloaded.append_event(task_id, "log", {})["seq"] == 92
    assert [e["seq"] for e in reloaded.read_events(task_id, after_seq=42)] == [90, 91, 92]
    with pytest.raises(NotFound):
        reloaded.set_next_seq("nobody", 5)


def test_lookup_of_unknown_task_is_not_found(store: JobStore) -> None:
    with pytest.raises(NotFound):
        store.get("nope")


def test_spool_submission_identity_finds_the_job(store: JobStore, data_root: Path) -> None:
    drop = Submission("spool", "a.json", "abc", 1000, 42, 7)
    task_id = store.create_job(spec_for(data_root), drop)["task_id"]
    assert store.find_submission(drop) == task_id
    assert store.find_submission(Submission("spool", "a.json", "abc", 1000, 43, 7)) is None


def test_listing_is_in_submission_order_and_filterable(store: JobStore, data_root: Path) -> None:
    ids = [store.create_job(spec_for(data_root), Submission("rest"))["task_id"] for _ in range(4)]
    store.transition(ids[1], Status.QUEUED, Status.RUNNING)
    assert [s["task_id"] for s in store.states()] == ids
    assert [s["task_id"] for s in store.states(lambda s: s["status"] == "running")] == [ids[1]]
    assert store.count_by_status()["queued"] == 3


def test_a_status_change_without_its_event_is_reported_once_after_load(
    layout: SpoolLayout, data_root: Path, tmp_path: Path
) -> None:
    store = JobStore(layout, tmp_path / "outputs", "n")
    store.load()
    quiet = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    told = store.create_job(spec_for(data_root), Submission("rest"))["task_id"]
    store.transition(quiet, Status.QUEUED, Status.STOPPED)  # a crash before its event was appended
    store.transition(told, Status.QUEUED, Status.STOPPED)
    store.append_events(told, [("status", {"status": "stopped", "previous": "queued"})])
    assert store.take_unannounced() == []  # only what load finds is reported

    reloaded = JobStore(layout, tmp_path / "outputs", "n")
    reloaded.load()
    pending = reloaded.take_unannounced()
    assert [(e.task_id, e.data) for e in pending] == [
        (quiet, {"status": "stopped", "previous": "queued", "recovered": True})
    ]
    assert reloaded.take_unannounced() == []
