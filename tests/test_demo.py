"""The README's first command: ``dpd demo`` shows a job going from queued to completed."""

from __future__ import annotations

import subprocess
import sys

from tests.daemon_harness import free_port


def test_demo_runs_a_simulated_job_to_completion() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dpd",
            "demo",
            "--port",
            str(free_port()),
            "--epochs",
            "2",
            "--step-seconds",
            "0.02",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "SIMULATION" in lines[0]
    assert "[dpd demo] status: queued" in result.stdout
    assert "[dpd demo] status: running" in result.stdout
    assert "[dpd demo] status: completed" in result.stdout
    assert "task demo-lora completed" in result.stdout
    assert "saved (simulated) epoch2" in result.stdout
    assert "[dpd demo] dashboard: http://127.0.0.1:" in result.stdout  # the dashboard's link
