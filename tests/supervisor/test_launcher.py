"""The launcher against real processes: spawn, adopt after a daemon restart, staged stops,
strays found by the marker, PID reuse. Every test checks no process of its job survives."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from dpd.supervisor import proctree
from dpd.supervisor.launcher import (
    LaunchFailed,
    LaunchSpec,
    RunAlreadyLaunched,
    ShimInfo,
    ShimLauncher,
    build_trainer_command,
    build_trainer_env,
    kill_marked,
)
from dpd.supervisor.shim import MARKER, JobMark
from tests.waiting import in_thread, wait_until

REPO = Path(__file__).resolve().parents[2]


def job_processes(task_id: str) -> list[int]:
    """Processes carrying the task id (unique per test), whatever their job directory."""
    return proctree.processes_with_env(MARKER, task_id)


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


@pytest.fixture
def task_id() -> Iterator[str]:
    task = f"test-{uuid4().hex[:12]}"
    yield task
    left = job_processes(task)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the job left behind: {left}"


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    path = tmp_path / "job"
    path.mkdir()
    return path


@pytest.fixture
def launcher() -> ShimLauncher:
    return ShimLauncher(
        start_timeout=8, term_timeout=1.0, kill_timeout=5, orphan_grace=0.3, shim_term_grace=0.5
    )


def make_spec(task_id: str, job_dir: Path, command: list[str], run: int = 1) -> LaunchSpec:
    env = build_trainer_env(os.environ, {"NCCL_P2P_DISABLE": "1"})  # the launcher marks it
    return LaunchSpec(task_id, run, command, job_dir, env, job_dir / "train.log", job_dir)


WAIT_FOR_GO = "import os, time\nwhile not os.path.exists({go!r}): time.sleep(0.02)"


def log_text(job_dir: Path) -> str:
    return (job_dir / "train.log").read_text()


# ---------------------------------------------------------------- pure: command and env


def test_command_follows_design_order() -> None:
    command = build_trainer_command(
        "deepspeed", Path("/opt/dp"), [2, 3], 29512, Path("/spool/jobs/t/config.toml"), None
    )
    assert command == [
        "deepspeed",
        "--include",
        "localhost:2,3",
        "--master_port=29512",
        "/opt/dp/train.py",
        "--deepspeed",
        "--config",
        "/spool/jobs/t/config.toml",
        "--master_port=29512",
    ]


def test_command_splits_launcher_and_names_resume_run() -> None:
    command = build_trainer_command(
        "python3 /sim/deepspeed.py", Path("/d"), [0], 29500, Path("/c.toml"), "20250101_00-00-00"
    )
    assert command[:2] == ["python3", "/sim/deepspeed.py"]
    assert command[-2:] == ["--resume_from_checkpoint", "20250101_00-00-00"]


@pytest.mark.parametrize(
    ("deepspeed", "gpus", "port", "resume"),
    [
        ("", [0], 29500, None),
        ("deepspeed", [], 29500, None),
        ("deepspeed", [-1], 29500, None),
        ("deepspeed", [0], 0, None),
        ("deepspeed", [0], 29500, "../other"),
        ("deepspeed", [0], 29500, ""),
    ],
)
def test_command_rejects_bad_input(
    deepspeed: str, gpus: list[int], port: int, resume: str | None
) -> None:
    with pytest.raises(ValueError):
        build_trainer_command(deepspeed, Path("/d"), gpus, port, Path("/c.toml"), resume)


def test_env_drops_systemd_and_daemon_variables() -> None:
    base = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/notify",
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1",
        "CUDA_VISIBLE_DEVICES": "0",
        "DPD_API_KEY": "secret",
        "API_SECRET_KEY": "secret",
    }
    mark = JobMark("t-1", "/var/spool/dpd/jobs/t-1")
    env = build_trainer_env(base, {"NCCL_IB_DISABLE": "1", "CUDA_VISIBLE_DEVICES": "5"}, mark)
    assert env == {
        "PATH": "/usr/bin",
        "NCCL_IB_DISABLE": "1",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "DPD_TASK_ID": "t-1",
        "DPD_JOB_DIR": "/var/spool/dpd/jobs/t-1",
    }


# ---------------------------------------------------------------- spawn and exit status


async def test_spawn_records_exit_code_and_runs_detached(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    script = """
        import os, stat, sys
        print("cwd", os.getcwd())
        print("stdout_is_file", stat.S_ISREG(os.fstat(1).st_mode))
        print("stdin", repr(sys.stdin.read()))
        me = os.getpid()
        print("pgid_is_pid", os.getpgid(0) == me, "sid_is_pid", os.getsid(0) == me)
        print("env", os.environ["DPD_TASK_ID"], os.environ["CUDA_DEVICE_ORDER"])
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """
    spec = make_spec(task_id, job_dir, py(script))
    spec = LaunchSpec(**{**spec.__dict__, "cwd": tmp_path})
    info = await launcher.spawn(spec)
    assert info.trainer_pgid == info.trainer_pid and info.run == 1
    shim = await asyncio.to_thread(proctree.read_stat, info.shim_pid)
    assert shim is None or shim.ppid != os.getpid()
    status = await launcher.wait_exit(info, timeout=5)
    assert (status.returncode, status.signal, status.run) == (3, None, 1)
    assert status.reason == "exited with code 3"
    log = log_text(job_dir)
    assert f"cwd {tmp_path}" in log
    assert "stdout_is_file True" in log and "stdin ''" in log and "to stderr" in log
    assert "pgid_is_pid True sid_is_pid True" in log
    assert f"env {task_id} PCI_BUS_ID" in log
    assert json.loads((job_dir / "launch.json").read_text())["command"] == spec.command
    assert (job_dir / "launch.json").stat().st_mode & 0o777 == 0o600


async def test_scope_command_wraps_the_shim(task_id: str, job_dir: Path) -> None:
    scoped = ShimLauncher(scope_command=["env", "SCOPE_UNIT=dpd-job-{task_id}-{run}"])
    info = await scoped.spawn(make_spec(task_id, job_dir, ["sleep", "60"]))
    assert await asyncio.to_thread(
        proctree.has_env, info.shim_pid, "SCOPE_UNIT", f"dpd-job-{task_id}-1"
    )
    status = await scoped.stop(info, graceful=False, run_dir=None, training=False, timeout=0)
    assert status.signal == signal.SIGKILL


async def test_signal_death_is_recorded(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, py("import os; os.abort()")))
    status = await launcher.wait_exit(info, timeout=5)
    assert (status.returncode, status.signal) == (None, signal.SIGABRT)
    assert "SIGABRT" in status.reason


async def test_unstartable_command_fails_the_launch(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    with pytest.raises(LaunchFailed, match="could not start the trainer"):
        await launcher.spawn(make_spec(task_id, job_dir, ["/nonexistent/deepspeed"]))


async def test_a_run_is_never_launched_twice(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    wait_for_go = py(
        f"import os, time\nwhile not os.path.exists({str(job_dir / 'go')!r}): time.sleep(0.02)"
    )
    info = await launcher.spawn(make_spec(task_id, job_dir, wait_for_go))
    with pytest.raises(RunAlreadyLaunched):  # a shim is running
        await launcher.spawn(make_spec(task_id, job_dir, wait_for_go, run=2))
    (job_dir / "go").touch()
    await launcher.wait_exit(info, timeout=5)
    with pytest.raises(RunAlreadyLaunched):  # run 1 has ended: it is not started again
        await launcher.spawn(make_spec(task_id, job_dir, wait_for_go))
    second = await launcher.spawn(make_spec(task_id, job_dir, py("pass"), run=2))
    assert (await launcher.wait_exit(second, timeout=5)).run == 2


# ---------------------------------------------------------------- outliving the daemon


async def test_a_new_launcher_adopts_the_live_shim(task_id: str, job_dir: Path) -> None:
    go = job_dir / "go"
    first = ShimLauncher()
    script = WAIT_FOR_GO.format(go=str(go)) + "\nraise SystemExit(7)"
    info = await first.spawn(make_spec(task_id, job_dir, py(script)))
    del first
    gc.collect()
    restarted = ShimLauncher()
    assert await asyncio.to_thread(restarted.adopt, job_dir) == info
    found = await restarted.reattach(job_dir)
    assert (found.kind, found.info) == ("alive", info)
    go.touch()
    status = await restarted.wait_exit(info, timeout=5)
    assert status.returncode == 7


DAEMON = """
import asyncio, json, os, sys
from pathlib import Path
from dpd.supervisor.launcher import LaunchSpec, ShimLauncher, build_trainer_env

