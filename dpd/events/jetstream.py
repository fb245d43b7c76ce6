"""JetStream publishing of job events: acked, deduplicated, republished from disk.

The truth is each task's ``events.jsonl``; this publisher only tracks, per task, how far
it has sent (``sent``) and how far the stream has acked without a hole (the watermark in
``AckWindow``, kept in ``<state_dir>/nats/acked.json``). Whatever lies between the
watermark and the task's last seq on disk is (re)published, in seq order, from the file:
- after a NATS outage (every in-flight publish is failed at the disconnect, so ``sent``
  falls back to the watermark), after an ack timeout or error,
- after a daemon restart or crash (``sent`` starts at the stored watermark),
- when the bridge's queue overflowed (the event is on disk; the audit finds the gap).
Publishes are pipelined (``PublishWindow``: up to ``IN_FLIGHT_LIMIT`` unacked at once, in
seq order on one connection, so the stream stores each task's events in order).
Each message carries ``Nats-Msg-Id: <task_id>:<seq>``; a re-send of something the stream
already holds is dropped by the server (``PubAck.duplicate``), so a durable consumer sees
every seq exactly once.

Fleet mode (FLEET.md §9.7) adds a publication gate, passed in by the daemon's wiring (this
package knows nothing of the fleet): before a task's events go out, ``gate(task_id)`` says
publish, hold or mute. A held task waits on disk, exactly as during a NATS outage, in a
held set that neither the audit nor the fast path looks at (no busy loop) until
``reoffer()`` — called when the gate may have opened — makes it dirty again. A muted task
(an attempt superseded on another host) is skipped by ``offer``, ``audit`` and
``catch_up`` for good; the mute is kept in acked.json, so it survives a restart, until
``unmute`` when a later attempt of the task starts here: its events before that point are
counted as done, never published. Without a gate nothing changes.

Known limits: dedup holds only within the stream's ``duplicate_window`` (set to
``DUPLICATE_WINDOW``). Events acked in the last ``flush_interval`` before a daemon crash
are not in acked.json; if the daemon comes back later than the window, those few are
stored twice (consumers should still dedupe by task_id+seq). After a failed publish, later
seqs that did land are kept, so a consumer may see a seq before an earlier one (never a
gap once caught up, never twice within the window).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from dpd.errors import NotFound
from dpd.events.acks import AckWindow, load_record, save_watermarks
from dpd.events.publish_window import PublishWindow
from dpd.events.subjects import encode_payload, job_subject, message_id, stream_subjects

log = logging.getLogger("dpd.nats")

STREAM: Final = "DPD"
DUPLICATE_WINDOW: Final = 120.0  # seconds; the server's default, stated explicitly
IN_FLIGHT_LIMIT: Final = 4096  # unacked publishes at once (each is on disk already)

Event = dict[str, Any]


@dataclass(frozen=True)
class Gating:
    """A publication gate's answer for one task (fleet mode, FLEET.md §9.7)."""

    publish: bool
    mute: int | None = None  # superseded for good: mute the task (this attempt of it)


PUBLISH: Final = Gating(True)
HOLD: Final = Gating(False)
PublishGate = Callable[[str], Gating]


class EventJournal(Protocol):
    """What the publisher reads from the job store (``JobStore`` is one)."""

    def task_ids(self) -> list[str]: ...

    def last_event_seq(self, task_id: str) -> int: ...

    def read_events(self, task_id: str, after_seq: int = 0) -> list[Event]: ...


def stream_config(prefix: str, max_age: int, max_bytes: int) -> StreamConfig:
    return StreamConfig(
        name=STREAM,
        subjects=stream_subjects(prefix),
        storage=StorageType.FILE,
        max_age=float(max_age) if max_age > 0 else None,
        max_bytes=max_bytes if max_bytes > 0 else None,
        duplicate_window=DUPLICATE_WINDOW,
    )


def stream_differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    return (
        sorted(current.subjects or []) != sorted(wanted.subjects or [])
        or (current.max_age or 0) != (wanted.max_age or 0)
        or (current.max_bytes or -1) != (wanted.max_bytes or -1)
        or (current.duplicate_window or 0) != wanted.duplicate_window
    )


