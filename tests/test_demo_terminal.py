"""``dpd demo`` on a real 100-column terminal: its progress line is redrawn in place, never
wider than the terminal (a wider one wraps, and each redraw then starts a new line)."""

from __future__ import annotations

import os
import sys

from tests.daemon_harness import free_port
from tests.ptyrun import drawn_lines, run_in_pty


def test_demo_progress_fits_a_100_column_terminal() -> None:
    argv = [sys.executable, "-m", "dpd", "demo", "--port", str(free_port()), "--epochs", "2",
            "--step-seconds", "0.05"]  # fmt: skip
    status, output = run_in_pty(argv, dict(os.environ), columns=100, timeout=120)
    assert status == 0, output
    drawn = drawn_lines(output)
    bars = [line for line in drawn if line.startswith("[dpd demo] [")]
    assert len(bars) >= 2, output
    assert max(len(line) for line in bars) <= 99, [line for line in bars if len(line) > 99]
    assert "[dpd demo] status: completed" in drawn


def test_the_full_bar_is_wider_than_100_columns() -> None:
    """What the test above guards against: the demo's bar at the end of a run."""
    from dpd.cli.demo import bar_line

    progress = {"overall_progress": 100.0, "current_epoch": 10, "total_epochs": 10,
                "current_step": 480, "total_steps": 480, "phase": "training",
                "current_loss": 0.1234, "eta_seconds": 0}  # fmt: skip
    assert len(bar_line(progress)) >= 100
