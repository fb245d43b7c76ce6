"""Many JetStream publishes in flight on one connection, each PubAck matched to its message.

Why not nats-py's ``publish_async``: per message it makes a NUID, a Future with a done
callback, a semaphore round trip and a ``PubAck`` dataclass, and decodes every ack as JSON
(about 35 us of CPU a message, which capped the bridge near 12k acked events/s on 2 cores).
Here a message costs one ``nc.publish`` with a reply subject and one dict entry; the
reply subject is ``<inbox>.<n>`` with ``n`` counting up, so one wildcard subscription
catches every ack and ``n`` finds the message.

What it guarantees: ``on_ack(key, duplicate)`` is called only for a message the server
answered with a PubAck (stored, or already held within the duplicate window); anything
else ends in exactly one ``on_fail(key)`` — an error reply, no stream (503), an ack not back
within ``ack_timeout`` (``expire``) or a lost connection (``fail_all``). A key is settled
once: an ack arriving after its message was failed is ignored (numbers are never reused).
At most ``limit`` messages are in flight; ``publish`` waits for room (back-pressure on the
caller, never on the bus).

What it does not do: retry. The caller republishes failed keys (with the same
``Nats-Msg-Id``, so the stream drops what it already stored).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dpd.events.subjects import MSG_ID_HEADER

log = logging.getLogger("dpd.nats")

OnAck = Callable[[Any, bool], None]
OnFail = Callable[[Any], None]
# messages sent between two yields to the loop: the client's flusher writes them out (and
# acks are read) while more are encoded, and a long catch-up never holds the loop for long
YIELD_EVERY: Final = 256


class PublishWindow:
    """A bounded window of unacked JetStream publishes on one NATS connection."""

    def __init__(self, limit: int, ack_timeout: float, on_ack: OnAck, on_fail: OnFail) -> None:
        self.limit = limit
        self.ack_timeout = ack_timeout
        self._on_ack = on_ack
        self._on_fail = on_fail
        self._nc: NATS | None = None
        self._inbox = ""
        self._skip = 0  # length of "<inbox>." in an ack's subject
        # message number -> (key, deadline); numbers only grow, so this is in send order
        self._pending: dict[int, tuple[Any, float]] = {}
        self._next = 0
        self._oldest = 0  # every number below it is settled
        self._room = asyncio.Event()
        self._room.set()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def open(self, nc: NATS) -> None:
        """Subscribe to this connection's ack inbox (once per client: nats-py resubscribes
        by itself after a reconnect, before anything queued is sent)."""
        if nc is self._nc:
            return
        self.fail_all()
        inbox = nc.new_inbox()
        await nc.subscribe(f"{inbox}.*", cb=self._on_reply, pending_msgs_limit=4 * self.limit)
        self._nc, self._inbox, self._skip = nc, inbox, len(inbox) + 1

    async def publish(self, subject: str, payload: bytes, msg_id: str, key: Any) -> None:
        """Send one message; its ack (or failure) reaches the callbacks later. Raises the
        client's own errors when the connection cannot take it (nothing is then pending)."""
        while len(self._pending) >= self.limit:
            self._room.clear()
            await self._room.wait()
        if self._next % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # let the client's flusher send, and acks come in
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise nats_errors.ConnectionReconnectingError  # not now; the caller keeps it
        number = self._next
        self._next = number + 1
        self._pending[number] = (key, time.monotonic() + self.ack_timeout)
        try:
            await nc.publish(
                subject, payload, reply=f"{self._inbox}.{number}", headers={MSG_ID_HEADER: msg_id}
            )
        except BaseException:
            self._pending.pop(number, None)  # not sent: the caller decides what to do
            raise

    async def _on_reply(self, msg: Msg) -> None:
        try:
            number = int(msg.subject[self._skip :])
        except ValueError:
            return  # not one of ours
        entry = self._pending.pop(number, None)
        if entry is None:
            return  # already failed (timeout or disconnect) and rewound by the caller
        if len(self._pending) <= self.limit // 2:
            self._room.set()
        verdict = ack_verdict(msg.data)
        if verdict is None:
            log.debug("JetStream refused %r: %r", entry[0], msg.data[:200])
            self._on_fail(entry[0])
        else:
            self._on_ack(entry[0], verdict)

    def expire(self, now: float | None = None) -> int:
        """Fail the messages whose ack is overdue; returns how many."""
        now = time.monotonic() if now is None else now
        expired = 0
        pending = self._pending
        while self._oldest < self._next:
            entry = pending.get(self._oldest)
            if entry is not None:
                if entry[1] > now:
                    break
                del pending[self._oldest]
                self._on_fail(entry[0])
                expired += 1
            self._oldest += 1
        if expired:
            self._room.set()
        return expired

    def fail_all(self) -> None:
        """The connection dropped: no ack in flight can be trusted to come back."""
        pending, self._pending = self._pending, {}
        self._oldest = self._next
        self._room.set()
        for key, _deadline in pending.values():
            self._on_fail(key)


def ack_verdict(data: bytes) -> bool | None:
    """A PubAck's meaning: None when it is not a success (error reply, or the empty body of
    a 503 no-responders status), else whether the stream already held the message.
    The common case, a plain first-time ack, is recognised by bytes; anything mentioning
    "error" or "duplicate" (rare: replays) is decoded, whatever the server's spacing."""
    if not data:
        return None
    if b'"error"' in data or b'"duplicate"' in data:
        try:
            reply = json.loads(data)
        except ValueError:
            return None
        if not isinstance(reply, dict) or "error" in reply or "seq" not in reply:
            return None
        return reply.get("duplicate") is True
    return False if b'"seq"' in data else None
