"""A real ``dpd serve`` for the kit: its configuration, its process, and the process table.

The daemon runs as an operator would run it (``python -m dpd serve --config FILE``), on a
static configuration the kit writes. The kit reads its CPU time from /proc, kills it with
SIGKILL to test re-attachment, and finds the job's processes by the marker every process of a
job carries in its environment (``DPD_TASK_ID``). Linux only, standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gpu.api import Api, wait_until

MARKER = "DPD_TASK_ID"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Layout:
    """Where everything of one conformance run lives, under ``root``."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def config(self) -> Path:
        return self.root / "dpd.toml"

    @property
    def stderr(self) -> Path:
        return self.root / "dpd.stderr"

    def job_dir(self, task_id: str) -> Path:
        return self.spool / "jobs" / task_id


@dataclass(frozen=True)
class TrainerSetup:
    diffusion_pipe_dir: Path
    deepspeed: str  # a command line, split by dpd with shlex
    env: Mapping[str, str] = field(default_factory=dict)
    stop_timeout: float = 120.0


def dpd_config(
    layout: Layout, port: int, trainer: TrainerSetup, backend: str, master_ports: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """The static configuration: one data root, no auth, no NATS, the given GPU backend."""
    data = layout.data
    config: dict[str, dict[str, Any]] = {
        "daemon": {
            "node": "conformance",
            "spool_dir": str(layout.spool),
            "state_dir": str(layout.root / "state"),
            "storage_root": str(data),
            "output_root": str(data / "training_runs"),
            "models_root": str(data / "models"),
            "preprocessed_root": str(data / "preprocessed"),
            "data_roots": [str(data)],
            "log_level": "INFO",
        },
        "http": {"host": "127.0.0.1", "port": port},
        "auth": {"enabled": False},
        "gpus": {"backend": backend, "monitor_interval": 1},
        "trainer": {
            "diffusion_pipe_dir": str(trainer.diffusion_pipe_dir),
            "deepspeed": trainer.deepspeed,
            "env": dict(trainer.env),
            "master_port_range": list(master_ports),
            "stop_timeout": trainer.stop_timeout,
        },
    }
    if backend == "static":
        config["gpus"]["static"] = [{"name": "Simulated GPU 0", "memory_mb": 24576}]
    return config


def toml_text(config: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML for the shapes ``dpd_config`` makes: tables of scalars, lists, inline tables and
    arrays of tables (the standard library reads TOML but does not write it)."""
    lines: list[str] = []
    for table, values in config.items():
        arrays = {k: v for k, v in values.items() if _is_table_array(v)}
        lines.append(f"[{table}]")
        lines += [f"{key} = {_value(value)}" for key, value in values.items() if key not in arrays]
        for key, rows in arrays.items():
            for row in rows:
                lines.append(f"[[{table}.{key}]]")
                lines += [f"{k} = {_value(v)}" for k, v in row.items()]
        lines.append("")
    return "\n".join(lines)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


class Dpd:
    """One ``dpd serve`` process on ``layout``; restartable after a kill."""

    def __init__(
        self,
        layout: Layout,
        python: str,
        config: dict[str, dict[str, Any]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.python = python
        self.config = config
        self.env = dict(env or os.environ)
        self.process: subprocess.Popen[bytes] | None = None
        layout.config.write_text(toml_text(config))

    @property
    def api(self) -> Api:
        return Api(f"http://127.0.0.1:{self.config['http']['port']}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until /healthz answers; returns the seconds that took."""
        started = time.monotonic()
        with self.layout.stderr.open("ab") as stderr:
            self.process = subprocess.Popen(
                [self.python, "-m", "dpd", "serve", "--config", str(self.layout.config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self.env,
            )
        wait_until(self._healthy, timeout, "dpd to answer /healthz")
        return time.monotonic() - started

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.layout.stderr.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"dpd exited with {self.process.returncode}:\n{tail}")
        return self.api.healthy()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# ------------------------------------------------------------------ /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / os.sysconf("SC_CLK_TCK")


def job_pids(task_id: str) -> list[int]:
    """Live processes whose environment carries the job's marker."""
    wanted = f"{MARKER}={task_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0") and not _zombie(entry):
                found.append(int(entry.name))
    return sorted(found)


def _zombie(entry: Path) -> bool:
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def gpu_compute_pids(nvidia_smi: str = "nvidia-smi") -> list[int] | None:
    """The driver's compute processes on every GPU; None when nvidia-smi cannot say."""
    try:
        done = subprocess.run(
            [nvidia_smi, "--query-compute-apps=pid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [int(line) for line in done.stdout.split() if line.strip().isdigit()]
