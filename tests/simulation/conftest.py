"""Running the simulated launcher and trainer as real process trees in tmp dirs."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpd.simulation import simulation_paths
from tests.waiting import wait_for

FAST = {
    "DPD_SIM_STEP_SECONDS": "0.02",
    "DPD_SIM_CACHE_SECONDS": "0.02",
    "DPD_SIM_STARTUP_SECONDS": "0",
    "DPD_SIM_POLL_SECONDS": "0.1",
}

CONFIG = """\
output_dir = '{out}'
dataset = '{dataset}'
epochs = {epochs}
micro_batch_size_per_gpu = 1
gradient_accumulation_steps = 1
{extra}
[model]
type = 'wan'
ckpt_path = '/models/Wan2.1-T2V-1.3B'
dtype = 'bfloat16'
[adapter]
type = 'lora'
rank = 16
dtype = 'bfloat16'
[optimizer]
type = 'adamw_optimi'
lr = 2e-5
betas = [0.9, 0.99]
"""


@dataclass
class Job:
    """A job's files: `config.toml`, `dataset.toml`, a dataset dir and an output dir."""

    root: Path
    config: Path
    dataset: Path
    data: Path
    out: Path
    gpu_dir: Path

    def run_dirs(self) -> list[Path]:
        return sorted(self.out.iterdir()) if self.out.exists() else []


def write_job(
    root: Path,
    images: int = 4,
    epochs: int = 2,
    extra: str = "save_every_n_epochs = 1",
    dataset_extra: str = "resolutions = [512]",
) -> Job:
    data = root / "data"
    data.mkdir(parents=True)
    for i in range(images):
        (data / f"img{i}.png").write_bytes(b"not really a png")
        (data / f"img{i}.txt").write_text(f"caption {i}")
    dataset = root / "dataset.toml"
    dataset.write_text(f"{dataset_extra}\n[[directory]]\npath = '{data}'\n")
    out = root / "out"
    config = root / "config.toml"
    config.write_text(CONFIG.format(out=out, dataset=dataset, epochs=epochs, extra=extra))
    return Job(root, config, dataset, data, out, root / "gpus")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


class Sim:
    """One launch of the runner (process A) in its own session, output captured live."""

    def __init__(self, job: Job, train_args: list[str], launcher_args: list[str], env: dict):
        command, pipe_dir = simulation_paths()
        self.job = job
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DPD_SIM_")}
        full_env.pop("CUDA_VISIBLE_DEVICES", None)
        full_env.update(FAST, DPD_SIM_GPU_DIR=str(job.gpu_dir))
        full_env.update(env)
        argv = [*shlex.split(command), *launcher_args, "train.py", *train_args]
        self.proc = subprocess.Popen(
            argv,
            cwd=pipe_dir,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.stdout: list[str] = []
        self.stderr_chunks: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump_lines, daemon=True),
            threading.Thread(target=self._pump_err, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_lines(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.stdout.append(raw.decode().rstrip("\n"))

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(65536):  # type: ignore[attr-defined]
            self.stderr_chunks.append(chunk.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_chunks)

    def wait_line(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in list(self.stdout):
                if match := regex.search(line):
                    found.append(match)
                    return True
            return False

        wait_for(seen, timeout, what=f"stdout line {pattern!r}")
        return found[0]

    def wait_stderr(self, text: str, timeout: float = 5.0) -> None:
        wait_for(lambda: text in self.stderr, timeout, what=f"stderr text {text!r}")

    def finish(self, timeout: float = 8.0) -> int:
        """A's exit status; all output is collected when no descendant keeps the pipes."""
        code = self.proc.wait(timeout)
        if not group_members(self.proc.pid):
            for thread in self._threads:
                thread.join(timeout)
        return code

    def pid_of_worker(self, rank: int = 0) -> int:
        spawned = self.wait_line(rf"process (\d+) spawned with command: .*'--local_rank={rank}'")
        return int(spawned.group(1))

    def lines_matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.stdout if regex.search(line)]

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        wait_for(lambda: not group_members(self.proc.pid), 5, what="the process group to empty")
        if self.proc.poll() is None:
            self.proc.wait(5)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[object]:
    """launch(job, train_args=[...], launcher_args=[...], env={...}) -> Sim; everything
    still running at the end of the test is SIGKILLed."""
    started: list[Sim] = []

    def start(
        job: Job,
        train_args: list[str] | None = None,
        launcher_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ) -> Sim:
        port = port or free_port()
        args = ["--deepspeed", "--config", str(job.config), f"--master_port={port}"]
        sim = Sim(
            job,
            args + (train_args or []),
            launcher_args or ["--include", "localhost:0", f"--master_port={port}"],
            env or {},
        )
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.kill_group()