class JetStreamPublisher:
    """Publishes job events to stream DPD and records acks. Runs on the event loop of the
    bridge; ``send`` and ``catch_up`` must not run concurrently (the bridge serialises)."""

    def __init__(
        self,
        journal: EventJournal,
        acks_file: Path,
        prefix: str,
        *,
        ack_timeout: float,
    ) -> None:
        self.journal = journal
        self.acks_file = acks_file
        self.prefix = prefix
        self.ack_timeout = ack_timeout
        self.max_payload = 0  # the server's limit, set by the bridge once connected
        self.window = AckWindow()
        self.outgoing = PublishWindow(IN_FLIGHT_LIMIT, ack_timeout, self._acked, self._failed)
        self._stream_known = False
        self._sent: dict[str, int] = {}
        self._dirty: dict[str, None] = {}  # an ordered set of tasks to catch up from disk
        self._rewind: dict[str, int] = {}  # task -> seq to resend after (a publish failed)
        self.published = 0
        self.acked = 0
        self.duplicates = 0
        self.failed = 0
        self.republished = 0
        self.gate: PublishGate | None = None  # fleet mode: set by the daemon's wiring
        self._held: set[str] = set()  # tasks the gate holds, until reoffer()
        self._muted: dict[str, int] = {}  # task -> the attempt muted for good
        self._muted_changed = False
        self._saving = asyncio.Lock()  # one write at a time: an older one never lands last
        self._loaded = False  # a save before the load would wipe the record

    async def load(self) -> None:
        marks, muted = await asyncio.to_thread(load_record, self.acks_file)
        self.window = AckWindow(marks)
        self._sent = dict(marks)
        self._muted = {**muted, **self._muted}  # a mute made before the load stands
        self._loaded = True

    async def save(self) -> None:
        """Write acked.json if anything was acked (or muted) since the last write."""
        async with self._saving:
            if not self._loaded or not (self.window.changed or self._muted_changed):
                return
            muted_changed, self._muted_changed = self._muted_changed, False
            self.window.changed = False
            try:
                await asyncio.to_thread(
                    save_watermarks, self.acks_file, self.window.snapshot(), dict(self._muted)
                )
            except BaseException:
                self._muted_changed |= muted_changed  # a mute must reach the disk
                raise

    async def ensure_stream(self, nc: NATS, max_age: int, max_bytes: int) -> None:
        """Create or update stream DPD, and listen for acks on this connection."""
        wanted = stream_config(self.prefix, max_age, max_bytes)
        js = nc.jetstream()
        try:
            info = await js.stream_info(STREAM)
        except NotFoundError:
            await js.add_stream(wanted)
            log.info("created JetStream stream %s over %s", STREAM, wanted.subjects)
        else:
            if stream_differs(info.config, wanted):
                await js.update_stream(wanted)
                log.info("updated JetStream stream %s to %s", STREAM, wanted.subjects)
        await self.outgoing.open(nc)
        self._stream_known = True

    # --------------------------------------------------------------- deciding

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    @property
    def in_flight(self) -> int:
        return self.outgoing.in_flight

    def mark_dirty(self, task_id: str) -> None:
        self._dirty[task_id] = None

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def muted(self, task_id: str) -> int | None:
        """The attempt of ``task_id`` that is muted, or None."""
        return self._muted.get(task_id)

    def mute(self, task_id: str, attempt: int) -> None:
        """Never publish this task's events again (a superseded attempt, §9.7); kept in
        acked.json at the next ``save``. In-flight publishes still get their acks."""
        self._muted[task_id] = attempt
        self._muted_changed = True
        self._dirty.pop(task_id, None)
        self._held.discard(task_id)
        self._rewind.pop(task_id, None)

    def unmute(self, task_id: str, after_seq: int) -> None:
        """A later attempt of the task starts here: publish again, from ``after_seq + 1``
        (what lies at or below it belongs to the muted attempt and is never published)."""
        self._muted.pop(task_id, None)
        self._muted_changed = True
        self._rewind.pop(task_id, None)
        self.window.preset(task_id, after_seq)
        if after_seq > 0:
            self._sent[task_id] = after_seq
        else:
            self._sent.pop(task_id, None)
        self._dirty[task_id] = None

    def reoffer(self) -> int:
        """The gate may have opened: every held task is looked at again; how many."""
        held, self._held = self._held, set()
        for task_id in held:
            self._dirty[task_id] = None
        return len(held)

    def _may_publish(self, task_id: str) -> bool:
        """Not muted, not held, and the gate (if any) lets it out now."""
        if task_id in self._muted or task_id in self._held:
            return False
        if self.gate is None:
            return True
        answer = self.gate(task_id)
        if answer.publish:
            return True
        if answer.mute is not None:
            self.mute(task_id, answer.mute)
        else:
            self._held.add(task_id)
        return False

    def audit(self) -> int:
        """Mark every task whose disk holds more than was sent (neither muted nor held);
        returns how many."""
        found = 0
        for task_id in self.journal.task_ids():
            if task_id in self._muted or task_id in self._held:
                continue
            if self.journal.last_event_seq(task_id) > self._sent.get(task_id, 0):
                if task_id not in self._dirty:
                    found += 1
                self._dirty[task_id] = None
        return found

    def lag(self) -> int:
        """Events on disk not yet acked by the stream, over all tasks."""
        return sum(
            max(0, self.journal.last_event_seq(t) - self.window.watermark(t))
            for t in self.journal.task_ids()
            if t not in self._muted
        )

    # --------------------------------------------------------------- sending

    async def offer(self, event: Event) -> None:
        """The fast path: an event straight from the bus, sent if it is the next one."""
        task_id = event["task_id"]
        if task_id in self._dirty or task_id in self._held or task_id in self._muted:
            return  # the catch-up from disk will include it (muted: nothing will)
        seq = int(event["seq"])
        sent = self._sent.get(task_id, 0)
        if seq <= sent:
            return
        if seq > sent + 1:
            self._dirty[task_id] = None  # something in between was missed: go to disk
            return
        if not self._may_publish(task_id):
            return  # on disk: sent when the gate opens (or never, if muted)
        await self.send(event)

    async def catch_up(self) -> None:
        """Publish, from events.jsonl, what the first dirty task has not sent yet."""
        task_id = next(iter(self._dirty))
        del self._dirty[task_id]  # back at the end if it stays dirty: no task starves
        if not self._may_publish(task_id):
            return  # held (back at reoffer) or muted
        if task_id in self._rewind:
            self._sent[task_id] = min(self._sent.get(task_id, 0), self._rewind.pop(task_id))
        after = self._sent.get(task_id, 0)
        try:
            events = await asyncio.to_thread(self.journal.read_events, task_id, after)
        except NotFound:
            self._forget(task_id)  # the job is gone (NotFound): nothing left to publish
            return
        try:
            await self._send_in_order(task_id, events, after + 1)
        finally:
            if task_id in self._rewind or (
                self.journal.last_event_seq(task_id) > self._sent.get(task_id, 0)
            ):
                self._dirty[task_id] = None

    async def _send_in_order(self, task_id: str, events: list[Event], expected: int) -> None:
        """Send ``events`` (read from disk after ``expected - 1``) in seq order. A jump on
        disk is no lost event: the file of a fleet task starts, or goes on, after seqs that
        other hosts published (FLEET.md §9.7), so the seqs skipped count as settled here."""
        for event in sorted(events, key=lambda e: int(e["seq"])):
            seq = int(event["seq"])
            if task_id in self._rewind or seq < expected:
                return
            if task_id in self._muted:  # muted while the file was read
                return
            if seq > expected:
                self.window.skip(task_id, seq - 1)
            await self.send(event, replay=True)
            expected = seq + 1

    def _forget(self, task_id: str) -> None:
        self._sent.pop(task_id, None)
        self._rewind.pop(task_id, None)
        self.window.forget(task_id)

    async def send(self, event: Event, replay: bool = False) -> None:
        """Publish one job event (its ack arrives later, in ``_acked``/``_failed``)."""
        assert self._stream_known, "ensure_stream first"
        task_id, seq = event["task_id"], int(event["seq"])
        await self.outgoing.publish(
            job_subject(self.prefix, task_id, event["type"]),
            encode_payload(event, self.max_payload),
            message_id(event),
            (task_id, seq),
        )
        self._sent[task_id] = seq
        self.published += 1
        self.republished += replay

    def _acked(self, key: tuple[str, int], duplicate: bool) -> None:
        self.acked += 1
        self.duplicates += duplicate
        self.window.ack(*key)

    def _failed(self, key: tuple[str, int]) -> None:
        task_id, seq = key
        self.failed += 1
        # resend from here, in order; later seqs that did land come back as duplicates
        self._rewind[task_id] = min(self._rewind.get(task_id, seq - 1), seq - 1)
        self._dirty[task_id] = None

    def expire(self, now: float | None = None) -> int:
        """Fail publishes whose ack is overdue; returns how many."""
        return self.outgoing.expire(now)

    def fail_in_flight(self) -> None:
        """The connection dropped: nothing in flight can be trusted to be acked."""
        self.outgoing.fail_all()

    async def settled(self, timeout: float) -> bool:
        """Wait until nothing is in flight (shutdown)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    def status(self) -> dict[str, Any]:
        return {
            "stream": STREAM,
            "acked": self.acked,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "republished": self.republished,
            "in_flight": self.in_flight,
            "catching_up": len(self._dirty),
            "held": len(self._held),
            "muted": len(self._muted),
            "acked_seq_lag": self.lag(),
        }
