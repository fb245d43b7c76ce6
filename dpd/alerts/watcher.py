"""The alert watcher: follows every training's events on the bus, applies the rules of
``dpd.alerts.rules`` and records what it finds as ``alert`` events through the normal event
path (events.jsonl, then NATS ``<prefix>.jobs.<id>.alert`` and the SSE stream). With
``[alerts] webhook_url`` set it also POSTs every recorded alert event, as JSON, there.

Owns: one bus subscription, an HTTP client session (only with a webhook) and the webhook
posts in flight, all closed when ``run`` ends (cancellation). Nothing it does can stop the
daemon: an event it cannot read is logged and skipped; a webhook that fails or is slow
(``WEBHOOK_TIMEOUT``) is logged, never retried, and never delays the next alert; past
``MAX_POSTS`` posts in flight new ones are dropped with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp

from dpd.alerts.rules import AlertRules, RunWatch
from dpd.events.bus import Event, EventBus

log = logging.getLogger("dpd.alerts")

ALERT: Final = "alert"
WEBHOOK_TIMEOUT: Final = 5.0
MAX_POSTS: Final = 100
ENDED: Final = frozenset({"completed", "failed", "stopped", "stopping", "queued"})


def _wanted(event: Event) -> bool:
    return event.get("scope", "jobs") == "jobs" and event.get("type") in (
        "metrics",
        "status",
        ALERT,
    )


class AlertWatcher:
    def __init__(
        self,
        bus: EventBus,
        rules: AlertRules,
        webhook_url: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.rules = rules
        self.webhook_url = webhook_url
        self.clock = clock
        self.watches: dict[str, RunWatch] = {}
        self.raised = 0
        self.posted = 0
        self._posts: set[asyncio.Task[None]] = set()

    @property
    def tick_seconds(self) -> float:
        return max(0.05, min(5.0, self.rules.stall_seconds / 4))

    async def run(self) -> None:
        """Until cancelled."""
        subscription = self.bus.subscribe(_wanted)
        session = aiohttp.ClientSession() if self.webhook_url else None
        try:
            while True:
                event = None
                # asyncio.timeout, not wait_for: on 3.11 wait_for can turn the daemon's
                # cancellation into a TimeoutError when both land together, and this loop
                # would then run on and hold up the shutdown for ever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick_seconds):
                        event = await subscription.queue.get()
                try:
                    if event is not None:
                        self.observe(event, session)
                    self.tick()
                except Exception:
                    log.exception("alert watcher: could not handle %r", event)
        finally:
            self.bus.unsubscribe(subscription)
            for post in list(self._posts):
                post.cancel()
            await asyncio.gather(*self._posts, return_exceptions=True)
            if session is not None:
                await session.close()

    def observe(self, event: Event, session: aiohttp.ClientSession | None) -> None:
        task_id, kind, data = str(event["task_id"]), event["type"], event.get("data") or {}
        if kind == "status":
            if data.get("status") == "running":
                self.watches[task_id] = RunWatch(task_id, self.rules)
            elif data.get("status") in ENDED:
                self.watches.pop(task_id, None)
        elif kind == "metrics" and data.get("type") == "step" and data.get("metric") == "loss":
            watch = self.watches.setdefault(task_id, RunWatch(task_id, self.rules))
            value = data.get("value")
            step = data.get("step")
            finite = float(value) if isinstance(value, int | float) else None
            for alert in watch.step_loss(step if isinstance(step, int) else None, finite,
                                         self.clock()):  # fmt: skip
                self._raise(task_id, alert.data())
        elif kind == ALERT and session is not None:
            self._post(session, event)

    def tick(self) -> None:
        now = self.clock()
        for task_id, watch in list(self.watches.items()):
            for alert in watch.tick(now):
                self._raise(task_id, alert.data())

    def _raise(self, task_id: str, data: dict[str, Any]) -> None:
        log.warning("alert: %s", data["message"])
        self.raised += 1
        self.bus.emit("jobs", task_id, ALERT, data)

    def _post(self, session: aiohttp.ClientSession, event: Event) -> None:
        if len(self._posts) >= MAX_POSTS:
            log.warning("alert webhook: %d posts in flight; dropping this one", MAX_POSTS)
            return
        task = asyncio.create_task(self._send(session, event))
        self._posts.add(task)
        task.add_done_callback(self._posts.discard)

    async def _send(self, session: aiohttp.ClientSession, event: Event) -> None:
        body = {k: v for k, v in event.items() if k != "scope"}
        try:
            async with session.post(
                self.webhook_url, json=body, timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT)
            ) as response:
                if response.status >= 300:
                    log.warning("alert webhook answered %d", response.status)
                    return
            self.posted += 1
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("alert webhook %s failed: %r", self.webhook_url, err)
