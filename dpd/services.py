"""The components one daemon is made of, as the HTTP routes and the CLI's demo reach them.

Built once by the composition root (``dpd.daemon``) and frozen: a route reads its
components here and never stores anything in it (a route's own caches live under its own
``web.AppKey``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from dpd.config import Config
from dpd.events.bus import EventBus
from dpd.models.catalog import Catalog
from dpd.models.downloads import DownloadManager
from dpd.preprocess.tasks import PreprocessManager
from dpd.spool.intake import JobIntake
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.supervisor import Supervisor


class ConnectionStatus(Protocol):
    """What the routes read of the NATS bridge: ``connected``, ``url``, ``pending``..."""

    def status(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Services:
    config: Config
    layout: SpoolLayout
    store: JobStore
    bus: EventBus
    monitor: GpuMonitor
    supervisor: Supervisor
    intake: JobIntake
    catalog: Catalog
    preprocess: PreprocessManager
    downloads: DownloadManager
    nats: ConnectionStatus | None = None  # None: no NATS URL configured
    started_at: float = 0.0


SERVICES: web.AppKey[Services] = web.AppKey("dpd.services", Services)
