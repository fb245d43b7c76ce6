"""PublishWindow against a real nats-server: every message ends in exactly one ack or one
failure, acks are told apart from duplicates and errors, back-pressure holds at the limit,
and a reply arriving after its message was failed changes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from dpd.events.publish_window import PublishWindow, ack_verdict
from tests.events.nats_server import NatsServer
from tests.waiting import wait_until


class Outcomes:
    """What the window reported, in the order it reported it."""

    def __init__(self) -> None:
        self.acked: list[tuple[Any, bool]] = []
        self.failed: list[Any] = []

    def on_ack(self, key: Any, duplicate: bool) -> None:
        self.acked.append((key, duplicate))

    def on_fail(self, key: Any) -> None:
        self.failed.append(key)

    def window(self, limit: int = 64, ack_timeout: float = 5.0) -> PublishWindow:
        return PublishWindow(limit, ack_timeout, self.on_ack, self.on_fail)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    await client.jetstream().add_stream(name="W", subjects=["w.>"])
    yield client
    await client.close()


async def test_every_message_is_acked_once_and_a_resend_is_a_duplicate(nc: NATS) -> None:
    seen = Outcomes()
    window = seen.window(limit=16)  # far fewer than sent: the window refills as acks come
    await window.open(nc)
    for n in range(300):
        await window.publish("w.a", json.dumps({"n": n}).encode(), f"a:{n}", n)
    await window.publish("w.a", b"{}", "a:7", "again")  # same Nats-Msg-Id as n=7
    await wait_until(lambda: len(seen.acked) == 301)
    assert sorted(key for key, dup in seen.acked if not dup) == list(range(300))
    assert [key for key, dup in seen.acked if dup] == ["again"]
    assert seen.failed == [] and window.in_flight == 0
    info = await nc.jetstream().stream_info("W")
    assert info.state.messages == 300


async def test_a_subject_outside_every_stream_fails(nc: NATS) -> None:
    seen = Outcomes()
    window = seen.window()
    await window.open(nc)
    await window.publish("nowhere.x", b"{}", "n:1", "lost")  # 503 no responders
    await wait_until(lambda: seen.failed)
    assert seen.failed == ["lost"] and seen.acked == [] and window.in_flight == 0


async def held_replies(nc: NATS, subject: str) -> list[Msg]:
    """A responder that answers nothing until the test says so."""
    held: list[Msg] = []

    async def hold(msg: Msg) -> None:
        held.append(msg)

    await nc.subscribe(subject, cb=hold)
    await nc.flush()
    return held


async def acked_after_the_replies_before(window: PublishWindow, seen: Outcomes) -> None:
    """Publish one more message and wait for its ack: replies reach the window in the order
    they were sent, so every reply sent before has been handled by then."""
    await window.publish("w.barrier", b"{}", "barrier:1", "barrier")
    await wait_until(lambda: ("barrier", False) in seen.acked)


async def test_an_overdue_ack_fails_and_a_late_one_is_ignored(nc: NATS) -> None:
    held = await held_replies(nc, "slow.x")
    seen = Outcomes()
    window = seen.window(ack_timeout=30)
    await window.open(nc)
    await window.publish("slow.x", b"{}", "s:1", "slow")
    await wait_until(lambda: held)
    assert window.expire() == 0  # not due yet
    assert window.expire(now=time.monotonic() + 31) == 1
    assert seen.failed == ["slow"] and window.in_flight == 0
    await nc.publish(held[0].reply, b'{"stream":"W","seq":1}')  # the ack, too late
    await acked_after_the_replies_before(window, seen)
    assert seen.acked == [("barrier", False)] and seen.failed == ["slow"]


async def test_a_full_window_waits_for_an_ack(nc: NATS) -> None:
    held = await held_replies(nc, "slow.x")
    seen = Outcomes()
    window = seen.window(limit=4)
    await window.open(nc)
    for n in range(4):
        await window.publish("slow.x", b"{}", f"s:{n}", n)
    fifth = asyncio.create_task(window.publish("slow.x", b"{}", "s:4", 4))
    await wait_until(lambda: len(held) == 4)
    await nc.publish("slow.x", b"marker")  # sent after the fifth would have been
    await wait_until(lambda: len(held) == 5)
    assert held[4].data == b"marker"
    assert not fifth.done() and window.in_flight == 4
    for msg in held[:2]:  # down to half the limit: room again
        await nc.publish(msg.reply, b'{"stream":"W","seq":1}')
    await asyncio.wait_for(fifth, 5)
    assert sorted(key for key, _ in seen.acked) == [0, 1] and window.in_flight == 3


async def test_losing_the_connection_fails_everything_in_flight_once(nc: NATS) -> None:
    held = await held_replies(nc, "slow.x")
    seen = Outcomes()
    window = seen.window()
    await window.open(nc)
    for n in range(5):
        await window.publish("slow.x", b"{}", f"s:{n}", n)
    await wait_until(lambda: len(held) == 5)
    window.fail_all()
    assert seen.failed == [0, 1, 2, 3, 4] and window.in_flight == 0
    for msg in held:
        await nc.publish(msg.reply, b'{"stream":"W","seq":1}')
    await acked_after_the_replies_before(window, seen)
    assert seen.acked == [("barrier", False)] and window.expire(now=float("inf")) == 0


async def test_nothing_is_sent_while_disconnected(nats_server: NatsServer, tmp_path: Path) -> None:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=5)
    try:
        seen = Outcomes()
        window = seen.window()
        await window.open(client)
        nats_server.kill()
        await wait_until(lambda: not client.is_connected)
        with pytest.raises(nats_errors.ConnectionReconnectingError):
            await window.publish("w.a", b"{}", "a:1", "never")
        assert window.in_flight == 0 and seen.failed == [] and seen.acked == []
    finally:
        await client.close()


def test_ack_verdicts() -> None:
    assert ack_verdict(b'{"stream":"DPD", "seq":5}') is False  # nats-server 2.9's spacing
    assert ack_verdict(b'{"stream":"DPD", "seq":5,"duplicate": true}') is True
    assert ack_verdict(b'{"stream":"DPD","seq":5,"duplicate":true}') is True
    assert ack_verdict(b'{"stream":"DPD","seq":5,"duplicate":false}') is False
    assert ack_verdict(b'{"stream":"DPD","domain":"error","seq":5}') is False  # decoded
    error = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
    assert ack_verdict(error) is None
    assert ack_verdict(b"") is None  # a 503 status: no stream for the subject
    assert ack_verdict(b'{"error":') is None  # not JSON
    assert ack_verdict(b'{"stream":"DPD"}') is None  # no seq: not an ack
