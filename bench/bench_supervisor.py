"""The supervisor's cost, measured through a real ``dpd serve`` and the stand-in trainer.

(a) wall time of N training steps: the trainer's command run alone vs. the same job dropped
    into a daemon (drop -> state.json terminal). Target: slowdown <= 5 %.
(b) the daemon's own CPU (user + system of its process, not the detached trainers) over a
    window while 4 jobs train on 4 simulated GPUs at 1 step/s, beside the idle daemon.
    Target: <= 1 % of one core.
(c) lines/s the daemon keeps up with: a trainer printing as fast as it can; the catch-up lag
    is from the last byte written to train.log until state.json's log_offset reaches the
    file's size, beside the trainer's own writing rate.

    python3 bench/bench_supervisor.py [--runs 3] [--steps 200] [--window 20] [--lines 20000]

Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from dpd.config import Config
from dpd.simulation import simulation_paths
from dpd.supervisor.launcher import build_trainer_command, build_trainer_env
from dpd.supervisor.shim import JobMark
from tests.daemon_harness import DaemonProcess, free_port
from tests.jobfiles import job_document, make_data_root

TERMINAL = ("completed", "failed", "stopped")
SLOWDOWN_TARGET = 5.0  # percent
CPU_TARGET = 1.0  # percent of one core


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"not met within {timeout} s: {condition}")


def start_daemon(root: Path, gpus: int, sim_env: dict[str, str]) -> DaemonProcess:
    deepspeed, diffusion_pipe_dir = simulation_paths()
    # master ports below the kernel's ephemeral range (32768-60999 here): a window taken
    # from free_port() lay inside it, and a client socket's port could then clash with a
    # trainer's bind (a stand-in trainer failed on one in about ten runs)
    low = random.randrange(20000, 32700)
    daemon = DaemonProcess(
        root,
        {
            "daemon": {"log_level": "INFO"},
            "gpus": {
                "backend": "static",
                # dpd's default; the test harness polls ten times as often to be quick
                "monitor_interval": Config().gpus.monitor_interval,
                "static": [{"name": f"Simulated GPU {i}", "memory_mb": 24576} for i in range(gpus)],
            },
            "trainer": {
                "deepspeed": deepspeed,
                "diffusion_pipe_dir": str(diffusion_pipe_dir),
                "env": sim_env,
                "stop_timeout": 5,
                "master_port_range": [low, min(low + 20, 65535)],
            },
        },
    )
    make_data_root(daemon.data, images=4)
    return daemon.start()


def job(daemon: DaemonProcess, task_id: str, epochs: int) -> dict[str, Any]:
    base = job_document(daemon.data)
    config = {**base["config"], "epochs": epochs, "save": {"save_every_n_epochs": 1000}}
    return job_document(daemon.data, task_id=task_id, config=config)


def wait_terminal(daemon: DaemonProcess, task_id: str, timeout: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        state = daemon.job_state(task_id)
        return state if state and state["status"] in TERMINAL else None

    state: dict[str, Any] = wait_until(ended, timeout)
    return state


def sim_env(step_seconds: float, steps: int) -> dict[str, str]:
    return {
        "DPD_SIM_STEP_SECONDS": str(step_seconds),
        "DPD_SIM_CACHE_SECONDS": "0.05",
        "DPD_SIM_STEPS_PER_EPOCH": str(steps),
        "DPD_SIM_POLL_SECONDS": "0.1",
    }


# ------------------------------------------------------------------------- (a) wall time


def run_alone(daemon: DaemonProcess, task_id: str, env: dict[str, str], log: Path) -> float:
    """The daemon's own launch command for that job, run directly (a new run directory)."""
    deepspeed, diffusion_pipe_dir = simulation_paths()
    job_dir = daemon.spool / "jobs" / task_id
    command = build_trainer_command(
        deepspeed, diffusion_pipe_dir, [0], free_port(), job_dir / "config.toml", None
    )
    environment = build_trainer_env(
        os.environ, env, JobMark.of(f"bench-alone-{task_id}", job_dir.parent / f"alone-{task_id}")
    )
    with log.open("wb") as out:
        started = time.perf_counter()
        subprocess.run(
            command, cwd=diffusion_pipe_dir, env=environment, stdout=out, stderr=out, check=True
        )
        return time.perf_counter() - started


def bench_wall(root: Path, runs: int, steps: int) -> None:
    env = sim_env(0.02, steps)
    daemon = start_daemon(root, gpus=1, sim_env=env)
    through, alone, inside, before, after = [], [], [], [], []
    try:
        for run in range(runs):
            task_id = f"wall{run}"
            dropped = time.time()
            daemon.drop(f"{task_id}.json", job(daemon, task_id, epochs=1))
            state = wait_terminal(daemon, task_id, timeout=120)
            done = time.time()
            assert state["status"] == "completed", state.get("error")
            shim = read_json(daemon.spool / "jobs" / task_id / "shim.json")
            end = read_json(daemon.spool / "jobs" / task_id / "exit.json")
            through.append(done - dropped)
            inside.append(end["ended_at"] - shim["started_at"])
            before.append(shim["started_at"] - dropped)
            after.append(done - end["ended_at"])
            alone.append(run_alone(daemon, task_id, env, root / f"alone{run}.log"))
    finally:
        daemon.stop()
    a, d, i = statistics.median(alone), statistics.median(through), statistics.median(inside)
    print(f"(a) {steps} steps at 0.02 s/step, median of {runs} runs")
    print(f"    trainer command alone (baseline):        {a:7.3f} s   runs {fmt(alone)}")
    print(f"    same job through dpd serve, drop->done:  {d:7.3f} s   runs {fmt(through)}")
    print(f"      of which the trainer under its shim:   {i:7.3f} s   runs {fmt(inside)}")
    print(f"      drop -> trainer started:               {statistics.median(before):7.3f} s")
    print(f"      trainer reaped -> state.json final:    {statistics.median(after):7.3f} s")
    print(f"    slowdown end to end {100 * (d - a) / a:+.1f} %, of the training itself ", end="")
    print(f"{100 * (i - a) / a:+.1f} %  (target <= {SLOWDOWN_TARGET:.0f} %)")


