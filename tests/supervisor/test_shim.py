"""The shim run directly (``python -m dpd.supervisor.shim``), as the launcher runs it, and its
pure helpers. The launcher-level behaviours are in test_launcher.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from dpd.supervisor import proctree
from dpd.supervisor.shim import (
    EXIT_ALREADY_RUNNING,
    EXIT_BAD_LAUNCH,
    EXIT_USAGE,
    MARKER,
    Launch,
    decode_wait_status,
    describe_end,
    resolve_executable,
)
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def task_id() -> Iterator[str]:
    task = f"test-{uuid4().hex[:12]}"
    yield task
    left = proctree.processes_with_env(MARKER, task)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the job left behind: {left}"


def write_launch(job_dir: Path, task_id: str, command: list[str]) -> None:
    env = {"PATH": os.environ["PATH"], MARKER: task_id}
    launch = {
        "task_id": task_id,
        "run": 1,
        "command": command,
        "cwd": str(job_dir),
        "env": env,
        "log_path": str(job_dir / "train.log"),
        "orphan_grace": 0.2,
        "term_grace": 0.2,
    }
    (job_dir / "launch.json").write_text(json.dumps(launch))


def run_shim(job_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dpd.supervisor.shim", str(job_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def read_json(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


# ---------------------------------------------------------------- pure helpers


def test_wait_status_decoding() -> None:
    assert decode_wait_status(3 << 8) == (3, None)
    assert decode_wait_status(signal.SIGKILL) == (None, signal.SIGKILL)
    assert describe_end(None, 9) == "killed by signal 9 (SIGKILL)"
    assert describe_end(241, None) == "exited with code 241"


def test_executable_is_resolved_on_the_trainers_path(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "deepspeed"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert resolve_executable("deepspeed", f"/nonexistent:{program.parent}", "/") == str(program)
    assert resolve_executable("./x.py", None, "/opt/dp") == "/opt/dp/./x.py"
    with pytest.raises(FileNotFoundError):
        resolve_executable("deepspeed", "/nonexistent", "/")


def test_launch_file_needs_a_command() -> None:
    base = {"task_id": "t", "run": 1, "cwd": "/", "env": {}, "log_path": "/l"}
    assert Launch.from_dict({**base, "command": ["x"]}).orphan_grace == 5.0
    with pytest.raises(ValueError):
        Launch.from_dict({**base, "command": []})


# ---------------------------------------------------------------- the process


def test_usage_and_bad_launch_file(tmp_path: Path) -> None:
    usage = subprocess.run(
        [sys.executable, "-m", "dpd.supervisor.shim"], capture_output=True, check=False
    )
    assert usage.returncode == EXIT_USAGE
    (tmp_path / "launch.json").write_text("{not json")
    assert run_shim(tmp_path).returncode == EXIT_BAD_LAUNCH
    assert not (tmp_path / "exit.json").exists()


def test_shim_detaches_records_and_refuses_a_twin(tmp_path: Path, task_id: str) -> None:
    go = tmp_path / "go"
    script = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)"
    write_launch(tmp_path, task_id, [sys.executable, "-c", script])
    first = run_shim(tmp_path)
    assert first.returncode == 0
    shim_pid, shim_start = map(int, first.stdout.split())
    assert proctree.is_same_process(shim_pid, shim_start)
    wait_for(lambda: (tmp_path / "shim.json").exists())
    record = read_json(tmp_path / "shim.json")
    assert (record["shim_pid"], record["shim_start_time"]) == (shim_pid, shim_start)
    assert record["trainer_pgid"] == record["trainer_pid"]
    assert record["boot_id"] == proctree.boot_id()
    twin = run_shim(tmp_path)
    assert twin.returncode == EXIT_ALREADY_RUNNING
    go.touch()
    wait_for(lambda: (tmp_path / "exit.json").exists())
    end = read_json(tmp_path / "exit.json")
    assert (end["returncode"], end["signal"], end["run"]) == (0, None, 1)
    wait_for(lambda: not proctree.is_same_process(shim_pid, shim_start))


def test_hup_and_int_are_ignored_term_is_forwarded(tmp_path: Path, task_id: str) -> None:
    # The trainer (a shell: Python would ignore SIGPIPE itself) reports its ignored signals.
    script = "grep SigIgn /proc/$$/status; exec sleep 60"
    write_launch(tmp_path, task_id, ["sh", "-c", script])
    shim_pid = int(run_shim(tmp_path).stdout.split()[0])
    log = tmp_path / "train.log"
    wait_for(lambda: log.exists() and "SigIgn" in log.read_text())
    ignored = int(log.read_text().split()[1], 16)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        assert not ignored & (1 << (signum - 1)), f"trainer inherits an ignored {signum!r}"
    # Pending together, lower numbers are delivered first: had SIGHUP or SIGINT ended the
    # shim, nobody would forward SIGTERM and record the end.
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        os.kill(shim_pid, signum)
    wait_for(lambda: (tmp_path / "exit.json").exists())
    assert read_json(tmp_path / "exit.json")["signal"] == signal.SIGTERM


def test_trainer_gets_exactly_the_launch_environment(tmp_path: Path, task_id: str) -> None:
    script = "import json, os; print(json.dumps(sorted(os.environ)))"
    write_launch(tmp_path, task_id, [sys.executable, "-c", script])
    run_shim(tmp_path)
    wait_for(lambda: (tmp_path / "exit.json").exists())
    names = json.loads((tmp_path / "train.log").read_text().splitlines()[-1])
    assert set(names) - {"LC_CTYPE"} == {"PATH", MARKER}  # Python may add LC_CTYPE


def test_orphans_ignoring_sigterm_are_killed_before_the_exit_is_recorded(
    tmp_path: Path, task_id: str
) -> None:
    worker = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"  # even out of the group and with its parent gone
        "    time.sleep(60)\n"
        "time.sleep(60)\n"
    )
    runner = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {worker!r}])\n"
    write_launch(tmp_path, task_id, [sys.executable, "-c", runner])
    run_shim(tmp_path)
    wait_for(lambda: (tmp_path / "exit.json").exists(), timeout=8)
    end = read_json(tmp_path / "exit.json")
    assert end["returncode"] == 0 and end["leftovers_killed"] == 2
    assert proctree.processes_with_env(MARKER, task_id) == []
