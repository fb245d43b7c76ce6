"""The requeue policy's daemon side (FLEET.md §9.4): the fence contract a claim carries, the
daemon fence's lease test on a fake BOOTTIME, which runs it stops, the launch request a
requeue-mode fleet job's shim gets, the configuration that makes the margin hold, and the
agent's fence loop over a real spool."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from dpd.config import Config, FleetConfig, TrainerConfig, load_config
from dpd.errors import ConfigError
from dpd.fleet.agent import FleetAgent
from dpd.fleet.fence import claim_fence, lease_ran_out, to_fence
from dpd.fleet.records import Fence, FenceMode
from dpd.fleet.registry import boottime
from dpd.fleet.transitions import fence_wait
from dpd.spool.store import JobStore
from dpd.supervisor.runfiles import fence_order
from tests.fleet.test_startup import write_config
from tests.jobfiles import add_job, new_store


def config(node_loss: str = "requeue", **trainer: Any) -> Config:
    fleet = FleetConfig(enabled=True, node_loss=node_loss)
    return dataclasses.replace(
        Config(), fleet=fleet, trainer=dataclasses.replace(TrainerConfig(), **trainer)
    )


def test_claims_carry_the_owners_own_fence_contract() -> None:
    assert claim_fence(config("hold")) == Fence()  # hold: no deadline, never T10(b)
    fence = claim_fence(config())
    assert fence.mode is FenceMode.REQUEUE and fence.deadline_s == 300 + 1 + 60 + 35 + 10
    short = claim_fence(config(stop_timeout=2, term_timeout=1, kill_timeout=1))
    assert short.deadline_s == 300 + 1 + 2 + 1 + 1
    # a reaper waits until the deadline plus margin has passed since the key expired
    assert fence_wait(fence, 600, 60, 15) == max(600, 406 + 60 - 15)


def test_the_daemon_fence_fires_only_once_the_lease_is_older_than_fence_after() -> None:
    assert not lease_ran_out(1000.0, 1000.0 + 300, 300)
    assert lease_ran_out(1000.0, 1000.0 + 300.01, 300)
    assert lease_ran_out(None, 10.0, 300)  # no lease at all: fenced


def test_only_fleet_runs_supervised_here_are_fenced() -> None:
    states = [
        {"task_id": "f1", "fleet": {"attempt": 1}},
        {"task_id": "f2", "fleet": {"attempt": 2}},  # not running here
        {"task_id": "local", "status": "running"},  # a local job: not the fleet's
    ]
    assert to_fence(states, ["f1", "local"]) == ["f1"]


def test_a_requeue_mode_fleet_jobs_shim_gets_the_lease_and_the_stop_timings() -> None:
    cfg = config(stop_timeout=7, term_timeout=3, kill_timeout=2)
    fleet_job = {"task_id": "t", "fleet": {"attempt": 1}, "output_dir": "/out/t"}
    order = fence_order(cfg, fleet_job)
    assert order is not None
    assert order.lease == str(cfg.daemon.state_dir / "fleet" / "lease")
    assert (order.after, order.check, order.stop_timeout) == (300, 1, 7)
    assert (order.term_timeout, order.kill_timeout, order.output_dir) == (3, 2, "/out/t")
    assert order.deadline == claim_fence(cfg).deadline_s
    assert fence_order(config("hold"), fleet_job) is None
    assert fence_order(cfg, {"task_id": "t", "output_dir": "/o"}) is None  # not a fleet job


def test_requeue_mode_refuses_timings_that_break_the_margin(tmp_path: Path) -> None:
    tables: dict[str, Any] = {
        "daemon": {"node": "gpu-a"},
        "nats": {"url": "nats://127.0.0.1:4222", "jetstream": True},
        "fleet": {"enabled": True, "node_loss": "requeue", "node_ttl": 3, "heartbeat_interval": 0.5,
                  "fence_after": 4, "fence_check": 1, "fence_margin": 1, "lost_after": 8},
        "trainer": {"stop_timeout": 2, "term_timeout": 1, "kill_timeout": 1},
    }  # fmt: skip
    loaded = load_config(write_config(tmp_path, tables), environ={})  # 10 < 11
    assert loaded.trainer.term_timeout == 1 and loaded.trainer.kill_timeout == 1
    tables["trainer"]["term_timeout"] = 35  # the launcher's default SIGTERM wait: 44 >= 11
    with pytest.raises(ConfigError, match=re.escape("trainer.term_timeout + trainer.kill")):
        load_config(write_config(tmp_path, tables), environ={})
    tables["trainer"]["term_timeout"] = 0
    with pytest.raises(ConfigError, match="term_timeout"):
        load_config(write_config(tmp_path, tables), environ={})


# ------------------------------------------------- the daemon fence's loop, wired to a store


class Runs:
    """The supervisor as the fence loop sees it: which runs it has, and fence calls."""

    def __init__(self, running: list[str]) -> None:
        self.running = running
        self.fenced: list[str] = []

    async def fence(self, task_id: str) -> bool:
        self.fenced.append(task_id)
        return True


class Beat:
    def __init__(self, last_ok: float | None) -> None:
        self.last_ok = last_ok


def spool_with_two_jobs(root: Path) -> JobStore:
    store, data = new_store(root)
    for task_id in ("fleet-job", "local-job"):
        add_job(store, data, task_id)
    store.update_state("fleet-job", {"fleet": {"attempt": 1, "stage": "starting", "node": "a"}})
    return store


async def fence_loop_fences(tmp_path: Path, last_ok: float | None) -> list[str]:
    """Run the agent's fence loop over a real spool (a fleet job and a local job, both
    running here) for a few checks; the runs it fenced."""
    store = await asyncio.to_thread(spool_with_two_jobs, tmp_path)
    cfg = dataclasses.replace(config(), fleet=FleetConfig(
        enabled=True, node_loss="requeue", fence_after=5, fence_check=0.01))  # fmt: skip
    daemon = dataclasses.replace(cfg.daemon, state_dir=tmp_path / "state")  # no lease file
    cfg = dataclasses.replace(cfg, daemon=daemon)
    runs = Runs(["fleet-job", "local-job"])
    agent = await asyncio.to_thread(FleetAgent, cfg, store, runs, None, lambda e: None)  # type: ignore[arg-type]
    agent.heartbeat = Beat(last_ok)  # type: ignore[assignment]
    loop = asyncio.create_task(agent._fence_loop())
    try:
        await asyncio.sleep(0.2)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    return runs.fenced


async def test_the_fence_loop_stops_the_fleet_runs_once_the_lease_ran_out(
    tmp_path: Path,
) -> None:
    assert await fence_loop_fences(tmp_path / "fresh", boottime()) == []
    assert await fence_loop_fences(tmp_path / "stale", boottime() - 6) == ["fleet-job"]  # once
    assert await fence_loop_fences(tmp_path / "none", None) == ["fleet-job"]  # no lease file
