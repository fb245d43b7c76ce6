"""The requeue-mode fence as the shim runs it (FLEET.md §9.4): the lease arithmetic and the
staged stop's timetable on a fake clock, then real shims whose lease runs out, or not."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from dpd.jobs.states import Status
from dpd.supervisor import lease, proctree
from dpd.supervisor.lease import FenceOrder, Stages
from dpd.supervisor.outcome import FENCED, RunFacts, StopReason, judge_run
from dpd.supervisor.shim import MARKER
from dpd.supervisor.shim_protocol import Launch
from dpd.supervisor.shim_records import read_exit_status
from tests.supervisor.test_shim import run_shim, write_launch
from tests.waiting import wait_for

ORDER = FenceOrder("/x/lease", after=300, check=1, stop_timeout=60, term_timeout=35,
                   kill_timeout=10, output_dir="/out")  # fmt: skip


# ---------------------------------------------------------------- pure, fake clock


def test_a_lease_runs_out_after_fence_after_seconds_on_its_own_clock() -> None:
    assert not lease.expired(1000.0, 1000.0, 300)
    assert not lease.expired(1000.0, 1300.0, 300)  # exactly fence_after: still valid
    assert lease.expired(1000.0, 1300.5, 300)
    assert lease.expired(None, 5.0, 300)  # missing or unreadable: expired
    assert lease.expired(90_000.0, 50.0, 300)  # written on an earlier boot: expired


def test_read_takes_a_number_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "lease"
    assert lease.read(str(path)) is None
    path.write_text("123.5\n")
    assert lease.read(str(path)) == 123.5
    path.write_text("garbage")
    assert lease.read(str(path)) is None


def test_the_deadline_is_the_claims_fence_contract() -> None:
    assert ORDER.deadline == 300 + 1 + 60 + 35 + 10  # 406 s with the defaults (§7.1)
    assert FenceOrder.from_dict(ORDER.as_dict()) == ORDER
    assert FenceOrder.from_dict(None) is None
    with pytest.raises(ValueError):
        FenceOrder.from_dict({**ORDER.as_dict(), "check": 0})


def test_staged_stop_takes_each_step_once_in_order_at_its_time() -> None:
    stages = Stages(ORDER, began=100.0)
    assert stages.due(100.0) == lease.SAVE_QUIT
    assert stages.due(100.0) is None
    assert stages.next_at() == 160.0
    assert stages.due(159.9) is None
    assert stages.due(160.0) == lease.TERM
    assert stages.next_at() == 195.0
    assert stages.due(205.0) == lease.KILL  # late: one step per call, none skipped
    assert stages.due(205.0) == lease.GIVEN_UP
    assert stages.next_at() is None and stages.due(10_000.0) is None


def test_launch_json_carries_the_fence_or_none() -> None:
    base = {"task_id": "t", "run": 1, "command": ["x"], "cwd": "/", "env": {}, "log_path": "l"}
    assert Launch.from_dict(base).fence is None
    assert Launch.from_dict({**base, "fence": ORDER.as_dict()}).fence == ORDER


def test_a_fenced_run_fails_with_reason_fenced_unless_it_had_completed() -> None:
    quit_on_fence = RunFacts(manual_quit=True, returncode=0, reason=FENCED)  # shim's save_quit
    outcome = judge_run(quit_on_fence)
    assert outcome.status is Status.FAILED and outcome.error is not None
    assert outcome.error["reason"] == FENCED  # what T11 requeues
    by_daemon = RunFacts(manual_quit=True, returncode=0, stop_requested=StopReason.FENCED)
    assert judge_run(by_daemon).status is Status.FAILED
    done = RunFacts(completed=True, returncode=0, stop_requested=StopReason.FENCED)
    assert judge_run(done).status is Status.COMPLETED


# ---------------------------------------------------------------- real shims


@pytest.fixture
def task_id() -> Iterator[str]:
    task = f"fence-{uuid4().hex[:12]}"
    yield task
    left = proctree.processes_with_env(MARKER, task)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the job left behind: {left}"


TRAINER = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN) if 'deaf' in sys.argv else None\n"
    "run = os.path.join(sys.argv[1], '20250101_00-00-00')\n"
    "os.makedirs(run, exist_ok=True)\n"
    "deadline = time.time() + 30\n"
    "while time.time() < deadline:\n"
    "    if os.path.exists(os.path.join(run, 'save_quit')) and 'deaf' not in sys.argv:\n"
    "        print('saved and quitting', flush=True); sys.exit(0)\n"
    "    time.sleep(0.05)\n"
    "print('TRAINING COMPLETE!', flush=True)\n"
)


def fenced_launch(job_dir: Path, task_id: str, lease_file: Path, *extra: str) -> None:
    out = job_dir / "out"
    write_launch(job_dir, task_id, [sys.executable, "-c", TRAINER, str(out), *extra])
    launch = json.loads((job_dir / "launch.json").read_text())
    order = FenceOrder(str(lease_file), after=1.0, check=0.2, stop_timeout=1.0,
                       term_timeout=0.5, kill_timeout=1.0, output_dir=str(out))  # fmt: skip
    launch["fence"] = order.as_dict()
    (job_dir / "launch.json").write_text(json.dumps(launch))


def test_a_shim_whose_lease_runs_out_stops_its_trainer_with_save_quit(
    tmp_path: Path, task_id: str
) -> None:
    lease_file = tmp_path / "lease"
    lease_file.write_text(f"{lease.boottime()}\n")  # renewed once, then never again
    fenced_launch(tmp_path, task_id, lease_file)
    started = time.monotonic()
    assert run_shim(tmp_path).returncode == 0
    end = wait_for(lambda: read_exit_status(tmp_path), timeout=15)
    assert end.fenced and end.reason.startswith("fenced"), end
    assert end.returncode == 0  # it quit on save_quit: its checkpoint is saved
    assert "saved and quitting" in (tmp_path / "train.log").read_text()
    assert time.monotonic() - started >= 1.0  # not before the lease ran out
    assert not (tmp_path / "out" / "20250101_00-00-00" / "save_quit").exists()  # cleared


def test_a_trainer_deaf_to_save_quit_and_sigterm_is_killed_within_the_deadline(
    tmp_path: Path, task_id: str
) -> None:
    lease_file = tmp_path / "missing-lease"  # never written: expired from the start
    fenced_launch(tmp_path, task_id, lease_file, "deaf")
    assert run_shim(tmp_path).returncode == 0
    end = wait_for(lambda: read_exit_status(tmp_path), timeout=15)
    assert end.fenced and end.signal == signal.SIGKILL, end
    assert not proctree.processes_with_env(MARKER, task_id)


def renew(lease_file: Path) -> None:
    """Write the lease as the daemon does: whole or not at all (a torn read is expired)."""
    part = lease_file.with_suffix(".part")
    part.write_text(f"{lease.boottime()}\n")
    os.replace(part, lease_file)


def test_a_shim_whose_lease_is_renewed_lets_its_trainer_finish(
    tmp_path: Path, task_id: str
) -> None:
    lease_file = tmp_path / "lease"
    renew(lease_file)
    out = tmp_path / "out"
    short = TRAINER.replace("time.time() + 30", "time.time() + 2.5")
    write_launch(tmp_path, task_id, [sys.executable, "-c", short, str(out)])
    launch = json.loads((tmp_path / "launch.json").read_text())
    launch["fence"] = FenceOrder(str(lease_file), 3.0, 0.2, 1.0, 0.5, 1.0, str(out)).as_dict()
    (tmp_path / "launch.json").write_text(json.dumps(launch))
    done = threading.Event()

    def heartbeats() -> None:  # the daemon's, every 0.1 s, from before the shim starts
        while not done.wait(0.1):
            renew(lease_file)

    beating = threading.Thread(target=heartbeats, daemon=True)
    beating.start()
    try:
        assert run_shim(tmp_path).returncode == 0
        end = wait_for(lambda: read_exit_status(tmp_path), timeout=15, interval=0.1)
    finally:
        done.set()
        beating.join()
    assert not end.fenced and end.returncode == 0, end
    assert "TRAINING COMPLETE!" in (tmp_path / "train.log").read_text()


# ---------------------------------------------------------------- run lock (§10.2)


def test_a_held_run_lock_keeps_a_second_trainer_from_starting(tmp_path: Path, task_id: str) -> None:
    """Another host's trainer holds the task's lock in the shared output dir: the shim
    starts nothing and records ``duplicate_prevented``; once the lock is free, it runs."""
    lock_path = tmp_path / "out" / ".dpd-run.lock"
    lock_path.parent.mkdir()
    held = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "the other host"
    marker = tmp_path / "trainer-ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]
    write_launch(tmp_path, task_id, command)
    launch = json.loads((tmp_path / "launch.json").read_text())
    launch["run_lock"] = str(lock_path)
    (tmp_path / "launch.json").write_text(json.dumps(launch))
    try:
        assert run_shim(tmp_path).returncode == 0
        end = wait_for(lambda: read_exit_status(tmp_path), timeout=10)
        assert end.duplicate_prevented and end.reason.startswith("duplicate_prevented"), end
        assert not marker.exists()
    finally:
        os.close(held)
    (tmp_path / "exit.json").unlink()
    assert run_shim(tmp_path).returncode == 0
    end = wait_for(lambda: read_exit_status(tmp_path), timeout=10)
    assert not end.duplicate_prevented and end.returncode == 0, end
    assert marker.exists()