async def main() -> None:
    job_dir, task_id, go = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    script = f"import os, time\\nwhile not os.path.exists({go!r}): time.sleep(0.02)\\nprint('done')"
    env = build_trainer_env(os.environ, {})
    spec = LaunchSpec(task_id, 1, [sys.executable, "-c", script], job_dir, env,
                      job_dir / "train.log", job_dir)
    info = await ShimLauncher().spawn(spec)
    print(json.dumps(info.as_dict()), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_kill_9_of_the_daemon_does_not_stop_the_training(task_id: str, job_dir: Path) -> None:
    go = job_dir / "go"
    daemon = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", DAEMON, str(job_dir), task_id, str(go)),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert daemon.stdout is not None
    line = await asyncio.wait_for(daemon.stdout.readline(), 10)
    info = ShimInfo.from_dict(json.loads(line))
    daemon.kill()
    await daemon.wait()
    assert await asyncio.to_thread(
        proctree.is_same_process, info.trainer_pid, info.trainer_start_time
    )
    go.touch()  # the trainer finishes while no daemon watches
    await wait_until(in_thread(lambda: (job_dir / "exit.json").exists()))
    found = await ShimLauncher().reattach(job_dir)
    assert found.kind == "exited" and found.exit is not None
    assert found.exit.returncode == 0 and found.exit.run == 1
    assert "done" in log_text(job_dir)


async def test_a_killed_shim_makes_the_run_lost_and_its_strays_are_swept(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, ["sleep", "60"]))
    os.kill(info.shim_pid, signal.SIGKILL)
    await wait_until(in_thread(lambda: not launcher.is_alive(info)))
    found = await launcher.reattach(job_dir)
    assert found.kind == "lost" and found.exit is not None
    assert "shim vanished" in found.exit.reason and found.exit.leftovers_killed == 1
    assert await asyncio.to_thread(job_processes, task_id) == []


