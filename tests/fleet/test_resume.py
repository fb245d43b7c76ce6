"""A job requeued after its node was lost resumes from its last checkpoint, or starts
again when the lost run saved none (``dpd.fleet.resume``)."""

from __future__ import annotations

from pathlib import Path

from dpd.fleet.resume import has_checkpoint, resumed_run, runnable_spec

SPEC = {"model_type": "sdxl", "resume_from_checkpoint": True}


def test_resumes_when_the_newest_run_has_a_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "20261207_05-45-04"
    (run / "global_step40").mkdir(parents=True)
    (run / "latest").write_text("global_step40\n")
    assert runnable_spec(SPEC, tmp_path) == SPEC


def test_starts_again_when_no_run_saved_a_checkpoint(tmp_path: Path) -> None:
    assert runnable_spec(SPEC, tmp_path / "never-ran")["resume_from_checkpoint"] is None
    (tmp_path / "20261207_05-45-04").mkdir()  # the lost run: no checkpoint yet
    assert runnable_spec(SPEC, tmp_path)["resume_from_checkpoint"] is None


def test_resumes_an_earlier_run_by_name_when_the_lost_one_saved_none(tmp_path: Path) -> None:
    older = tmp_path / "20261207_05-40-00"
    (older / "global_step10").mkdir(parents=True)
    (older / "latest").write_text("global_step10\n")
    (tmp_path / "20261207_05-45-04").mkdir()
    assert runnable_spec(SPEC, tmp_path)["resume_from_checkpoint"] == "20261207_05-40-00"


def test_a_spec_that_does_not_resume_the_newest_run_is_left_alone(tmp_path: Path) -> None:
    named = {**SPEC, "resume_from_checkpoint": "20261207_05-40-00"}
    assert runnable_spec(named, tmp_path) == named
    assert runnable_spec({"model_type": "sdxl"}, tmp_path) == {"model_type": "sdxl"}


def test_the_resumed_run_is_named_and_a_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    assert not has_checkpoint(tmp_path / "never-ran")
    assert resumed_run(SPEC, tmp_path) is None
    run = tmp_path / "20261207_05-45-04"
    run.mkdir()
    assert not has_checkpoint(tmp_path)
    (run / "global_step40").mkdir()
    (run / "latest").write_text("global_step40\n")
    assert has_checkpoint(tmp_path)
    assert resumed_run(SPEC, tmp_path) == run.name
    assert resumed_run({**SPEC, "resume_from_checkpoint": "older"}, tmp_path) == "older"
    assert resumed_run({"model_type": "sdxl"}, tmp_path) is None
