"""More of the supervisor end to end: resume, failures it must detect, stops, ports, shutdown.

Like test_lifecycle.py (whose helpers these tests share), each test runs a real ``dpd serve``
with the static GPU backend and the stand-in trainer, then checks what was recorded
(state.json, events.jsonl, metrics.jsonl, train.log) and the process table through the
``DPD_TASK_ID`` marker: no process of a finished job may be left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.daemon_harness import DaemonProcess, free_port, job_processes, wait_for
from tests.jobfiles import job_document
from tests.supervisor.test_lifecycle import (
    TERMINAL,
    events,
    make_daemon,
    metrics,
    status,
    statuses,
    wait_event_status,
    wait_status,
)

RUN_NAME_LENGTH = len("20250212_07-00-00")


def long_job(daemon: DaemonProcess, task_id: str, epochs: int = 50) -> dict[str, Any]:
    """4 images x 2 repeats at batch 1: 8 steps per epoch."""
    base = job_document(daemon.data)
    return job_document(daemon.data, task_id=task_id, config={**base["config"], "epochs": epochs})


def training(
    tmp_path: Path, daemons: list, task_id: str, epochs: int, **daemon_table: Any
) -> DaemonProcess:
    """A started daemon (``daemon_table`` goes into its [daemon] config) whose job
    ``task_id`` has trained at least three steps."""
    daemon = make_daemon(tmp_path, step_seconds=0.1)
    daemon.config["daemon"].update(daemon_table)
    daemons.append(daemon)
    daemon.start()
    daemon.drop(f"{task_id}.json", long_job(daemon, task_id, epochs=epochs))
    wait_for(lambda: current_step(daemon, task_id) >= 3, timeout=20)
    return daemon


def current_step(daemon: DaemonProcess, task_id: str) -> int:
    progress = (daemon.job_state(task_id) or {}).get("progress") or {}
    return int(progress.get("current_step") or 0)


def loss_steps(daemon: DaemonProcess, task_id: str) -> list[int]:
    return [
        m["step"] for m in metrics(daemon, task_id) if m["type"] == "step" and m["metric"] == "loss"
    ]


def command_lines(task_id: str) -> dict[int, list[str]]:
    found = {}
    for pid in job_processes(task_id):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
            found[pid] = psutil.Process(pid).cmdline()
    return found


def trainer_worker(task_id: str) -> tuple[int, list[str]]:
    """The worker's pid and command line (train.py with --local_rank), once it exists."""

    def find() -> tuple[int, list[str]] | None:
        for pid, cmdline in command_lines(task_id).items():
            if any(a.endswith("train.py") for a in cmdline) and any(
                a.startswith("--local_rank") for a in cmdline
            ):
                return pid, cmdline
        return None

    found = wait_for(find)
    assert isinstance(found, tuple)
    return found


def trainer_command(task_id: str) -> list[str]:
    return trainer_worker(task_id)[1]


def resume_argument(cmdline: list[str]) -> str | None:
    if "--resume_from_checkpoint" not in cmdline:
        return None
    return cmdline[cmdline.index("--resume_from_checkpoint") + 1]


def stop(daemon: DaemonProcess, task_id: str, force: bool = False) -> tuple[int, dict[str, Any]]:
    query = "?force=true" if force else ""
    return daemon.request("POST", f"/api/v1/training/stop/{task_id}{query}")


def resume(daemon: DaemonProcess, task_id: str) -> tuple[int, dict[str, Any]]:
    return daemon.request("POST", f"/api/v1/training/{task_id}/resume")


def assert_strictly_increasing(steps: list[int]) -> None:
    assert steps == sorted(set(steps)), f"steps repeat or go back: {steps}"


def no_process_left(task_id: str) -> None:
    wait_for(lambda: job_processes(task_id) == [], timeout=5)


# ----------------------------------------------------------------------------------- resume