def read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


# ------------------------------------------------------------------------------ (b) CPU


def cpu_percent(pid: int, window: float) -> float:
    process = psutil.Process(pid)
    before = process.cpu_times()
    started = time.monotonic()
    time.sleep(window)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / (time.monotonic() - started)


def bench_cpu(root: Path, window: float) -> None:
    daemon = start_daemon(root, gpus=4, sim_env=sim_env(1.0, 1000))
    assert daemon.process is not None
    try:
        time.sleep(2)  # start-up work (imports, first GPU polls) is not the idle figure
        idle = cpu_percent(daemon.process.pid, window)
        task_ids = [f"cpu{i}" for i in range(4)]
        for task_id in task_ids:
            daemon.drop(f"{task_id}.json", job(daemon, task_id, epochs=10))
        wait_until(lambda: all(started(daemon, t) for t in task_ids), timeout=60, interval=0.1)
        for task_id in task_ids:  # a job that failed to start is shown, not hidden
            state = daemon.job_state(task_id) or {}
            if state.get("status") != "running":
                error = json.dumps(state.get("error"))[:500]
                print(f"    {task_id} did not start training: {state.get('status')}: {error}")
        busy = cpu_percent(daemon.process.pid, window)
        steps = sum(current_step(daemon, t) for t in task_ids)
        for task_id in task_ids:
            daemon.request("POST", f"/api/v1/training/stop/{task_id}?force=true")
    finally:
        daemon.stop()
        for task_id in [f"cpu{i}" for i in range(4)]:
            kill_marked(task_id)
    print(f"(b) daemon CPU over {window:.0f} s (user+system / wall, one core = 100 %)")
    print(f"    idle daemon, no job (baseline):          {idle:6.2f} %")
    print(f"    4 jobs at 1 step/s on 4 GPUs:            {busy:6.2f} %", end="")
    print(f"   (target <= {CPU_TARGET} %)")
    print(f"    steps seen by the end of the window: {steps}")


def training(daemon: DaemonProcess, task_id: str) -> bool:
    return current_step(daemon, task_id) >= 1


def started(daemon: DaemonProcess, task_id: str) -> bool:
    """Training, or ended before it could (shown by bench_cpu, never waited on for ever)."""
    state = daemon.job_state(task_id) or {}
    return training(daemon, task_id) or state.get("status") in ("failed", "stopped", "completed")


def current_step(daemon: DaemonProcess, task_id: str) -> int:
    state = daemon.job_state(task_id) or {}
    return int((state.get("progress") or {}).get("current_step") or 0)


def kill_marked(task_id: str) -> None:
    for process in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if process.environ().get("DPD_TASK_ID") == task_id:
                os.kill(process.pid, signal.SIGKILL)


# ------------------------------------------------------------------------- (c) lines/s


def bench_lines(root: Path, steps: int) -> None:
    daemon = start_daemon(root, gpus=1, sim_env=sim_env(0.0, steps))
    try:
        daemon.drop("fast.json", job(daemon, "fast", epochs=1))
        log = daemon.spool / "jobs" / "fast" / "train.log"
        first = wait_until(lambda: size(log) > 0 and time.time(), timeout=30)
        exit_file = daemon.spool / "jobs" / "fast" / "exit.json"
        wait_until(exit_file.exists, timeout=120)
        last_write = log.stat().st_mtime
        total = size(log)
        wait_until(lambda: offset(daemon) >= total, timeout=60)
        caught_up = time.time()
        state = wait_terminal(daemon, "fast", timeout=30)
    finally:
        daemon.stop()
    lines = log.read_bytes().count(b"\n")
    writing = max(last_write - first, 1e-6)
    following = caught_up - first
    print(f"(c) a trainer printing {steps} steps as fast as it can: {lines} lines, {total} bytes")
    print(f"    trainer writing rate (baseline):         {lines / writing:10.0f} lines/s")
    print(f"    daemon, first line -> log_offset at EOF: {lines / following:10.0f} lines/s")
    print(f"    lag after the last write:                {caught_up - last_write:10.3f} s")
    print(f"    outcome {state['status']}, current_step {current_step_of(state)}")


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def offset(daemon: DaemonProcess) -> int:
    return int((daemon.job_state("fast") or {}).get("log_offset") or 0)


def current_step_of(state: dict[str, Any]) -> int:
    return int((state.get("progress") or {}).get("current_step") or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--lines", type=int, default=20000, help="steps of the fast trainer")
    parser.add_argument("--only", choices=("wall", "cpu", "lines"))
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, a few seconds: figures, no targets"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.steps, args.window, args.lines = 1, 40, 2.0, 2000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.only in (None, "wall"):
            bench_wall(root / "wall", args.runs, args.steps)
        if args.only in (None, "cpu"):
            bench_cpu(root / "cpu", args.window)
        if args.only in (None, "lines"):
            bench_lines(root / "lines", args.lines)


if __name__ == "__main__":
    main()
