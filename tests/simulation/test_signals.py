"""Signal semantics of the three-level tree (reference §6.2, §6.3)."""

from __future__ import annotations

import os
import signal
import time

from tests.simulation.conftest import group_members, write_job
from tests.waiting import wait_for

SLOW = {"DPD_SIM_STEP_SECONDS": "0.1"}


def test_sigterm_to_the_group_stops_everything_and_b_reports_it(tmp_path, launch):
    job = write_job(tmp_path, images=50, epochs=1)
    sim = launch(job, env=SLOW)
    sim.wait_line(r"^steps: 2 ")
    os.killpg(sim.proc.pid, signal.SIGTERM)
    assert sim.finish() == -signal.SIGTERM  # A has no handler: it dies by the signal
    wait_for(lambda: not group_members(sim.proc.pid), 5, what="the group to empty")
    sim.wait_line(r"\[launch\.py:\d+:sigkill_handler\] Killing subprocess \d+$")
    sim.wait_line(r"Main process received SIGTERM, exiting$")
    assert "TRAINING COMPLETE!" not in sim.stdout


def test_sigterm_to_a_only_orphans_b_and_the_workers(tmp_path, launch):
    job = write_job(tmp_path, images=50, epochs=1)
    sim = launch(job, env=SLOW)
    sim.wait_line(r"^steps: 1 ")
    os.kill(sim.proc.pid, signal.SIGTERM)
    assert sim.finish() == -signal.SIGTERM
    seen = len(sim.lines_matching(r"^steps: "))
    wait_for(lambda: len(sim.lines_matching(r"^steps: ")) >= seen + 2, 5, what="orphans training")
    assert len(group_members(sim.proc.pid)) == 2  # B and the worker, still alive
    assert not sim.lines_matching(r"Killing subprocess")
    sim.kill_group()


def test_worker_killed_by_sigkill_gives_247_and_its_grandchild_goes_away(tmp_path, launch):
    job = write_job(tmp_path, images=50, epochs=1)
    sim = launch(job, env={**SLOW, "DPD_SIM_GRANDCHILD": "1"})
    worker = sim.pid_of_worker()
    sim.wait_line(r"^steps: 2 ")
    assert len(group_members(sim.proc.pid)) == 4  # A, B, worker, dataloader child
    os.kill(worker, signal.SIGKILL)
    assert sim.finish() == 247
    sim.wait_line(r"exits with return code = -9$")
    wait_for(lambda: not group_members(sim.proc.pid), 5, what="the grandchild to exit")


def test_b_escalates_to_sigkill_for_a_worker_ignoring_sigterm(tmp_path, launch):
    job = write_job(tmp_path, images=50, epochs=1)
    env = {**SLOW, "DPD_SIM_IGNORE_SIGTERM": "1", "DPD_SIM_TERMINATE_SECONDS": "0.5"}
    sim = launch(job, env=env)
    worker = sim.pid_of_worker()
    sim.wait_line(r"^steps: 1 ")
    launcher = next(p for p in group_members(sim.proc.pid) if p not in (sim.proc.pid, worker))
    started = time.monotonic()
    os.kill(launcher, signal.SIGTERM)
    assert sim.finish() == 1  # B's handler exits 1 and A propagates it
    assert time.monotonic() - started >= 0.5  # the worker survived SIGTERM until SIGKILL
    sim.wait_line(r"Main process received SIGTERM, exiting$")
    wait_for(lambda: not group_members(sim.proc.pid), 5, what="the group to empty")


def test_b_killed_by_sigkill_makes_a_exit_zero(tmp_path, launch):
    job = write_job(tmp_path, images=50, epochs=1)
    sim = launch(job, env=SLOW)
    worker = sim.pid_of_worker()
    sim.wait_line(r"^steps: 1 ")
    launcher = next(p for p in group_members(sim.proc.pid) if p not in (sim.proc.pid, worker))
    os.kill(launcher, signal.SIGKILL)
    assert sim.finish() == 0
    assert worker in group_members(sim.proc.pid)  # orphaned, still training
    sim.kill_group()
