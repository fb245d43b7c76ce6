"""The report never passes what was not observed, and renders every check and figure."""

from __future__ import annotations

import json

from bench.gpu.report import Check, Report, Verdict, render_table


def test_a_report_passes_only_with_checks_and_no_failure() -> None:
    assert not Report("simulate").passed
    report = Report("simulate")
    report.add(Check.decide("a", True, "seen"))
    report.add(Check.skipped("b", "no GPU here"))
    assert report.passed
    report.add(Check.decide("c", False, "not seen"))
    assert not report.passed


def test_on_a_gpu_a_skipped_check_is_not_a_pass() -> None:
    report = Report("gpu")
    report.add(Check.decide("a", True, "seen"))
    report.add(Check.skipped("b", "could not look"))
    assert not report.passed
    assert report.counts() == {"pass": 1, "fail": 0, "skip": 1}


def test_json_and_table_carry_every_check_figure_and_the_evidence() -> None:
    report = Report("gpu", {"gpu": "H100"})
    report.add(Check.decide("resume", True, "resumed at 11", resume_line_step=11))
    report.add(Check.decide("completed", False, "no marker"))
    report.figure("time_to_first_step", 12.3456, "s", "from submit")
    report.figure("dpd_cpu", None, "%", "not measured")
    data = json.loads(report.to_json())
    assert data["passed"] is False and data["mode"] == "gpu"
    assert data["checks"][0] == {
        "name": "resume",
        "verdict": "pass",
        "summary": "resumed at 11",
        "evidence": {"resume_line_step": 11},
    }
    assert data["figures"][1]["value"] is None
    table = render_table(report)
    assert "PASS    resume" in table and "FAIL    completed" in table
    assert "12.346 s" in table and "n/a" in table
    assert table.rstrip().endswith("NOT PASSED: 1 passed, 1 failed, 0 skipped")
    assert Verdict("skip") is Verdict.SKIP