async def test_a_shim_from_another_boot_is_lost(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    me = await asyncio.to_thread(proctree.start_time, os.getpid())
    record = {
        "task_id": task_id,
        "run": 1,
        "boot_id": "00000000-0000-0000-0000-000000000000",
        "shim_pid": os.getpid(),
        "shim_start_time": me,
        "trainer_pid": os.getpid(),
        "trainer_pgid": os.getpgid(0),
        "trainer_start_time": me,
        "started_at": 0.0,
    }
    (job_dir / "shim.json").write_text(json.dumps(record))
    assert await asyncio.to_thread(launcher.adopt, job_dir) is None
    found = await launcher.reattach(job_dir)
    assert found.kind == "lost" and found.exit is not None and "rebooted" in found.exit.reason


async def test_pid_reuse_never_fools_adopt_or_stop(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    unrelated = await asyncio.create_subprocess_exec("sleep", "30", start_new_session=True)
    try:
        real_start = await asyncio.to_thread(proctree.start_time, unrelated.pid)
        assert real_start is not None
        record = {
            "task_id": task_id,
            "run": 1,
            "boot_id": await asyncio.to_thread(proctree.boot_id),
            "shim_pid": unrelated.pid,
            "shim_start_time": real_start + 1,
            "trainer_pid": unrelated.pid,
            "trainer_pgid": unrelated.pid,
            "trainer_start_time": real_start + 1,
            "started_at": 0.0,
        }
        (job_dir / "shim.json").write_text(json.dumps(record))
        assert await asyncio.to_thread(launcher.adopt, job_dir) is None
        info = ShimInfo.from_dict({**record, "job_dir": str(job_dir)})
        status = await launcher.stop(info, graceful=False, run_dir=None, training=False, timeout=0)
        assert status.returncode is None and "without recording" in status.reason
        assert (await launcher.reattach(job_dir)).kind == "lost"
        assert unrelated.returncode is None
        assert await asyncio.to_thread(proctree.start_time, unrelated.pid) == real_start
    finally:
        unrelated.kill()
        await unrelated.wait()


# ---------------------------------------------------------------- stop


SAVE_QUIT_TRAINER = """
import os, sys, time
run_dir = sys.argv[1]
os.makedirs(run_dir, exist_ok=True)
print("steps: 1 loss: 0.1", flush=True)
while not os.path.exists(os.path.join(run_dir, "save_quit")):
    time.sleep(0.02)
print("Manually quitting", flush=True)
"""

TERM_IGNORING_TRAINER = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print("got TERM", flush=True))
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


async def test_graceful_stop_while_training_uses_save_quit(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    command = [*py(SAVE_QUIT_TRAINER), str(run_dir)]
    info = await launcher.spawn(make_spec(task_id, job_dir, command))
    await wait_until(in_thread(lambda: "steps: 1" in log_text(job_dir)))
    status = await launcher.stop(info, graceful=True, run_dir=run_dir, training=True, timeout=5)
    assert (status.returncode, status.signal) == (0, None)
    assert "Manually quitting" in log_text(job_dir)
    assert not (run_dir / "save_quit").exists()


async def test_a_stop_of_an_ended_run_leaves_its_run_directory_alone(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    """A fleet host's run fenced while its daemon was paused: the daemon, back, stops a run
    that has ended, whose run directory the next attempt (another host) may use by now.
    Its ``save_quit`` there (a user's stop of that attempt) is neither touched nor removed;
    once, it was created and unlinked again, and the next attempt read it as a stop."""
    run_dir = tmp_path / "run"
    info = await launcher.spawn(make_spec(task_id, job_dir, ["true"]))
    await wait_until(in_thread(lambda: (job_dir / "exit.json").exists()))
    run_dir.mkdir()
    theirs = run_dir / "save_quit"
    theirs.write_text("")
    before = theirs.stat().st_mtime_ns
    status = await launcher.stop(info, graceful=True, run_dir=run_dir, training=True, timeout=5)
    assert status.returncode == 0
    assert theirs.exists() and theirs.stat().st_mtime_ns == before


async def test_graceful_stop_before_training_sends_sigterm(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, ["sleep", "60"]))
    status = await launcher.stop(info, graceful=True, run_dir=tmp_path, training=False, timeout=5)
    assert status.signal == signal.SIGTERM
    assert not (tmp_path / "save_quit").exists()


async def test_graceful_stop_escalates_to_sigterm_then_sigkill(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, py(TERM_IGNORING_TRAINER)))
    await wait_until(in_thread(lambda: "ready" in log_text(job_dir)))
    started = time.monotonic()
    status = await launcher.stop(info, graceful=True, run_dir=tmp_path, training=True, timeout=0.3)
    assert status.signal == signal.SIGKILL
    assert "got TERM" in log_text(job_dir)  # SIGTERM came first, then SIGKILL
    assert time.monotonic() - started < 5


async def test_forced_stop_kills_at_once(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, py(TERM_IGNORING_TRAINER)))
    await wait_until(in_thread(lambda: "ready" in log_text(job_dir)))
    status = await launcher.stop(info, graceful=False, run_dir=None, training=True, timeout=60)
    assert status.signal == signal.SIGKILL
    assert "got TERM" not in log_text(job_dir)


