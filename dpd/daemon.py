"""The composition root of ``dpd serve``: builds every component and runs them on one loop.

Start-up, in order: spool directories, job store recovery (``load``), event bus, the
spool watcher (its first scan ingests what is already in incoming/), the HTTP server
(AppRunner/TCPSite), then ``/healthz`` answers 200. Shutdown is a checklist, each step
bounded in time and logged when it falls back: stop intake (watcher paused, in-flight
ingestions finished), stop the HTTP server, flush events, cancel background tasks.
Trainings are left running unless ``daemon.stop_jobs_on_shutdown`` (DESIGN §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from dpd.alerts.rules import AlertRules
from dpd.alerts.watcher import AlertWatcher
from dpd.config import Config, load_config
from dpd.errors import ConfigError
from dpd.events.bus import EventBus
from dpd.events.nats_bridge import NatsBridge
from dpd.http.app import HEALTH, build_app, setup_routes
from dpd.http.auth import KEY_STORE, Authenticator, StoreChecker
from dpd.http.common import RATE_LIMITER
from dpd.http.ratelimit import RateLimiter
from dpd.http.routes import session as session_routes
from dpd.keys import KEYS_FILE, KeyStore
from dpd.local_key import prepare_local_key
from dpd.logsetup import guard_server_log, set_level
from dpd.models.catalog import load_catalog
from dpd.models.downloads import DownloadManager
from dpd.notify import Notifier, status_line
from dpd.preprocess.tasks import PreprocessManager
from dpd.services import SERVICES, Services
from dpd.spool.intake import JobIntake
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore
from dpd.spool.watcher import SpoolWatcher
from dpd.supervisor.gpu_monitor import GpuMonitor
from dpd.supervisor.gpus import open_inventory
from dpd.supervisor.launcher import ShimLauncher
from dpd.supervisor.supervisor import Supervisor

log = logging.getLogger("dpd.daemon")

SHUTDOWN_STEP_TIMEOUT = 10.0
SHUTDOWN_STACK_DUMP_AFTER = 25.0  # seconds of shutdown before the stacks are logged
NATS_DRAIN_TIMEOUT = 5.0  # JetStream: what is not acked by then is republished at next start
STATUS_PERIOD = 5.0
EXIT_FAILED = 1  # a component failed and the daemon stopped: systemd starts it again
# Batches in flight: one is built while the other waits on its fsyncs. Each batch already
# shares its fsyncs; more workers only fight over the GIL (burst of 1000 on a fresh ext4,
# 2 cores: 1 or 2 workers 530-550 jobs/s, 4 workers 450-470).
INGEST_WORKERS = 2


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = Notifier(unset_environment=True)
        layout = SpoolLayout(config.daemon.spool_dir)
        store = JobStore(layout, config.daemon.output_root, config.daemon.node)
        bus = EventBus(store, config.daemon.node)
        monitor = GpuMonitor(open_inventory(config.gpus), config.gpus.monitor_interval)
        launcher = ShimLauncher(  # the timeouts bound the requeue-mode fence (FLEET.md §9.4)
            term_timeout=config.trainer.term_timeout, kill_timeout=config.trainer.kill_timeout
        )
        supervisor = Supervisor(
            config, store, bus.emit, monitor, launcher, events_recorded=bus.recorded
        )
        intake = JobIntake(layout, store, config.daemon.data_roots, bus.announce, supervisor.wake)
        catalog = load_catalog(Path(config.models.catalog) if config.models.catalog else None)
        self.preprocess = PreprocessManager(config, bus.emit)
        self.downloads = DownloadManager.from_config(config, catalog, bus.emit)
        self.nats: NatsBridge | None = None
        if config.nats.url:
            self.nats = NatsBridge(
                config.nats, bus, store, config.daemon.node, config.daemon.state_dir
            )
            monitor.add_listener(self.nats.publish_gpus)
        self.services = Services(
            config=config,
            layout=layout,
            store=store,
            bus=bus,
            monitor=monitor,
            supervisor=supervisor,
            intake=intake,
            catalog=catalog,
            preprocess=self.preprocess,
            downloads=self.downloads,
            nats=self.nats,
            started_at=time.time(),
        )
        self.alerts = AlertWatcher(bus, alert_rules(config), config.alerts.webhook_url)
        self.watcher = SpoolWatcher(layout, intake.ingest, workers=INGEST_WORKERS)
        self.keys = KeyStore(config.daemon.state_dir / KEYS_FILE)
        self.auth = Authenticator(
            config.auth.enabled, config.auth.bootstrap_key, StoreChecker(self.keys)
        )
        self.rate_limiter = RateLimiter(config.ratelimit)
        middlewares = [self.auth.middleware]
        # --- fleet mode (FLEET.md §15 phase 1): the fleet queue takes every submission
        self.fleet: Any = None
        if config.fleet.enabled:
            from dpd.fleet.agent import FleetAgent
            from dpd.http import fleet_submit

            self.fleet = FleetAgent(config, store, supervisor, monitor, bus.announce)
            intake.commit = self.fleet.commit_batch
            middlewares.append(fleet_submit.middleware(self.fleet, intake))
            if self.nats is not None:  # the publication gate of fleet tasks (FLEET.md §9.7)
                self.fleet.attach_outlet(self.nats)
        # --- end of fleet mode
        # --- fleet mode, phase 2 (FLEET.md §9.6–§9.8): any host shows and stops any job
        self.fleet_views: Any = None
        if self.fleet is not None:
            from dpd.http.fleet_views import FleetViews

            self.fleet_views = FleetViews(self.fleet)
            middlewares.append(self.fleet_views.middleware())
        # --- end of fleet views
        self.app = build_app(config.http.max_body_kb * 1024, middlewares)
        self.app[SERVICES] = self.services
        self.app[KEY_STORE] = self.keys
        session_routes.install(self.app, self.auth, config.http.session_hours)  # dashboard
        self.rate_limiter.install(self.app)
        setup_routes(self.app, self.services)
        if self.fleet is not None:  # fleet mode: /api/v1/fleet/*
            from dpd.http.routes import fleet as fleet_routes

            fleet_routes.setup(self.app, self.fleet)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.failure: BaseException | None = None  # what stopped it, if not a request

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        self._install_signal_handlers()
        if self.config.fleet.enabled:  # fleet mode: refuse an unsafe NATS before anything starts
            from dpd.fleet.startup import NatsUnreachable, check_fleet_nats

            try:
                await check_fleet_nats(self.config)
            except NatsUnreachable as err:
                log.warning("fleet: %s; fleet work waits for NATS", err)
        try:
            await self.startup()
            await self._stop.wait()
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)

    # -------------------------------------------------------------- startup

    def _announce_recovered_statuses(self) -> None:
        """A crash between a durable status change and its event would leave subscribers
        believing the old status forever: announce what state.json says now."""
        for event in self.services.store.take_unannounced():
            log.info(
                "%s: announcing status %s (the last event said %s)",
                event.task_id,
                event.status.value,
                event.data["previous"],
            )
            self.services.bus.emit("jobs", event.task_id, "status", event.data)

    async def startup(self) -> None:
        config = self.config
        services = self.services
        await asyncio.to_thread(self._prepare_directories)
        self.auth.local_key = await asyncio.to_thread(prepare_local_key, config.daemon.state_dir)
        loaded = await asyncio.to_thread(services.store.load)
        log.info("job store recovered: %d jobs in %s", len(loaded), services.layout.jobs)
        self._spawn(services.bus.run(), "event bus")
        self._spawn(self.alerts.run(), "training alerts")
        self._announce_recovered_statuses()
        if self.nats is not None:
            self._spawn(self.nats.run(), "NATS bridge")  # connects in the background
        self._spawn(services.monitor.run(), "GPU monitor")
        await services.monitor.poll_now()
        await services.supervisor.start()
        self._spawn(services.supervisor.failure(), "job supervision")
        if self.fleet is not None:  # fleet mode: register, heartbeat, place (FLEET.md §9)
            self._spawn(self.fleet.run(), "fleet agent")
        if self.fleet_views is not None:  # fleet mode: RPC, other nodes' events, desired stops
            self._spawn(self.fleet_views.run(self.app), "fleet views")
        await self.preprocess.start()
        await self.downloads.start()
        self._spawn(self.watcher.run(), "spool watcher")
        await self.watcher.started.wait()
        guard_server_log()  # before the first request: no header of one reaches the log
        self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, config.http.host, config.http.port)
        await site.start()
        self.port = _bound_port(self.runner)
        self.app[HEALTH].ready = True
        self.notifier.ready(self.status_text())
        if self.notifier.enabled:
            self._spawn(self.notifier.run_watchdog(), "watchdog")
            self._spawn(self._report_status(), "status reporter")
        log.info(
            "dpd ready: http://%s:%s, spool %s (%s)",
            config.http.host,
            self.port,
            config.daemon.spool_dir,
            config.source,
        )
        if os.environ.get("INVOCATION_ID"):
            # a systemd service: its log is the journal, which other users may read, so no
            # login token goes there; `dpd open` logs the local user in with the local key
            log.info("dashboard: %s/ (dpd open logs you in)", self.base_url())
        else:
            log.info("dashboard: %s", self.dashboard_link())

    def base_url(self) -> str:
        host = self.config.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def dashboard_link(self) -> str:
        """A one-time link that opens the dashboard logged in (printed at start)."""
        return session_routes.start_link(self.app, self.base_url())

    def _prepare_directories(self) -> None:
        self.services.layout.ensure()
        for path in (self.config.daemon.state_dir, self.config.daemon.output_root):
            path.mkdir(parents=True, exist_ok=True)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._component_finished)
        self._tasks.append(task)

    def _component_finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.critical("%s stopped: %r; shutting down", task.get_name(), error, exc_info=error)
            self.failure = self.failure or error
            self.request_stop()

    # ------------------------------------------------------- status, reload

    def status_text(self) -> str:
        counts = self.services.store.count_by_status()
        nats = self.services.nats
        nats_state = None
        if nats is not None:
            nats_state = "connected" if nats.status().get("connected") else "disconnected"
        return status_line(counts["running"] + counts["stopping"], counts["queued"], nats_state)

    async def _report_status(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(STATUS_PERIOD)
            text = self.status_text()
            if text != last:
                self.notifier.status(text)
                last = text

    def _reload_soon(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._tasks.append(task)

    async def reload(self) -> None:
        """SIGHUP: re-read the configuration and apply what can change safely at run time
        (log level, rate limits, GPU monitor interval); everything else needs a restart."""
        with self.notifier.reload_window(self.status_text()):
            try:
                new = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as err:
                log.error("reload refused, keeping the running configuration: %s", err)
                return
            set_level(new.daemon.log_level)
            self.services.monitor.set_interval(new.gpus.monitor_interval)
            limiter = self.app.get(RATE_LIMITER)
            if limiter is not None and hasattr(limiter, "set_limits"):
                limiter.set_limits(new.ratelimit)
            self.config = dataclasses.replace(
                self.config,
                daemon=dataclasses.replace(self.config.daemon, log_level=new.daemon.log_level),
                gpus=dataclasses.replace(
                    self.config.gpus, monitor_interval=new.gpus.monitor_interval
                ),
                ratelimit=new.ratelimit,
            )
            log.info("configuration reloaded from %s", new.source)

    # ------------------------------------------------------------- shutdown

    async def shutdown(self) -> None:
        log.info("shutting down")
        # Each step below is bounded; should the loop itself stall, every thread's stack goes
        # to the log (not the journal's guess) before systemd's TimeoutStopSec kills dpd.
        faulthandler.dump_traceback_later(SHUTDOWN_STACK_DUMP_AFTER)
        try:
            await self._shutdown_steps()
        finally:
            faulthandler.cancel_dump_traceback_later()
        log.info("stopped")

    async def _shutdown_steps(self) -> None:
        self.notifier.stopping()
        self.watcher.pause()
        await self._step("finish in-flight ingestions", self.watcher.drain())
        if self.runner is not None:
            await self._step("stop the HTTP server", self.runner.cleanup())
        # after a failure systemd starts dpd again: the trainings go on meanwhile
        stop_jobs = self.config.daemon.stop_jobs_on_shutdown and self.failure is None
        if stop_jobs and self.services.supervisor.running:
            self.notifier.extend_timeout(self.config.trainer.stop_timeout + 60)
        await self._step(
            "stop jobs" if stop_jobs else "detach from running jobs",
            self.services.supervisor.close(stop_jobs),
            timeout=self.config.trainer.stop_timeout + 40 if stop_jobs else None,
        )
        await self._step("stop preprocessing", self.preprocess.close())
        await self._step("pause model downloads", self.downloads.close())
        await self._step("close the GPU monitor", self.services.monitor.close())
        await self._step("flush events", self.services.bus.drain(SHUTDOWN_STEP_TIMEOUT))
        if self.nats is not None:
            await self._step("flush events to NATS", self.nats.drain(NATS_DRAIN_TIMEOUT))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _step(self, what: str, awaitable: Any, timeout: float | None = None) -> None:
        timeout = timeout or SHUTDOWN_STEP_TIMEOUT
        log.debug("shutdown: %s", what)
        try:
            await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            log.warning("shutdown: %s took longer than %ss; going on", what, timeout)
        except Exception:
            log.exception("shutdown: %s failed; going on", what)


def alert_rules(config: Config) -> AlertRules:
    alerts = config.alerts
    return AlertRules(alerts.loss_explosion_factor, alerts.loss_window, alerts.stall_seconds)


def _bound_port(runner: web.AppRunner) -> int | None:
    for address in runner.addresses:
        if isinstance(address, Sequence) and len(address) >= 2:
            return int(address[1])
    return None


def serve(config: Config, config_path: str | None = None) -> int:
    """The exit status: non-zero when a component failed (systemd's Restart=on-failure
    then starts dpd again)."""
    daemon = Daemon(config, config_path)  # a ConfigError (fleet's NATS check): dpd.cli.serve
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(daemon.run())
    return EXIT_FAILED if daemon.failure is not None else 0
