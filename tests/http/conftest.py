"""A real daemon in the test's own event loop, listening on 127.0.0.1, and a small client.

``make_api`` builds ``dpd.daemon.Daemon`` from a configuration written for the test (static
GPUs, the stand-in trainer, state under tmp_path), runs its real start-up (recovery, monitor,
supervisor, HTTP server on a free port) and shuts it down afterwards, stopping any training.
Requests go through aiohttp's client over real TCP, so every middleware, the auth, the rate
limiter and the error mapping are the production ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dpd.config import (
    AuthConfig,
    Config,
    DaemonConfig,
    GpusConfig,
    HttpConfig,
    RateLimit,
    RateLimitConfig,
    StaticGpu,
    TrainerConfig,
)
from dpd.daemon import Daemon
from dpd.simulation import simulation_paths
from tests.jobfiles import job_document, make_data_root
from tests.ports import master_port_range

BOOTSTRAP = "bootstrap-admin-key-for-tests"
UNLIMITED = RateLimitConfig(*(RateLimit(0, 0) for _ in dataclasses.fields(RateLimitConfig)))


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any
    text: str


@dataclass
class Api:
    daemon: Daemon
    session: aiohttp.ClientSession
    data_root: Path
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def key(self, *permissions: str, user: str = "tester") -> str:
        raw, _ = self.daemon.keys.create(user, permissions)
        return raw

    async def call(
        self,
        method: str,
        path: str,
        key: str | None = BOOTSTRAP,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        async with self.session.request(
            method, self.url + path, json=json, data=data, headers=sent
        ) as response:
            text = await response.text()
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            return Reply(response.status, body, response.headers, text)

    async def get(self, path: str, key: str | None = BOOTSTRAP, **kw: Any) -> Reply:
        return await self.call("GET", path, key, **kw)

    async def post(self, path: str, key: str | None = BOOTSTRAP, **kw: Any) -> Reply:
        return await self.call("POST", path, key, **kw)

    def job(self, **overrides: Any) -> dict[str, Any]:
        return job_document(self.data_root, **overrides)

    async def parked_job(self, task_id: str) -> dict[str, Any]:
        """A valid job that stays queued: it needs all of GPU 1's memory, and 1 MB of it is
        reported in use. For tests that need tasks in the store but no training."""
        monitor = self.daemon.services.monitor
        monitor.inventory.set_usage(1, 1)  # type: ignore[attr-defined]
        await monitor.poll_now()
        total = next(g.memory_total for g in monitor.latest if g.gpu_id == 1)
        return self.job(task_id=task_id, queue=True, min_memory_mb=total)


def make_config(root: Path, **tables: Any) -> Config:
    deepspeed, diffusion_pipe_dir = simulation_paths()
    data = root / "data"
    base = Config(
        daemon=DaemonConfig(
            node="test-node",
            spool_dir=root / "spool",
            state_dir=root / "state",
            storage_root=data,
            output_root=data / "training_runs",
            models_root=data / "models",
            preprocessed_root=data / "preprocessed",
            data_roots=[data],
            stop_jobs_on_shutdown=True,
        ),
        http=HttpConfig(host="127.0.0.1", port=0, max_body_kb=64),
        auth=AuthConfig(enabled=True, bootstrap_key=BOOTSTRAP),
        ratelimit=UNLIMITED,
        gpus=GpusConfig(
            backend="static",
            monitor_interval=0.2,
            static=[StaticGpu("Simulated RTX 4090", 24576), StaticGpu("Simulated A100", 81920)],
        ),
        trainer=TrainerConfig(
            deepspeed=deepspeed,
            diffusion_pipe_dir=diffusion_pipe_dir,
            env={"DPD_SIM_STEP_SECONDS": "0.2", "DPD_SIM_CACHE_SECONDS": "0.1"},
            stop_timeout=2,
            master_port_range=master_port_range(41),
        ),
        source="tests/http",
    )
    return dataclasses.replace(base, **tables)


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[MakeApi]:
    started: list[Api] = []

    async def start(prepare: Callable[[Daemon], None] | None = None, **tables: Any) -> Api:
        """``prepare`` may add routes to ``daemon.app`` before it starts (and freezes)."""
        root = tmp_path / f"d{len(started)}"
        config = make_config(root, **tables)
        make_data_root(config.daemon.data_roots[0])
        daemon = Daemon(config)
        if prepare is not None:
            prepare(daemon)
        await daemon.startup()
        api = Api(daemon, aiohttp.ClientSession(), config.daemon.data_roots[0])
        started.append(api)
        return api

    yield start
    for api in started:
        await api.session.close()
        await stop_every_job(api.daemon)
        await api.daemon.shutdown()


async def stop_every_job(daemon: Daemon, timeout: float = 10.0) -> None:
    """Force-stop every running job (a test's training need not end gracefully), including
    any the scheduler launches meanwhile; queued jobs stay queued (shutdown stops the
    scheduler). Stopping a queued job while the scheduler launches it is a race this
    teardown must not depend on."""
    supervisor = daemon.services.supervisor
    deadline = time.monotonic() + timeout
    while supervisor.running and time.monotonic() < deadline:
        for task_id in list(supervisor.running):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(supervisor.stop(task_id, force=True), 10)
        await asyncio.sleep(0.05)


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api()
