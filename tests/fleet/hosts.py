"""Three (or more) real ``dpd serve`` hosts in fleet mode on one machine (FLEET.md §13.2).

Each host is a ``DaemonProcess`` with its own spool, state dir, HTTP port, node name,
static GPUs, disjoint master ports and its own test boot and machine ids (they share one
kernel); all share one data and output root (the "NFS", ``filesystem_domain = "t"``) and the
3-node NATS cluster. The trainer is the stand-in of ``dpd.simulation``, which appends every
run's start and end to one ledger (``DPD_SIM_RUN_LEDGER``): the run oracle.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpd.simulation import simulation_paths
from tests.daemon_harness import DaemonProcess
from tests.fleet.natscluster import NatsCluster
from tests.jobfiles import job_document, make_data_root, own_dataset
from tests.ports import master_port_range
from tests.waiting import wait_for

FLEET_TIMING = {
    "filesystem_domain": "t",
    "node_ttl": 3.0,
    "heartbeat_interval": 0.5,
    "fence_after": 4.0,
    "fence_check": 1.0,
    "lost_after": 10.0,
    "fence_margin": 1.0,
    "rpc_timeout": 1.0,
}


class Fleet:
    """``hosts``: node name → number of (80 GB) static GPUs."""

    def __init__(
        self,
        cluster: NatsCluster,
        root: Path,
        hosts: Mapping[str, int],
        step_seconds: float = 0.02,
        base_port: int | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """``overrides``: table → keys merged into every host's ``[fleet]``/``[trainer]``."""
        self.cluster = cluster
        self.overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        self.root = root
        self.shared = make_data_root(root / "shared")
        self.ledger = root / "ledger"
        self.ledger.mkdir(parents=True, exist_ok=True)
        self.step_seconds = step_seconds
        # master ports: disjoint per host and per test run, below the ephemeral range
        self.base = base_port if base_port is not None else master_port_range(20 * 8)[0]
        self.hosts: dict[str, DaemonProcess] = {}
        for index, (name, gpus) in enumerate(hosts.items()):
            self.hosts[name] = self.make_host(name, gpus, index)

    def make_host(self, name: str, gpus: int, index: int, directory: str = "") -> DaemonProcess:
        """One host's daemon (not started); ``index`` picks its master ports."""
        deepspeed, dp_dir = simulation_paths()
        low = self.base + 20 * index
        step_seconds = self.step_seconds
        cluster = self.cluster
        host = DaemonProcess(
            self.root / (directory or name),
            {
                "daemon": {
                    "node": name,
                    "storage_root": str(self.shared),
                    "output_root": str(self.shared / "training_runs"),
                    "models_root": str(self.shared / "models"),
                    "preprocessed_root": str(self.shared / "preprocessed"),
                    "data_roots": [str(self.shared)],
                    "log_level": "INFO",
                },
                "gpus": {
                    "backend": "static",
                    "monitor_interval": 0.5,
                    "static": [
                        {"name": "Simulated 80GB GPU", "memory_mb": 81920} for _ in range(gpus)
                    ],
                },
                "trainer": {
                    "deepspeed": deepspeed,
                    "diffusion_pipe_dir": str(dp_dir),
                    "env": {
                        "DPD_SIM_STEP_SECONDS": str(step_seconds),
                        "DPD_SIM_CACHE_SECONDS": "0.02",
                        "DPD_SIM_POLL_SECONDS": "0.1",
                        "DPD_SIM_TERMINATE_SECONDS": "1",
                        "DPD_SIM_RUN_LEDGER": str(self.ledger),
                        "DPD_SIM_HOST": name,
                    },
                    "stop_timeout": 2,
                    "master_port_range": [low, low + 19],
                    **self.overrides.get("trainer", {}),
                },
                "nats": {"url": cluster.url_list, "jetstream": True},
                "ratelimit": {"training": "0"},  # bursts of submissions
                "fleet": {"enabled": True, **FLEET_TIMING, **self.overrides.get("fleet", {})},
            },
        )
        host.env = {
            "DPD_TEST_BOOT_ID": str(uuid.uuid4()),
            "DPD_TEST_MACHINE_ID": f"machine-{name}",
        }
        return host

    def __getitem__(self, name: str) -> DaemonProcess:
        return self.hosts[name]

    def up(self, timeout: float = 60) -> Fleet:
        """Start every host; return once each sees every host alive (registered and
        heartbeating, through its own watched tables)."""
        for host in self.hosts.values():
            host.start(wait=False)
        for host in self.hosts.values():
            wait_for(host.healthy, timeout=30)
        for host in self.hosts.values():
            wait_for(lambda h=host: self._sees_all(h), timeout=timeout)  # type: ignore[misc]
        return self

    def _sees_all(self, host: DaemonProcess) -> bool:
        code, body = host.request("GET", "/api/v1/fleet/nodes")
        if code != 200 or not body["data"]["ready"]:
            return False
        alive = {n["node"] for n in body["data"]["nodes"] if n["alive"]}
        return alive >= set(self.hosts)

    def down(self) -> None:
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                host.stop(timeout=20)

    def __enter__(self) -> Fleet:
        """``with Fleet(...) as hosts:`` every host up, and down again at the end."""
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    def job(self, **overrides: Any) -> dict[str, Any]:
        """A 1-epoch job on a dataset of its own, a copy of the shared one (one per task id):
        jobs on one dataset build its cache one at a time, fleet-wide (scheduler rule 6),
        which the scenarios here do not measure. ``dataset`` in ``overrides`` replaces it."""
        doc = job_document(self.shared, queue=True, **overrides)
        doc["config"]["epochs"] = 1
        if "dataset" not in overrides:
            own = own_dataset(self.shared, str(overrides.get("task_id") or uuid.uuid4().hex))
            doc["dataset"]["directories"][0]["path"] = str(own)
        return doc

    def local_jobs(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """task → [(host, state.json)] for every host's spool that holds the task."""
        out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for name, host in self.hosts.items():
            for task_id in host.job_ids():
                state = host.job_state(task_id)
                if state is not None:
                    out.setdefault(task_id, []).append((name, state))
        return out

    def runs(self) -> list[Run]:
        return read_ledger(self.ledger / "ledger.jsonl")


@dataclass(frozen=True)
class Run:
    task: str
    host: str
    pid: int
    start: float
    end: float | None
    completed: bool
    violation: bool


def read_ledger(path: Path) -> list[Run]:
    """The run oracle's ledger as runs (a start without an end is a run still going)."""
    if not path.exists():
        return []
    started: dict[int, dict[str, Any]] = {}
    runs: list[Run] = []
    violations: set[int] = set()
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        pid = int(entry["pid"])
        if entry["kind"] == "violation":
            violations.add(pid)
        elif entry["kind"] == "start":
            started[pid] = entry
        elif entry["kind"] == "end" and pid in started:
            s = started.pop(pid)
            runs.append(
                Run(s["task"], s["host"], pid, s["t"], entry["t"], bool(entry["completed"]),
                    pid in violations)
            )  # fmt: skip
    for pid, s in started.items():
        runs.append(Run(s["task"], s["host"], pid, s["t"], None, False, pid in violations))
    return runs


def duplicates(runs: list[Run]) -> dict[str, list[Run]]:
    """Tasks with more than one run, or any run that found another holding the task."""
    per_task: dict[str, list[Run]] = {}
    for run in runs:
        per_task.setdefault(run.task, []).append(run)
    return {t: rs for t, rs in per_task.items() if len(rs) > 1 or any(r.violation for r in rs)}
