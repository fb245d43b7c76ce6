"""``dpd submit/ls/show/logs/stop/resume/gpus/watch`` as a user runs them, against a running
``dpd serve``: readable output, ``--json`` for scripts, and the exit codes of dpd.cli."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from dpd.client import display
from tests.daemon_harness import DaemonProcess, free_port, wait_for
from tests.jobfiles import job_document
from tests.ptyrun import drawn_lines, run_in_pty
from tests.test_client import KEY, start_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    running = start_daemon(tmp_path_factory.mktemp("cli"))
    yield running
    running.stop(signal.SIGTERM)


def dpd(
    daemon: DaemonProcess | None, *args: str, timeout: float = 20
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPD_")}
    env["DPD_URL"] = daemon.url if daemon else f"http://127.0.0.1:{free_port()}"
    env["DPD_API_KEY"] = KEY
    return subprocess.run([sys.executable, "-m", "dpd", *args], capture_output=True, text=True,
                          env=env, timeout=30)  # fmt: skip


def submit(daemon: DaemonProcess, tmp_path: Path, task_id: str, **overrides: object) -> None:
    path = tmp_path / f"{task_id}.yaml"
    path.write_text(yaml.safe_dump(job_document(daemon.data, task_id=task_id, **overrides)))
    result = dpd(daemon, "submit", str(path), "--queue")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.startswith(f"{task_id} ")


def test_submit_watch_show_ls_logs(daemon: DaemonProcess, tmp_path: Path) -> None:
    submit(daemon, tmp_path, "cli-1")
    watched = dpd(daemon, "watch", "cli-1")
    assert watched.returncode == EXIT_OK, watched.stderr
    assert "100.0%" in watched.stdout and "loss " in watched.stdout
    assert watched.stdout.rstrip().endswith("cli-1 completed")
    shown = dpd(daemon, "show", "cli-1")
    assert shown.returncode == EXIT_OK and "status" in shown.stdout and "completed" in shown.stdout
    listed = dpd(daemon, "ls", "--json", "--status", "completed")
    assert "cli-1" in [t["task_id"] for t in json.loads(listed.stdout)["tasks"]]
    table = dpd(daemon, "ls").stdout.splitlines()
    assert table[0].split()[:3] == ["TASK", "STATUS", "PHASE"]
    assert any(row.startswith("cli-1 ") and " completed " in row for row in table[1:])
    logs = dpd(daemon, "logs", "cli-1", "--tail", "5")
    assert logs.returncode == EXIT_OK and len(logs.stdout.splitlines()) == 5
    as_json = [
        json.loads(line)
        for line in dpd(daemon, "logs", "cli-1", "--json").stdout.split("\n")
        if line
    ]
    assert any(e["message"] == "TRAINING COMPLETE!" for e in as_json)
    again = dpd(daemon, "submit", str(tmp_path / "cli-1.yaml"))
    assert again.returncode == EXIT_OK and "already submitted" in again.stdout


def test_logs_follow_ends_with_the_task(daemon: DaemonProcess, tmp_path: Path) -> None:
    submit(daemon, tmp_path, "cli-2")
    followed = dpd(daemon, "logs", "cli-2", "-f", "--tail", "1")
    assert followed.returncode == EXIT_OK, followed.stderr
    assert "TRAINING COMPLETE!" in followed.stdout


def test_stop_resume_and_a_watch_that_does_not_complete(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    config = job_document(daemon.data)["config"]
    submit(daemon, tmp_path, "cli-3", config=dict(config, epochs=200))
    wait_for(lambda: steps_done(daemon, "cli-3") >= 2, timeout=15)
    stopped = dpd(daemon, "stop", "cli-3", "--json")  # graceful: a checkpoint to resume from
    assert stopped.returncode == EXIT_OK, stopped.stderr
    assert json.loads(stopped.stdout)["status"] == "stopped"
    watched = dpd(daemon, "watch", "cli-3")
    assert watched.returncode == EXIT_FAILURE and "cli-3 stopped" in watched.stdout
    resumed = dpd(daemon, "resume", "cli-3")
    assert resumed.returncode == EXIT_OK and resumed.stdout.startswith("cli-3 ")
    wait_for(lambda: (daemon.job_state("cli-3") or {}).get("status") == "running", timeout=15)
    assert dpd(daemon, "stop", "cli-3", "--force").returncode == EXIT_OK


def steps_done(daemon: DaemonProcess, task_id: str) -> int:
    progress = (daemon.job_state(task_id) or {}).get("progress") or {}
    return int(progress.get("current_step") or 0)


def test_gpus_and_exit_codes(daemon: DaemonProcess, tmp_path: Path) -> None:
    gpus = dpd(daemon, "gpus")
    assert gpus.returncode == EXIT_OK and "Simulated GPU" in gpus.stdout
    missing = dpd(daemon, "show", "no-such-task", "--json")
    assert missing.returncode == EXIT_FAILURE and "404" in missing.stderr
    assert json.loads(missing.stdout)["code"] == 404
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_type: [unclosed")
    assert dpd(daemon, "submit", str(bad)).returncode == EXIT_USAGE
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"model_type": "sdxl", "config": {"epochs": -1}}))
    refused = dpd(daemon, "submit", str(invalid))
    assert refused.returncode == EXIT_FAILURE and "422" in refused.stderr
    assert "config" in refused.stderr  # the field errors are listed
    assert dpd(None, "ls").returncode == EXIT_UNAVAILABLE
    assert dpd(daemon, "ls", "--status", "bogus").returncode == EXIT_USAGE


def test_watch_on_a_100_column_terminal_redraws_one_line(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    task_id = "wide-watch-check-task-01"
    submit(daemon, tmp_path, task_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPD_")}
    env.update(DPD_URL=daemon.url, DPD_API_KEY=KEY)
    status, output = run_in_pty([sys.executable, "-m", "dpd", "watch", task_id], env, 100)
    assert status == EXIT_OK, output
    drawn = drawn_lines(output)
    bars = [line for line in drawn if line.startswith(f"{task_id}  ")]
    assert len(bars) >= 2, output  # redrawn more than once
    assert max(len(line) for line in bars) <= 99, [line for line in bars if len(line) > 99]
    assert drawn[-1] == f"{task_id} completed"


def test_progress_lines_are_cut_to_the_width() -> None:
    assert display.fit_width("x" * 150, 100) == "x" * 99
    assert display.fit_width("short", 100) == "short"
    assert display.fit_width("abc", 1) == "a"


def test_an_estimated_total_and_eta_are_marked_as_such() -> None:
    progress = {"overall_progress": 10.0, "current_epoch": 1, "total_epochs": 2}
    progress |= {"current_step": 1, "total_steps": 10, "eta_seconds": 90}
    line = display.progress_line({**progress, "total_steps_estimated": True})
    assert "step 1/~10" in line and line.endswith("ETA ~" + str(display.duration(90)))
    line = display.progress_line({**progress, "total_steps_estimated": False})
    assert "step 1/10" in line and line.endswith("ETA " + str(display.duration(90)))
    assert "step 1/?" in display.progress_line({**progress, "total_steps": None})