def test_resume_after_a_graceful_stop_continues_the_step_numbers(
    tmp_path: Path, daemons: list
) -> None:
    daemon = training(tmp_path, daemons, "r", epochs=4)
    first_command = trainer_command("r")
    assert resume_argument(first_command) is None
    code, body = stop(daemon, "r")
    assert code == 200, body
    stopped = body["data"]
    assert stopped["status"] == "stopped" and stopped["last_checkpoint"], stopped
    run_name = Path(daemon.job_state("r")["run_dir"]).name
    assert len(run_name) == RUN_NAME_LENGTH
    steps_before = loss_steps(daemon, "r")
    assert steps_before and steps_before[-1] < 32
    assert job_processes("r") == []

    code, body = resume(daemon, "r")
    assert code == 200, body
    assert body["data"]["status"] in ("queued", "running")
    command = trainer_command("r")
    assert resume_argument(command) == run_name
    state = wait_status(daemon, "r", TERMINAL)
    assert state["status"] == "completed", state.get("error")
    assert state["run"] == 2
    assert Path(state["run_dir"]).name == run_name  # the same run directory, continued
    assert wait_event_status(daemon, "r", "completed") == [
        *("queued", "running", "stopping", "stopped"),
        *("queued", "running", "completed"),
    ]
    steps = loss_steps(daemon, "r")
    assert_strictly_increasing(steps)
    assert steps[: len(steps_before)] == steps_before
    assert steps[-1] == 32 and state["progress"]["current_step"] == 32
    log = (daemon.spool / "jobs" / "r" / "train.log").read_text()
    assert "Resuming training from checkpoint" in log
    assert log.count("TRAINING COMPLETE!") == 1
    assert job_processes("r") == []

    code, body = resume(daemon, "r")
    assert code == 409, body
    assert daemon.job_state("r")["status"] == "completed"


@pytest.mark.crash
def test_a_resumed_run_is_judged_alone_after_a_daemon_restart(
    tmp_path: Path, daemons: list
) -> None:
    """The first run's "Manually quitting" stays in train.log; the re-attached daemon must
    not count it for the second run, whose killed worker is then a failure of its own."""
    daemon = training(tmp_path, daemons, "r", epochs=50)
    code, body = stop(daemon, "r")
    assert code == 200 and body["data"]["status"] == "stopped", body
    steps_before = current_step(daemon, "r")
    code, body = resume(daemon, "r")
    assert code == 200, body
    wait_for(lambda: current_step(daemon, "r") >= steps_before + 2, timeout=20)

    daemon.kill9()
    daemon.start()
    wait_for(lambda: "re-attached r" in daemon.log(), timeout=10)
    worker, _ = trainer_worker("r")
    os.kill(worker, signal.SIGKILL)
    state = wait_status(daemon, "r", TERMINAL, timeout=30)
    assert state["status"] == "failed", state
    assert state["error"]["cause"] == "worker_killed", state["error"]
    assert state["error"]["exit_code"] == 247
    no_process_left("r")


def test_a_resumed_job_is_not_pinned_to_the_gpu_of_its_last_run(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, gpus=2, step_seconds=0.1)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("free.json", long_job(daemon, "free"))
    first_gpu = wait_status(daemon, "free", ("running",))["gpu_id"]
    wait_for(lambda: current_step(daemon, "free") >= 1, timeout=20)
    code, body = stop(daemon, "free")
    assert code == 200 and body["data"]["status"] == "stopped", body
    daemon.drop("pinned.json", long_job(daemon, "pinned") | {"gpu_ids": [first_gpu]})
    assert wait_status(daemon, "pinned", ("running",))["gpu_id"] == first_gpu
    code, body = resume(daemon, "free")
    assert code == 200, body
    state = wait_status(daemon, "free", ("running", *TERMINAL), timeout=10)
    assert state["status"] == "running" and state["gpu_ids"] == [1 - first_gpu], state
    for task_id in ("free", "pinned"):
        code, body = stop(daemon, task_id, force=True)
        assert code == 200 and body["data"]["status"] == "stopped", body
        assert job_processes(task_id) == []


def test_resume_from_checkpoint_in_the_job_document_names_the_run(
    tmp_path: Path, daemons: list
) -> None:
    daemon = training(tmp_path, daemons, "src", epochs=4)
    code, body = stop(daemon, "src")
    assert code == 200 and body["data"]["last_checkpoint"], body
    source_run = Path(daemon.job_state("src")["run_dir"])
    saved_step = loss_steps(daemon, "src")[-1]
    # a second task whose output folder already holds that run, named in its document
    output_root = Path(daemon.config["daemon"]["output_root"])
    shutil.copytree(source_run, output_root / "dst" / source_run.name)
    document = long_job(daemon, "dst", epochs=4)
    document["resume_from_checkpoint"] = source_run.name
    daemon.drop("dst.json", document)
    assert resume_argument(trainer_command("dst")) == source_run.name
    state = wait_status(daemon, "dst", TERMINAL)
    assert state["status"] == "completed", state.get("error")
    assert Path(state["run_dir"]).name == source_run.name
    steps = loss_steps(daemon, "dst")
    assert_strictly_increasing(steps)
    assert steps[0] == saved_step + 1 and steps[-1] == 32
    assert job_processes("dst") == []


