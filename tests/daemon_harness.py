"""Run a real ``dpd serve`` in a temporary directory, the way an operator would.

Used by every integration test: it writes a dpd.toml, starts ``python -m dpd serve`` as a
subprocess, waits until /healthz answers, and stops it (SIGTERM, or SIGKILL for crash tests).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import tomlkit

from tests.waiting import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DaemonProcess:
    def __init__(self, root: Path, overrides: dict[str, dict[str, Any]] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.data = root / "data"
        self.spool = root / "spool"
        self.config_path = root / "dpd.toml"
        self.stderr_path = root / "dpd.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        config: dict[str, dict[str, Any]] = {
            "daemon": {
                "node": "test-node",
                "spool_dir": str(self.spool),
                "state_dir": str(root / "state"),
                "storage_root": str(self.data),
                "output_root": str(self.data / "training_runs"),
                "models_root": str(self.data / "models"),
                "preprocessed_root": str(self.data / "preprocessed"),
                "data_roots": [str(self.data)],
                "log_level": "DEBUG",
            },
            "http": {"host": "127.0.0.1", "port": self.port},
            "auth": {"enabled": False},
            "gpus": {"backend": "static", "monitor_interval": 0.5},
        }
        for table, values in (overrides or {}).items():
            config.setdefault(table, {}).update(values)
        self.config = config
        self.data.mkdir(parents=True, exist_ok=True)

    @property
    def incoming(self) -> Path:
        return self.spool / "incoming"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> DaemonProcess:
        low, high = self.config.get("trainer", {}).get("master_port_range", [29500, 29999])
        while low <= self.port <= high:  # dpd refuses an HTTP port among the master ports
            self.port = free_port()
        self.config["http"]["port"] = self.port
        self.config_path.write_text(tomlkit.dumps(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_", "NOTIFY_"))}
        env.update(self.env)
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dpd", "serve", "--config", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
        if wait:
            wait_for(self.healthy, timeout=20)
        return self

    def healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"dpd exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"dpd did not stop within {timeout} s:\n{self.log()}") from None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def drop(self, name: str, document: dict[str, Any] | str) -> Path:
        """Write like a careful user: a dot-name first, then rename into place."""
        text = document if isinstance(document, str) else json.dumps(document)
        temporary = self.incoming / f".{name}.tmp"
        temporary.write_text(text)
        final = self.incoming / name
        temporary.rename(final)
        return final

    def job_state(self, task_id: str) -> dict[str, Any] | None:
        path = self.spool / "jobs" / task_id / "state.json"
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, ValueError):
            return None

    def job_ids(self) -> list[str]:
        jobs = self.spool / "jobs"
        return sorted(n for n in os.listdir(jobs) if not n.startswith(".")) if jobs.exists() else []

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


def job_processes(task_id: str) -> list[int]:
    """Live processes whose environment names the task (the trainer's marker)."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.environ().get("DPD_TASK_ID") == task_id:
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_daemons(daemons: list[DaemonProcess]) -> None:
    """SIGKILL the daemons, then whatever their jobs left running (trainings outlive dpd)."""
    for daemon in daemons:
        daemon.stop(signal.SIGKILL)
    for task_id in {t for d in daemons for t in d.job_ids()}:
        for pid in job_processes(task_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
