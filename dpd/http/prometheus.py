"""``GET /metrics``: Prometheus text exposition (format 0.0.4), without auth, outside /api/v1.

Written by hand: the format is a few lines of ``name{labels} value`` with HELP/TYPE headers,
and a client library would bring a global registry whose collectors we would have to feed
from the same in-memory state anyway. Units follow Prometheus conventions (bytes, ratios,
seconds, watts), not the API's MB and percent. Every figure is read from memory (store
index, monitor snapshot, bus counter): a scrape never touches the disk or NVML.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiohttp import web

from dpd import __version__
from dpd.http.routes.system import nats_state
from dpd.services import SERVICES, Services
from dpd.supervisor.gpus import GpuInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MIB = 1024 * 1024


@dataclass
class Family:
    """One metric: its name, type, help text and samples ``(labels, value)``."""

    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float | None, **labels: str) -> None:
        if value is not None:
            self.samples.append((labels, float(value)))


def setup(app: web.Application) -> None:
    app.router.add_get("/metrics", get_metrics)


# ------------------------------------------------------------------ rendering


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            label_text = ",".join(f'{k}="{escape_label(v)}"' for k, v in sorted(labels.items()))
            selector = f"{family.name}{{{label_text}}}" if label_text else family.name
            lines.append(f"{selector} {format_value(value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ collecting


def job_families(by_status: dict[str, int], queue_depth: int) -> list[Family]:
    jobs = Family("dpd_jobs", "gauge", "Training jobs known to the daemon, by status.")
    for status, count in sorted(by_status.items()):
        jobs.add(count, status=status)
    queue = Family("dpd_queue_depth", "gauge", "Jobs waiting for a GPU.")
    queue.add(queue_depth)
    return [jobs, queue]


def gpu_families(gpus: list[GpuInfo]) -> list[Family]:
    up = Family("dpd_gpu_up", "gauge", "1 if the GPU answers its queries, 0 if unknown.")
    total = Family("dpd_gpu_memory_total_bytes", "gauge", "GPU memory size.")
    used = Family("dpd_gpu_memory_used_bytes", "gauge", "GPU memory in use.")
    util = Family("dpd_gpu_utilization_ratio", "gauge", "GPU compute utilisation, 0 to 1.")
    temp = Family("dpd_gpu_temperature_celsius", "gauge", "GPU temperature.")
    power = Family("dpd_gpu_power_watts", "gauge", "GPU power draw.")
    for gpu in gpus:
        labels = {"gpu": str(gpu.gpu_id), "name": gpu.name}
        up.add(0 if gpu.error else 1, **labels)
        total.add(gpu.memory_total * MIB, **labels)
        if gpu.error:
            continue
        used.add(gpu.memory_used * MIB, **labels)
        util.add(gpu.utilization_gpu / 100 if gpu.utilization_gpu is not None else None, **labels)
        temp.add(gpu.temperature, **labels)
        power.add(gpu.power_usage, **labels)
    return [up, total, used, util, temp, power]


def daemon_families(
    published: int, nats: dict[str, object] | None, started_at: float, node: str
) -> list[Family]:
    events = Family("dpd_events_published_total", "counter", "Events handed to subscribers.")
    events.add(published)
    configured = Family("dpd_nats_configured", "gauge", "1 if a NATS URL is configured.")
    configured.add(0 if nats is None else 1)
    connected = Family("dpd_nats_connected", "gauge", "1 while connected to NATS.")
    connected.add(1 if nats and nats.get("connected") else 0)
    uptime = Family("dpd_uptime_seconds", "gauge", "Seconds since the daemon started.")
    uptime.add(round(time.time() - started_at, 3))
    info = Family("dpd_build_info", "gauge", "Version and node of this daemon (always 1).")
    info.add(1, version=__version__, node=node)
    return [events, configured, connected, uptime, info]


def collect(services: Services) -> list[Family]:
    by_status = services.store.count_by_status()
    return [
        *job_families(by_status, by_status.get("queued", 0)),
        *gpu_families(services.monitor.latest),
        *daemon_families(
            services.bus.published,
            nats_state(services),
            services.started_at,
            services.config.daemon.node,
        ),
    ]


async def get_metrics(request: web.Request) -> web.Response:
    text = render(collect(request.app[SERVICES]))
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