# --------------------------------------------------------------------- failures detected


def test_a_traceback_during_caching_fails_the_job(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path, DPD_SIM_FAIL="caching_crash")
    daemons.append(daemon)
    daemon.start()
    daemon.drop("cc.json", job_document(daemon.data, task_id="cc"))
    state = wait_status(daemon, "cc", TERMINAL, timeout=10)
    assert state["status"] == "failed"
    reason = state["error"]["reason"]
    assert "traceback during caching" in reason and "CUDA error" in reason, reason
    assert state["error"]["cause"] == "cuda_error"
    assert metrics(daemon, "cc") == []
    assert wait_event_status(daemon, "cc", "failed") == ["queued", "running", "failed"]
    no_process_left("cc")


def test_a_caching_hang_after_a_traceback_is_killed_without_waiting_for_inactivity(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, DPD_SIM_FAIL="caching_hang")
    daemon.config["trainer"]["inactivity_timeout"] = 600
    daemons.append(daemon)
    daemon.start()
    daemon.drop("ch.json", job_document(daemon.data, task_id="ch"))
    wait_status(daemon, "ch", ("running",))
    started = time.monotonic()
    state = wait_status(daemon, "ch", TERMINAL, timeout=10)
    assert time.monotonic() - started < 10
    assert state["status"] == "failed"
    reason = state["error"]["reason"]
    assert "traceback during caching" in reason and "WebP" in reason, reason
    assert wait_event_status(daemon, "ch", "failed") == ["queued", "running", "failed"]
    assert job_processes("ch") == []


def test_silence_outside_training_steps_hits_the_inactivity_timeout(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, DPD_SIM_STARTUP_SECONDS="120")
    daemon.config["trainer"]["inactivity_timeout"] = 2
    daemons.append(daemon)
    daemon.start()
    daemon.drop("quiet.json", job_document(daemon.data, task_id="quiet"))
    wait_status(daemon, "quiet", ("running",))
    wait_for(lambda: job_processes("quiet"))
    state = wait_status(daemon, "quiet", TERMINAL, timeout=12)
    assert state["status"] == "failed"
    reason = state["error"]["reason"]
    assert "no output for" in reason and "inactivity timeout 2 s" in reason, reason
    assert job_processes("quiet") == []


