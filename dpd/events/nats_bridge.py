"""The NATS outlet of the event bus (DESIGN §5): every bus event, and GPU snapshots, on NATS.

Owns: one NATS connection (connected in the background, reconnecting forever with backoff),
a bounded queue of events taken from its bus subscription, and in JetStream mode the
``JetStreamPublisher`` and its ``<state_dir>/nats/acked.json``. ``run`` is the component's
coroutine (until cancelled); ``drain`` at shutdown sends what it can within a time limit,
saves the ack record and closes the connection.

Never blocks anyone: the bus hands events over with ``put_nowait``; a pump moves them at
once into the bridge's own queue; only the bridge's publisher task ever waits on NATS.
While NATS is away:
- core mode (at most once): the queue keeps the newest ``queue_size`` events, dropping the
  oldest and counting them (``dropped``); they go out after the reconnect.
- JetStream mode: nothing is lost, since the truth is events.jsonl: whatever was not acked
  is republished from disk, in seq order, with ``Nats-Msg-Id`` (see jetstream.py).
  Preprocess and model-download events are not in events.jsonl; they get core semantics.
GPU snapshots are state, not history: only the latest is kept and published.

Fleet mode (FLEET.md §9.7): the daemon's wiring hands the JetStream publisher a publication
gate (``set_gate``) and mutes superseded tasks (``mute``/``unmute``); ``reopen`` is called
when the gate may have opened. Without a gate (fleet off) nothing is held.

Errors: connection problems are retried forever and shown in ``status()["last_error"]``;
an unexpected error in the publisher is logged and the loop goes on after a pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from nats import errors as nats_errors
from nats.aio.client import Client as NATS

from dpd.config import NatsConfig
from dpd.events.acks import acks_path
from dpd.events.bus import EventBus
from dpd.events.jetstream import EventJournal, JetStreamPublisher, PublishGate
from dpd.events.nats_options import connect_options, reconnect_delay, redact_url
from dpd.events.subjects import encode_payload, event_subject, gpu_subject

log = logging.getLogger("dpd.nats")

Event = dict[str, Any]
HEADER_ROOM: Final = 1024  # bytes of max_payload kept for subject/headers
PUBLISH_BATCH: Final = 512  # events sent before the publisher yields to the loop
MAINTENANCE_SECONDS: Final = 0.1
# nats-py errors that mean "not now": the event goes back to the queue
NOT_CONNECTED: Final = (
    nats_errors.OutboundBufferLimitError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionDrainingError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.StaleConnectionError,
)


class NatsBridge:
    def __init__(
        self,
        config: NatsConfig,
        bus: EventBus,
        journal: EventJournal,
        node: str,
        state_dir: Path,
        *,
        queue_size: int = 10_000,
        ack_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        reconnect_max: float = 10.0,
        audit_interval: float = 1.0,
        flush_interval: float = 0.25,
    ) -> None:
        self.config = config
        self.node = node
        self.prefix = config.subject_prefix
        self.queue_size = queue_size
        self.reconnect_wait = reconnect_wait
        self.reconnect_max = reconnect_max
        self.audit_interval = audit_interval
        self.flush_interval = flush_interval
        self.subscription = bus.subscribe()  # now, so nothing emitted before run() is missed
        self.jetstream = (
            JetStreamPublisher(journal, acks_path(state_dir), self.prefix, ack_timeout=ack_timeout)
            if config.jetstream
            else None
        )
        self._bus = bus
        self._outbox: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._nc: NATS | None = None
        self._stream_ready = False
        self._gpu_event: Event | None = None
        self._gpu_seq = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self.published = 0
        self.dropped = 0
        self.reconnects = 0
        self.disconnects = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ API

    def publish_gpus(self, snapshot: Sequence[Any]) -> None:
        """A GpuMonitor listener: publish this snapshot on ``<prefix>.gpus.<node>``."""
        self._gpu_seq += 1
        self._gpu_event = {
            "type": "gpus",
            "task_id": None,
            "node": self.node,
            "seq": self._gpu_seq,
            "timestamp": time.time(),
            "data": {"gpus": [_as_dict(gpu) for gpu in snapshot]},
        }
        self._wake.set()

    # ------------------------------------------------ fleet mode (FLEET.md §9.7)

    def set_gate(self, gate: PublishGate) -> None:
        """Job events of a task leave only when ``gate`` lets them (JetStream mode)."""
        if self.jetstream is not None:
            self.jetstream.gate = gate

    def reopen(self) -> None:
        """The gate may have opened: look at the held tasks again."""
        if self.jetstream is not None and self.jetstream.reoffer():
            self._wake.set()

    def muted(self, task_id: str) -> int | None:
        return self.jetstream.muted(task_id) if self.jetstream is not None else None

    async def mute(self, task_id: str, attempt: int) -> None:
        """Never publish this task's events again; on disk before this returns (unless
        the write failed: then at the next flush)."""
        if self.jetstream is not None:
            self.jetstream.mute(task_id, attempt)
            await self._save_acks(self.jetstream)

    async def unmute(self, task_id: str, after_seq: int) -> None:
        """A later attempt starts here: publish its events, those after ``after_seq``."""
        if self.jetstream is not None:
            self.jetstream.unmute(task_id, after_seq)
            await self._save_acks(self.jetstream)
            self._wake.set()

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def status(self) -> dict[str, Any]:
        """Connection state and counters for /system/overview and /metrics."""
        js = self.jetstream
        status: dict[str, Any] = {
            "url": redact_url(self.config.url),
            "connected": self.connected,
            "jetstream": js is not None,
            "stream_ready": self._stream_ready if js else None,
            "published": self.published + (js.published if js else 0),
            "acked_seq_lag": js.lag() if js else 0,
            "queued": len(self._outbox),
            "dropped": self.dropped + self.subscription.lost,
            "reconnects": self.reconnects,
            "disconnects": self.disconnects,
            "last_error": self.last_error,
        }
        if js is not None:
            status.update(js.status())
        return status

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Connect, pump and publish until cancelled (then the connection is closed)."""
        if self.jetstream is not None:
            await self.jetstream.load()
            self.jetstream.audit()
        self._start(self._connect(), "NATS connect")
        self._start(self._pump(), "NATS pump")
        self._start(self._publish_loop(), "NATS publisher")
        if self.jetstream is not None:
            self._start(self._maintain(self.jetstream), "NATS acks")
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._close()
            self._bus.unsubscribe(self.subscription)

    async def drain(self, timeout: float) -> bool:
        """Shutdown: send what is queued (JetStream: and wait for its acks) for at most
        ``timeout`` seconds, save the ack record, close. True if nothing was left."""
        self._take_from_bus()
        deadline = time.monotonic() + timeout
        while self._unfinished() and self._ready() and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.01)
        done = not self._unfinished()
        if not done:
            log.warning("NATS: %s", self._leftover_note())
        if self.jetstream is not None:
            await self._save_acks(self.jetstream)
        await self._close()
        return done

    # ------------------------------------------------------------ connection

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _connect(self) -> None:
        """Connect once, retrying forever; afterwards nats-py reconnects by itself."""
        attempt = 0
        while True:
            try:
                options = await asyncio.to_thread(
                    connect_options,
                    self.config,
                    name=f"dpd@{self.node}",
                    reconnect_wait=self.reconnect_wait,
                    reconnect_max=self.reconnect_max,
                    on_disconnect=self._disconnected,
                    on_reconnect=self._reconnected,
                    on_error=self._error,
                )
                nc = NATS()
                self._nc = nc
                await nc.connect(**options)
                break
            except Exception as err:  # bad TLS files, a malformed URL...: keep trying
                self._note_error(err)
                await asyncio.sleep(reconnect_delay(attempt, 1.0, self.reconnect_max, 0.5))
                attempt += 1
        log.info("connected to NATS at %s", redact_url(self.config.url))
        await self._after_connect()

    async def _disconnected(self) -> None:
        self._stream_ready = False
        if self._closing:
            return
        self.disconnects += 1
        log.warning("NATS connection lost; reconnecting")
        if self.jetstream is not None:
            self.jetstream.fail_in_flight()
        self._wake.set()

    async def _reconnected(self) -> None:
        self.reconnects += 1
        log.info("reconnected to NATS")
        self._start(self._after_connect(), "NATS after reconnect")

    async def _error(self, err: Exception) -> None:
        self._note_error(err)

    def _note_error(self, err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}"
        if text != self.last_error:
            log.warning("NATS: %s", text)
        self.last_error = text

    async def _after_connect(self) -> None:
        """JetStream: make sure stream DPD exists, then look for anything not yet acked."""
        nc = self._nc
        js = self.jetstream
        if nc is None:
            return
        if js is not None:
            js.max_payload = nc.max_payload - HEADER_ROOM
            await self._ensure_stream(nc, js)
        self._wake.set()

    async def _ensure_stream(self, nc: NATS, js: JetStreamPublisher) -> None:
        attempt = 0
        while nc.is_connected:
            try:
                await js.ensure_stream(nc, self.config.stream_max_age, self.config.stream_max_bytes)
            except Exception as err:  # JetStream disabled, no permission, timeout
                self._note_error(err)
                await asyncio.sleep(reconnect_delay(attempt, 0.5, self.reconnect_max, 0.5))
                attempt += 1
                continue
            self._stream_ready = True
            js.audit()
            return

    async def _close(self) -> None:
        self._closing = True
        nc, self._nc = self._nc, None
        self._stream_ready = False
        if nc is None or nc.is_closed:
            return
        with contextlib.suppress(Exception):
            if nc.is_connected:
                await asyncio.wait_for(nc.flush(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)

    # -------------------------------------------------------------- intake

    async def _pump(self) -> None:
        """Move events from the bus subscription into the bridge's bounded queue."""
        queue = self.subscription.queue
        while True:
            self._enqueue(await queue.get())
            self._take_from_bus()
            self._wake.set()

    def _take_from_bus(self) -> None:
        queue = self.subscription.queue
        while not queue.empty():
            self._enqueue(queue.get_nowait())

    def _enqueue(self, event: Event) -> None:
        if len(self._outbox) >= self.queue_size:
            oldest = self._outbox.popleft()
            self.dropped += 1
            if self.jetstream is not None and oldest.get("scope", "jobs") == "jobs":
                self.jetstream.mark_dirty(oldest["task_id"])  # it is on disk: catch up
        self._outbox.append(event)

    # ------------------------------------------------------------ publishing

    def _ready(self) -> bool:
        if not self.connected:
            return False
        return self.jetstream is None or self._stream_ready

    def _unfinished(self) -> bool:
        js = self.jetstream
        return bool(self._outbox) or (js is not None and (js.dirty or js.in_flight > 0))

    def _leftover_note(self) -> str:
        if self.jetstream is None:
            return f"{len(self._outbox)} events not delivered at shutdown (core NATS)"
        return (
            f"{self.jetstream.lag()} events not yet acked at shutdown; "
            "they are republished from events.jsonl at the next start"
        )

    async def _publish_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self._publish_some()
            except Exception as err:
                log.exception("NATS publisher failed; going on")
                self._note_error(err)
                busy = False
                await asyncio.sleep(0.5)
            if busy:
                await asyncio.sleep(0)
            else:
                await self._wake.wait()

    async def _publish_some(self) -> bool:
        """Send one round; False when there is nothing to do (or NATS is not ready)."""
        if not self._ready():
            return False
        if self._gpu_event is not None:
            await self._publish_gpus()
        js = self.jetstream
        if js is not None and js.dirty:
            with contextlib.suppress(*NOT_CONNECTED):  # the task stays dirty: after reconnect
                await js.catch_up()
            return True
        if not self._outbox:
            return False
        for _ in range(PUBLISH_BATCH):
            if not self._outbox or not self._ready():
                break
            await self._publish_event(self._outbox.popleft())
        return True

    async def _publish_event(self, event: Event) -> None:
        js = self.jetstream
        if js is not None and event.get("scope", "jobs") == "jobs":
            try:
                await js.offer(event)
            except NOT_CONNECTED:
                js.mark_dirty(event["task_id"])  # on disk: the catch-up sends it
            return
        nc = self._nc
        assert nc is not None
        payload = encode_payload(event, nc.max_payload - HEADER_ROOM)
        try:
            await nc.publish(event_subject(self.prefix, event), payload)
        except NOT_CONNECTED:
            self._outbox.appendleft(event)  # not now; it goes out after the reconnect
            return
        self.published += 1

    async def _publish_gpus(self) -> None:
        event, self._gpu_event = self._gpu_event, None
        nc = self._nc
        if event is None or nc is None:
            return
        with contextlib.suppress(*NOT_CONNECTED):
            await nc.publish(gpu_subject(self.prefix, self.node), encode_payload(event))
            self.published += 1

    # ------------------------------------------------------------ JetStream upkeep

    async def _maintain(self, js: JetStreamPublisher) -> None:
        """Expire overdue acks, audit disk against what was sent, save acked.json."""
        last_audit = last_save = time.monotonic()
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            now = time.monotonic()
            if js.expire(now):
                self._wake.set()
            if now - last_audit >= self.audit_interval:
                last_audit = now
                if self._stream_ready and js.audit():
                    self._wake.set()
            if now - last_save >= self.flush_interval:
                last_save = now
                await self._save_acks(js)

    async def _save_acks(self, js: JetStreamPublisher) -> None:
        # A failed write loses nothing but time: every save is a fresh temp file, and
        # events above the stored watermark are republished and deduplicated.
        try:
            await js.save()
        except OSError as err:
            self._note_error(err)


def _as_dict(item: Any) -> Any:
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    return item