async def test_stop_finds_a_setsid_grandchild_through_the_marker(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    command = ["sh", "-c", "setsid sleep 60 & sleep 60"]
    info = await launcher.spawn(make_spec(task_id, job_dir, command))
    await wait_until(in_thread(lambda: len(job_processes(task_id)) == 3))
    # one escapes the trainer's group, once its setsid has run (not at once under load)
    await wait_until(in_thread(lambda: len(process_groups(task_id)) == 2))
    status = await launcher.stop(info, graceful=True, run_dir=None, training=False, timeout=5)
    assert status.signal == signal.SIGTERM
    assert await asyncio.to_thread(job_processes, task_id) == []


def process_groups(task_id: str) -> set[int]:
    stats = (proctree.read_stat(pid) for pid in job_processes(task_id))
    return {stat.pgid for stat in stats if stat is not None}


@pytest.fixture
def neighbours(task_id: str, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Processes with the same task id as the test's job but not of it: one of another job
    directory (another dpd, a demo), one with the task id alone (an older dpd's trainer)."""
    other = {MARKER: task_id, "DPD_JOB_DIR": str(tmp_path / "other" / "jobs" / task_id)}
    started = {
        "elsewhere": subprocess.Popen(["sleep", "60"], env={**os.environ, **other}),
        "legacy": subprocess.Popen(["sleep", "60"], env={**os.environ, MARKER: task_id}),
    }
    yield started
    for process in started.values():
        process.kill()
        process.wait()


async def test_only_processes_of_this_job_directory_are_killed(
    launcher: ShimLauncher, task_id: str, job_dir: Path, neighbours: dict
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, ["sleep", "60"]))
    status = await launcher.stop(info, graceful=False, run_dir=None, training=False, timeout=5)
    assert status.signal == signal.SIGKILL
    assert neighbours["elsewhere"].poll() is None  # same task id, another job directory
    assert neighbours["legacy"].poll() == -signal.SIGKILL  # no directory marker: the task id
    assert await asyncio.to_thread(lambda: kill_marked(JobMark.of(task_id, job_dir))) == []
    assert neighbours["elsewhere"].poll() is None


def test_a_mark_without_a_job_directory_falls_back_to_the_task_id(
    task_id: str, neighbours: dict
) -> None:
    """Never realpath("") (the current directory): an unknown directory matches on the task
    id, as dpd did before directories were marked, rather than on nothing."""
    mark = JobMark.of(task_id, "")
    assert mark.job_dir == ""
    assert mark.processes() == sorted(p.pid for p in neighbours.values())


async def test_the_shim_leaves_a_job_of_the_same_task_id_elsewhere_alone(
    launcher: ShimLauncher, task_id: str, job_dir: Path, neighbours: dict
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, ["true"]))
    status = await launcher.wait_exit(info, timeout=8)
    assert status.returncode == 0
    assert status.leftovers_killed == 1  # the legacy one
    assert neighbours["elsewhere"].poll() is None


ORPHANING_RUNNER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print("worker", worker.pid, flush=True)
"""


async def test_the_shim_kills_workers_orphaned_by_the_runner(
    launcher: ShimLauncher, task_id: str, job_dir: Path
) -> None:
    info = await launcher.spawn(make_spec(task_id, job_dir, py(ORPHANING_RUNNER)))
    status = await launcher.wait_exit(info, timeout=8)
    assert status.returncode == 0 and status.leftovers_killed == 1
    assert await asyncio.to_thread(job_processes, task_id) == []


async def test_orphaned_workers_reparent_to_the_shim(task_id: str, job_dir: Path) -> None:
    patient = ShimLauncher(orphan_grace=30)
    info = await patient.spawn(make_spec(task_id, job_dir, py(ORPHANING_RUNNER)))
    await wait_until(in_thread(lambda: "worker" in log_text(job_dir)))
    worker = int(log_text(job_dir).split()[1])
    await wait_until(in_thread(lambda: proctree.read_stat(worker).ppid == info.shim_pid))  # type: ignore[union-attr]
    os.kill(worker, signal.SIGKILL)
    status = await patient.wait_exit(info, timeout=5)
    assert status.returncode == 0 and status.leftovers_killed == 0


# ---------------------------------------------------------------- with the stand-in trainer


SIMULATION = REPO / "dpd" / "simulation"
needs_simulation = pytest.mark.skipif(
    not (SIMULATION / "diffusion_pipe" / "train.py").exists(),
    reason="the stand-in trainer (dpd/simulation) is not there",
)
SIM_CONFIG = """
output_dir = '{out}'
dataset = '{dataset}'
epochs = 1000
micro_batch_size_per_gpu = 1
pipeline_stages = 1
gradient_accumulation_steps = 1
gradient_clipping = 1.0
warmup_steps = 0
save_every_n_epochs = 500
checkpoint_every_n_minutes = 30
activation_checkpointing = true
save_dtype = 'bfloat16'
caching_batch_size = 1
steps_per_print = 1
[model]
type = 'wan'
ckpt_path = '{models}'
dtype = 'bfloat16'
[adapter]
type = 'lora'
rank = 32
dtype = 'bfloat16'
[optimizer]
type = 'adamw_optimi'
lr = 2e-5
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stand_in_spec(task_id: str, job_dir: Path, tmp_path: Path, **knobs: str) -> LaunchSpec:
    """The daemon's real launch command, against the stand-in deepspeed and train.py."""
    data, out, models = tmp_path / "data", tmp_path / "out", tmp_path / "models"
    for folder in (data, out, models):
        folder.mkdir()
    (data / "a.png").write_bytes(b"\x89PNG")
    (data / "a.txt").write_text("a caption")
    (job_dir / "dataset.toml").write_text(
        f"resolutions = [64]\n[[directory]]\npath = '{data}'\nnum_repeats = 8\n"
    )
    config = SIM_CONFIG.format(out=out, dataset=job_dir / "dataset.toml", models=models)
    (job_dir / "config.toml").write_text(config)
    port = free_port()
    dp_dir = SIMULATION / "diffusion_pipe"
    deepspeed = f"{sys.executable} {SIMULATION / 'deepspeed.py'}"
    command = build_trainer_command(deepspeed, dp_dir, [0, 1], port, job_dir / "config.toml", None)
    sim_env = {"DPD_SIM_STEP_SECONDS": "0.1", "DPD_SIM_CACHE_SECONDS": "0", **knobs}
    env = build_trainer_env(os.environ, sim_env)
    return LaunchSpec(task_id, 1, command, dp_dir, env, job_dir / "train.log", job_dir)


@needs_simulation
async def test_stand_in_training_stops_gracefully_through_save_quit(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    info = await launcher.spawn(stand_in_spec(task_id, job_dir, tmp_path))
    await wait_until(in_thread(lambda: "steps: 2 " in log_text(job_dir)))
    run_dir = next(path for path in (tmp_path / "out").iterdir() if path.is_dir())
    status = await launcher.stop(info, graceful=True, run_dir=run_dir, training=True, timeout=5)
    assert (status.returncode, status.signal) == (0, None)
    assert "Manually quitting" in log_text(job_dir)
    assert await asyncio.to_thread(job_processes, task_id) == []


@needs_simulation
async def test_stand_in_workers_ignoring_sigterm_are_killed(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    knobs = {"DPD_SIM_IGNORE_SIGTERM": "1", "DPD_SIM_GRANDCHILD": "1"}
    info = await launcher.spawn(stand_in_spec(task_id, job_dir, tmp_path, **knobs))
    await wait_until(in_thread(lambda: "steps: 1 " in log_text(job_dir)))
    status = await launcher.stop(info, graceful=True, run_dir=None, training=False, timeout=5)
    assert status.signal == signal.SIGTERM  # the runner has no handler (reference §6.2)
    assert await asyncio.to_thread(job_processes, task_id) == []


@needs_simulation
async def test_stand_in_workers_orphaned_by_a_killed_launcher_are_cleaned(
    launcher: ShimLauncher, task_id: str, job_dir: Path, tmp_path: Path
) -> None:
    info = await launcher.spawn(stand_in_spec(task_id, job_dir, tmp_path))
    await wait_until(in_thread(lambda: "steps: 1 " in log_text(job_dir)))
    launch_b = await asyncio.to_thread(
        lambda: next(
            pid
            for pid in job_processes(task_id)
            if b"--dpd-sim-launch" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    )
    os.kill(launch_b, signal.SIGKILL)
    status = await launcher.wait_exit(info, timeout=8)
    assert status.returncode == 0  # B killed: A exits 0 (reference §6.3)
    assert status.leftovers_killed >= 2  # both workers
    assert await asyncio.to_thread(job_processes, task_id) == []