def test_a_vanished_shim_fails_the_job_and_frees_its_gpu_and_port(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.1)
    port = free_port()
    daemon.config["trainer"]["master_port_range"] = [port, port]  # the only port there is
    daemons.append(daemon)
    daemon.start()
    daemon.drop("gone.json", long_job(daemon, "gone"))
    wait_status(daemon, "gone", ("running",))
    daemon.drop("next.json", job_document(daemon.data, task_id="next"))
    wait_for(lambda: current_step(daemon, "gone") >= 2, timeout=20)
    assert status(daemon, "next") == "queued"
    shim = json.loads((daemon.spool / "jobs" / "gone" / "shim.json").read_text())
    os.kill(int(shim["shim_pid"]), signal.SIGKILL)
    for pid in job_processes("gone"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    state = wait_status(daemon, "gone", TERMINAL, timeout=10)
    assert state["status"] == "failed"
    assert "shim" in state["error"]["reason"], state["error"]
    assert not (daemon.spool / "jobs" / "gone" / "exit.json").exists()
    following = wait_status(daemon, "next", TERMINAL, timeout=20)
    assert following["status"] == "completed", following.get("error")
    assert following["master_port"] == port and following["gpu_id"] == state["gpu_id"]
    assert job_processes("gone") == [] and job_processes("next") == []


def test_exit_zero_without_training_complete_is_a_failure(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path, DPD_SIM_FAIL="exit_zero_early")
    daemons.append(daemon)
    daemon.start()
    daemon.drop("z.json", job_document(daemon.data, task_id="z"))
    state = wait_status(daemon, "z", TERMINAL)
    assert state["status"] == "failed"
    assert state["error"]["exit_code"] == 0
    assert "TRAINING COMPLETE" in state["error"]["reason"]
    assert "TRAINING COMPLETE!" not in (daemon.spool / "jobs" / "z" / "train.log").read_text()
    assert wait_event_status(daemon, "z", "failed") == ["queued", "running", "failed"]
    assert job_processes("z") == []


# ------------------------------------------------------------------------------- stops


def test_stop_answers_for_queued_finished_and_unknown_tasks(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.05)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("short.json", long_job(daemon, "short", epochs=1))
    assert wait_status(daemon, "short", TERMINAL)["status"] == "completed"
    code, body = stop(daemon, "short")
    assert code == 409, body
    assert status(daemon, "short") == "completed"

    daemon.drop("busy.json", long_job(daemon, "busy"))
    wait_status(daemon, "busy", ("running",))
    daemon.drop("waiting.json", job_document(daemon.data, task_id="waiting"))
    wait_status(daemon, "waiting", ("queued",))
    code, body = stop(daemon, "waiting")
    assert code == 200, body
    assert body["data"]["status"] == "stopped"
    state = daemon.job_state("waiting")
    assert state["status"] == "stopped" and state["run"] == 0 and state["started_at"] is None
    assert wait_event_status(daemon, "waiting", "stopped") == ["queued", "stopped"]
    assert not (daemon.spool / "jobs" / "waiting" / "shim.json").exists()
    code, body = resume(daemon, "waiting")
    assert code == 409, body  # nothing was ever saved

    code, body = stop(daemon, "no-such-task")
    assert code == 404, body
    code, body = stop(daemon, "busy", force=True)
    assert code == 200 and body["data"]["status"] == "stopped", body
    # the freed GPU must not start the stopped job
    assert status(daemon, "waiting") == "stopped"
    assert job_processes("busy") == [] and job_processes("waiting") == []


# ------------------------------------------------------------------------------- ports


def test_a_job_waits_for_its_master_port_instead_of_failing(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.05)
    port = free_port()
    daemon.config["trainer"]["master_port_range"] = [port, port]
    daemons.append(daemon)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        daemon.start()
        daemon.drop("p.json", job_document(daemon.data, task_id="p"))
        wait_status(daemon, "p", ("queued",))
        wait_for(lambda: "p waits for a master port" in daemon.log(), timeout=10)
        assert status(daemon, "p") == "queued"
        assert job_processes("p") == []
    finally:
        squatter.close()
    state = wait_status(daemon, "p", TERMINAL, timeout=20)
    assert state["status"] == "completed", state.get("error")
    assert state["master_port"] == port
    assert wait_event_status(daemon, "p", "completed") == ["queued", "running", "completed"]
    assert daemon.log().count("waits for a master port") == 1  # said once, not every pass
    assert "scheduling pass failed" not in daemon.log()
    assert job_processes("p") == []


# ------------------------------------------------------------------------ daemon shutdown


def test_sigterm_of_the_daemon_leaves_the_training_to_a_restarted_daemon(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.1)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("t.json", job_document(daemon.data, task_id="t"))
    wait_for(lambda: current_step(daemon, "t") >= 2, timeout=20)
    trainer = set(job_processes("t"))
    assert daemon.stop(signal.SIGTERM, timeout=15) == 0
    assert status(daemon, "t") == "running"
    assert trainer & set(job_processes("t")), "the training died with the daemon"
    daemon.start()
    state = wait_status(daemon, "t", TERMINAL, timeout=30)
    assert state["status"] == "completed", state.get("error")
    assert wait_event_status(daemon, "t", "completed") == ["queued", "running", "completed"]
    assert loss_steps(daemon, "t") == list(range(1, 17))
    seqs = [e["seq"] for e in events(daemon, "t")]
    assert seqs == list(range(1, len(seqs) + 1))
    assert daemon.log().count("started t on GPU") == 1
    assert job_processes("t") == []


@pytest.mark.crash
def test_a_state_write_failing_stops_the_daemon_and_the_restart_resumes_supervision(
    tmp_path: Path, daemons: list
) -> None:
    """metrics.jsonl becomes /dev/full, whose writes fail with ENOSPC like a full disk's:
    the daemon must not record the job failed (its trainer runs on, its GPU is not free) but
    exit non-zero, and the daemon systemd starts again must pick the training up."""
    # stop_jobs_on_shutdown: not after a failure
    daemon = training(tmp_path, daemons, "d", epochs=5, stop_jobs_on_shutdown=True)
    metrics_file = daemon.spool / "jobs" / "d" / "metrics.jsonl"
    kept = metrics_file.with_name("metrics.kept")
    os.replace(metrics_file, kept)
    metrics_file.symlink_to("/dev/full")

    assert daemon.process is not None
    assert daemon.process.wait(timeout=20) == 1
    assert "supervision cannot go on" in daemon.log()
    assert status(daemon, "d") == "running"
    assert job_processes("d"), "the training died with the daemon"
    os.replace(kept, metrics_file)
    daemon.start()
    state = wait_status(daemon, "d", TERMINAL, timeout=30)
    assert state["status"] == "completed", state.get("error")
    assert loss_steps(daemon, "d") == list(range(1, 41))  # none lost, none twice
    seqs = [e["seq"] for e in events(daemon, "d")]
    assert seqs == list(range(1, len(seqs) + 1))
    logged = [
        line for e in events(daemon, "d") if e["type"] == "log" for line in e["data"]["lines"]
    ]
    assert sorted(line for line in logged if line.startswith("steps: ")) == sorted(
        line
        for line in (daemon.spool / "jobs" / "d" / "train.log").read_text().splitlines()
        if line.startswith("steps: ")
    )
    assert daemon.log().count("started d on GPU") == 1


def test_stop_jobs_on_shutdown_stops_the_training_gracefully_first(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.1)
    daemon.config["daemon"]["stop_jobs_on_shutdown"] = True
    daemons.append(daemon)
    daemon.start()
    daemon.drop("s.json", long_job(daemon, "s"))
    wait_for(lambda: current_step(daemon, "s") >= 2, timeout=20)
    assert daemon.stop(signal.SIGTERM, timeout=20) == 0
    assert job_processes("s") == []  # nothing of the job outlives the daemon
    state = daemon.job_state("s")
    assert state is not None and state["status"] == "stopped", state
    assert state["last_checkpoint"] and state["error"] is None
    assert statuses(daemon, "s")[-2:] == ["stopping", "stopped"]
    assert "Manually quitting" in (daemon.spool / "jobs" / "s" / "train.log").read_text()


# ------------------------------------------------------------------------------- hangs


def hung_job(tmp_path: Path, daemons: list, fail: str, **trainer: Any) -> dict[str, Any]:
    """Run a job whose trainer hangs (``DPD_SIM_FAIL``) to its end; returns its state."""
    daemon = make_daemon(tmp_path, step_seconds=0.05, DPD_SIM_FAIL=fail)
    daemon.config["trainer"].update(trainer)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("hang.json", long_job(daemon, "hang"))
    wait_status(daemon, "hang", ("running",))
    wait_for(lambda: job_processes("hang"))
    state = wait_status(daemon, "hang", TERMINAL, timeout=30)
    assert state["status"] == "failed", state
    assert wait_event_status(daemon, "hang", "failed")[-1] == "failed"
    wait_for(lambda: job_processes("hang") == [])
    code, body = daemon.request("GET", "/api/v1/gpu/status")
    assert code == 200 and body["data"]["gpus"][0]["status"] != "training", body
    return state


def test_a_hang_after_global_batch_size_fails_the_job(tmp_path: Path, daemons: list) -> None:
    """diffusion-pipe issue 417: set-up printed, then silence before step 1."""
    state = hung_job(tmp_path, daemons, "hang_after_batch", inactivity_timeout=2)
    reason = state["error"]["reason"]
    assert "hung" in reason and "before the first step" in reason, reason
    assert "no output for 2 s during training" in reason, reason
    assert "last line: Computed" in reason or "Global batch size" in reason, reason
    assert state["progress"]["phase"] is None


def test_a_hang_mid_training_fails_the_job(tmp_path: Path, daemons: list) -> None:
    state = hung_job(tmp_path, daemons, "hang:6", inactivity_timeout=1, step_timeout_factor=20)
    reason = state["error"]["reason"]
    assert "hung" in reason and "no new step for" in reason and "during training" in reason
    assert "last line: steps: 5 loss:" in reason, reason
    assert state["progress"]["current_step"] == 5
