"""The kit's whole scenario rehearsed on the CPU: conformance.sh --simulate drives a real
``dpd serve`` and dpd's stand-in trainer through every REST step of the GPU run (submit,
follow, stop, resume, SIGKILL of dpd and re-attachment, completion, the impossible job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu" / "conformance.sh"
SMALL = [
    "--images",
    "4",
    "--repeats",
    "8",
    "--epochs",
    "4",
    "--step-seconds",
    "0.1",
    "--dead-seconds",
    "1",
    "--timeout",
    "90",
]
EVERY_CHECK = {
    "submit",
    "gpu_busy_in_api",
    "gpu_process_is_trainer",
    "graceful_stop",
    "no_processes_after_stop",
    "resume",
    "trainer_survives_dpd_kill",
    "reattach_after_kill9",
    "phases",
    "steps_and_losses",
    "progress_and_eta",
    "completed",
    "metrics_match_log",
    "lora_loads",
    "no_processes_after_completion",
    "impossible_config_fails",
    "no_processes_after_failure",
    "scenario_ran_to_the_end",
}


def rehearse(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPD_")}
    env["PYTHON"] = sys.executable
    return subprocess.run(
        ["bash", str(SCRIPT), "--simulate", "--out", str(out), *SMALL, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )


@pytest.mark.crash
def test_the_rehearsal_passes_every_check_it_can_observe_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = rehearse(out)
    report = json.loads((out / "report.json").read_text())
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["mode"] == "simulate" and report["passed"] is True
    assert set(verdicts) == EVERY_CHECK
    skipped = {name for name, verdict in verdicts.items() if verdict == "skip"}
    assert skipped == {"gpu_process_is_trainer", "lora_loads"}  # no GPU, no tensors here
    assert all(verdicts[name] == "pass" for name in EVERY_CHECK - skipped)
    figures = {f["name"]: f["value"] for f in report["figures"]}
    assert set(figures) == {
        "dpd_start",
        "time_to_first_step",
        "dpd_cpu_while_following",
        "dpd_restart_with_running_job",
        "step_time_with_dpd_following",
        "step_time_with_dpd_dead",
    }
    assert all(value is not None and value >= 0 for value in figures.values())
    log = (out / "conformance-lora" / "train.log").read_text()
    assert "Manually quitting" in log and "TRAINING COMPLETE!" in log
    assert "[dpd-simulation]" in log  # the stand-in says what it is
    assert (out / "conformance-lora" / "config.toml").exists()
    assert (out / "conformance-lora" / "metrics.jsonl").stat().st_size > 0
    assert (
        "Processed dataset was empty" in (out / "conformance-impossible" / "train.log").read_text()
    )
    table = (out / "report.txt").read_text()
    assert "PASSED: 16 passed, 0 failed, 2 skipped" in table and table in done.stdout
    with tarfile.open(out / "conformance-results.tar.gz") as bundle:
        names = set(bundle.getnames())
    assert {"./report.json", "./conformance-lora/train.log"} <= names
    assert not any(name.startswith("./work") for name in names)


@pytest.mark.crash
def test_a_trainer_that_dies_makes_the_rehearsal_fail_and_say_where(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = rehearse(out, "--trainer-env", "DPD_SIM_FAIL=crash:5")
    report = json.loads((out / "report.json").read_text())
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert done.returncode == 1
    assert report["passed"] is False
    assert verdicts["submit"] == "pass"
    assert verdicts["scenario_ran_to_the_end"] == "fail"
    stopped = next(c for c in report["checks"] if c["name"] == "scenario_ran_to_the_end")
    assert "ended (failed)" in stopped["summary"]
    assert "completed" not in verdicts  # never judged, so never passed
    assert "NOT PASSED" in done.stdout
