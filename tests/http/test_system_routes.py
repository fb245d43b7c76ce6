"""/system/overview, /metrics and /healthz on a real daemon; the exposition format checked
line by line against the Prometheus text format's grammar."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from collections.abc import Callable
from typing import Any

import psutil

from dpd import __version__
from dpd.daemon import Daemon
from dpd.http.prometheus import Family, escape_label, render
from dpd.services import SERVICES
from tests.http.conftest import Api, MakeApi
from tests.waiting import wait_until

SAMPLE_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? '
    r"(-?[0-9.e+]+|NaN|[+-]Inf)$"
)


class FakeNats:
    """The NATS bridge's observable surface: a ``status()`` dict."""

    def __init__(self, connected: bool) -> None:
        self.connected = connected

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "url": "nats://127.0.0.1:4222", "pending": 0}


async def test_overview_fields_and_figures(api: Api) -> None:
    reply = await api.get("/api/v1/system/overview", api.key("model_download"))
    assert reply.status == 200
    data = reply.body["data"]
    system = data["system"]
    assert system["cpu_count"] == psutil.cpu_count()
    assert 0 <= system["cpu_usage"] <= 100
    memory_mb = psutil.virtual_memory().total // (1024 * 1024)
    assert system["memory_total"] == memory_mb
    # each figure is rounded down to whole MB on its own
    assert 0 <= system["memory_total"] - system["memory_used"] - system["memory_available"] <= 1
    disk = psutil.disk_usage(str(api.daemon.config.daemon.storage_root))
    assert system["disk_total"] == disk.total // (1024 * 1024)
    assert abs(system["disk_free"] - disk.free // (1024 * 1024)) < 512
    assert data["gpus"] == {"total": 2, "available": 2, "busy": 0, "unknown": 0}
    assert data["tasks"]["total"] == 0 and data["tasks"]["queued"] == 0
    assert data["version"] == __version__
    assert 0 <= data["uptime"] < 60
    assert data["nats"] is None


def with_services(**changes: Any) -> Callable[[Daemon], None]:
    """A ``make_api`` preparation: the daemon's components with ``changes`` (they are frozen
    once built, so they are replaced before start-up)."""

    def prepare(daemon: Daemon) -> None:
        daemon.services = dataclasses.replace(daemon.services, **changes)
        daemon.app[SERVICES] = daemon.services

    return prepare


async def test_overview_counts_tasks_and_shows_nats(make_api: MakeApi) -> None:
    api = await make_api(with_services(nats=FakeNats(connected=True)))
    for name in ("a", "b"):
        reply = await api.post("/api/v1/training/start", json=await api.parked_job(name))
        assert reply.status == 201, reply.body
    data = (await api.get("/api/v1/system/overview")).body["data"]
    assert data["tasks"]["total"] == 2
    assert data["tasks"]["queued"] == 2
    assert data["nats"]["connected"] is True


async def test_overview_on_a_storage_root_not_created_yet(api: Api) -> None:
    shutil.rmtree(api.daemon.config.daemon.storage_root)
    reply = await api.get("/api/v1/system/overview")
    assert reply.status == 200 and reply.body["data"]["system"]["disk_total"] > 0


async def test_uptime_counts_from_start(make_api: MakeApi) -> None:
    api = await make_api(with_services(started_at=time.time() - 86400))
    assert (await api.get("/api/v1/system/overview")).body["data"]["uptime"] >= 86400


# ------------------------------------------------------------------ /metrics


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        assert SAMPLE_LINE.match(line), line
        selector, value = line.rsplit(" ", 1)
        samples[selector] = float(value)
    return samples


async def test_metrics_exposition(make_api: MakeApi) -> None:
    api = await make_api(with_services(nats=FakeNats(connected=False)))
    reply = await api.post("/api/v1/training/start", json=await api.parked_job("m1"))
    assert reply.status == 201
    metrics = await api.get("/metrics", key=None)
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(metrics.text)
    assert sum(v for k, v in samples.items() if k.startswith("dpd_jobs{")) == 1
    assert 'dpd_jobs{status="completed"}' in samples
    assert samples["dpd_queue_depth"] == samples['dpd_jobs{status="queued"}'] == 1
    gpu0 = 'gpu="0",name="Simulated RTX 4090"'
    assert samples[f"dpd_gpu_memory_total_bytes{{{gpu0}}}"] == 24576 * 1024 * 1024
    assert samples[f"dpd_gpu_up{{{gpu0}}}"] == 1
    assert f"dpd_gpu_memory_used_bytes{{{gpu0}}}" in samples
    assert samples["dpd_events_published_total"] >= 0
    assert samples["dpd_nats_configured"] == 1 and samples["dpd_nats_connected"] == 0
    assert samples[f'dpd_build_info{{node="test-node",version="{__version__}"}}'] == 1
    # every family is announced once, before its samples
    types = re.findall(r"^# TYPE (\S+) (gauge|counter)$", metrics.text, re.M)
    assert len(types) == len({name for name, _ in types})


async def test_events_published_counts_up(api: Api) -> None:
    before = parse_metrics((await api.get("/metrics", key=None)).text)
    await api.post("/api/v1/training/start", json=await api.parked_job("e1"))

    async def published_more() -> bool:
        after = parse_metrics((await api.get("/metrics", key=None)).text)
        return after["dpd_events_published_total"] > before["dpd_events_published_total"]

    await wait_until(published_more, interval=0.05)


def test_render_escapes_labels_and_formats_values() -> None:
    family = Family("x_total", "counter", "A help text.")
    family.add(3, name='a "quoted"\\ name\nnext')
    family.add(0.25)
    family.add(None)
    text = render([family])
    assert text.splitlines() == [
        "# HELP x_total A help text.",
        "# TYPE x_total counter",
        'x_total{name="a \\"quoted\\"\\\\ name\\nnext"} 3',
        "x_total 0.25",
    ]
    assert escape_label("plain") == "plain"
    assert all(SAMPLE_LINE.match(line) for line in text.splitlines()[2:])


async def test_healthz(api: Api) -> None:
    reply = await api.get("/healthz", key=None)
    assert reply.status == 200 and reply.body == {"status": "ok"}
