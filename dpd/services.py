"""The components one daemon is made of, as route modules and the CLI's demo reach them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dpd.config import Config
from dpd.events.bus import EventBus
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore

if TYPE_CHECKING:
    from dpd.supervisor.gpu_monitor import GpuMonitor
    from dpd.supervisor.supervisor import Supervisor


@dataclass
class Services:
    config: Config
    layout: SpoolLayout
    store: JobStore
    bus: EventBus
    monitor: GpuMonitor
    supervisor: Supervisor
    started_at: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)


SERVICES: web.AppKey[Services] = web.AppKey("dpd.services", Services)
