"""The notify protocol (dpd/notify.py) against a datagram socket the test binds, as systemd
would (tests/fakes/notify_socket.py), and end to end against a real ``dpd serve``."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpd.notify import Notifier, clean_child_env, status_line
from tests.fakes.notify_socket import Message, NotifySocket
from tests.waiting import wait_until

SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """systemd 252's form: a path (/run/systemd/notify); the abstract form is tested apart."""
    for name in SYSTEMD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with NotifySocket() as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
        yield sock


@pytest.fixture
def no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SYSTEMD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def gaps(messages: list[Message]) -> list[float]:
    times = [m.received for m in messages]
    return [b - a for a, b in itertools.pairwise(times)]


# -- without systemd ------------------------------------------------------------------------


async def test_without_notify_socket_every_call_is_a_no_op(no_systemd: None) -> None:
    os.environ["WATCHDOG_USEC"] = "1000000"
    try:
        notifier = Notifier()
        assert not notifier.enabled
        sent = [notifier.ready("x"), notifier.status("x"), notifier.reloading()]
        sent += [notifier.stopping(), notifier.extend_timeout(5), notifier.send("WATCHDOG=1")]
        assert sent == [False] * 6
        assert notifier.watchdog_interval() is None
        await asyncio.wait_for(notifier.run_watchdog(), timeout=1)  # returns at once
    finally:
        del os.environ["WATCHDOG_USEC"]


def test_an_unreachable_socket_disables_notify_without_raising(
    no_systemd: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/dpd-notify")
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert "cannot connect" in caplog.text


# -- messages -------------------------------------------------------------------------------


def test_ready_status_stopping_arrive_as_systemd_reads_them(notify_socket: NotifySocket) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready("recovered 3 jobs")
    assert notifier.status(status_line(2, 5, "connected"))
    assert notifier.stopping()
    messages = notify_socket.wait_for(lambda ms: len(ms) == 3)
    assert [m.assignments for m in messages] == [
        (("READY", "1"), ("STATUS", "recovered 3 jobs")),
        (("STATUS", "2 running, 5 queued, NATS connected"),),
        (("STOPPING", "1"),),
    ]
    # NotifyAccess=main: systemd accepts only what the main process itself sends.
    assert {m.sender_pid for m in messages} == {os.getpid()}


def test_abstract_namespace_addresses_work(
    no_systemd: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NotifySocket(abstract=True) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
        assert sock.address.startswith("@")
        assert Notifier().ready()
        assert sock.wait_for_key("READY", "1").sender_pid == os.getpid()


def test_status_text_cannot_inject_other_assignments(notify_socket: NotifySocket) -> None:
    Notifier().status("job evil\nREADY=1\n  queued")
    (message,) = notify_socket.wait_for(lambda ms: len(ms) == 1)
    assert message.assignments == (("STATUS", "job evil READY=1 queued"),)


def test_status_line_says_what_the_daemon_is_doing() -> None:
    assert status_line(2, 5, "connected") == "2 running, 5 queued, NATS connected"
    assert status_line(0, 0) == "0 running, 0 queued"
    assert status_line(1, 0, "disconnected") == "1 running, 0 queued, NATS disconnected"


def test_reloading_carries_monotonic_usec_then_ready(notify_socket: NotifySocket) -> None:
    notifier = Notifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with pytest.raises(RuntimeError), notifier.reload_window("reloaded"):
        raise RuntimeError("bad config: the old one stays in force")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = notify_socket.wait_for(lambda ms: len(ms) == 2)
    assert first.has("RELOADING", "1")
    assert before <= int(first.fields["MONOTONIC_USEC"]) <= after
    assert second.assignments == (("READY", "1"), ("STATUS", "reloaded"))


def test_extend_timeout_is_in_microseconds(notify_socket: NotifySocket) -> None:
    Notifier().extend_timeout(90)
    (message,) = notify_socket.wait_for(lambda ms: len(ms) == 1)
    assert message.assignments == (("EXTEND_TIMEOUT_USEC", "90000000"),)


def test_a_receiver_that_stops_reading_never_blocks_the_sender(
    notify_socket: NotifySocket,
) -> None:
    notify_socket.receiving = False  # the collector takes at most one more datagram
    notifier = Notifier()
    started = time.monotonic()
    results = [notifier.status(f"message {i}") for i in range(5000)]
    assert time.monotonic() - started < 2.0
    assert False in results  # the queue filled up and messages were dropped, not waited for
    last_queued = max(i for i, sent in enumerate(results) if sent)
    notify_socket.receiving = True
    notify_socket.wait_for_key("STATUS", f"message {last_queued}")  # the queue is drained
    assert notifier.status("after the jam")
    notify_socket.wait_for(lambda ms: ms[-1].has("STATUS", "after the jam"))


def test_send_after_the_manager_went_away_returns_false(no_systemd: None) -> None:
    with NotifySocket() as sock:
        os.environ["NOTIFY_SOCKET"] = sock.address
        try:
            notifier = Notifier()
        finally:
            del os.environ["NOTIFY_SOCKET"]
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("still alive") is False


# -- watchdog -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("2000000", None, 2.0),
        ("2000000", "self", 2.0),
        ("2000000", "1", None),  # meant for another process
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval_from_the_environment(
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
    usec: str | None,
    pid: str | None,
    expected: float | None,
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert Notifier().watchdog_interval() == expected


async def test_watchdog_pings_at_half_the_interval(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    task = asyncio.create_task(Notifier().run_watchdog())
    try:
        await asyncio.to_thread(
            notify_socket.wait_for, lambda ms: len([m for m in ms if m.has("WATCHDOG")]) >= 4
        )
    finally:
        task.cancel()
    pings = notify_socket.with_key("WATCHDOG", "1")
    assert all(m.assignments == (("WATCHDOG", "1"),) for m in pings)
    # every 0.5 s: well inside the 1 s deadline, never the full interval
    assert all(0.4 <= gap <= 0.75 for gap in gaps(pings)), gaps(pings)


async def test_a_wedged_event_loop_stops_the_pings(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    task = asyncio.create_task(Notifier().run_watchdog())
    try:
        await asyncio.to_thread(notify_socket.wait_for, lambda ms: len(ms) >= 2)
        stall_start = time.monotonic()
        time.sleep(1.0)  # the stall under test: the loop is blocked, as a wedged daemon's
        stall_end = time.monotonic()
        await asyncio.to_thread(
            notify_socket.wait_for, lambda ms: ms[-1].received > stall_end + 0.15
        )
    finally:
        task.cancel()
    during = [m for m in notify_socket.messages if stall_start < m.received < stall_end - 0.05]
    assert during == []  # systemd would have seen the deadline (0.2 s) pass
    assert max(gaps(notify_socket.messages)) >= 0.9


async def test_an_unhealthy_component_withholds_the_ping(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    healthy, asked = True, 0

    def health() -> bool:
        nonlocal asked
        asked += 1
        return healthy

    task = asyncio.create_task(Notifier().run_watchdog(health))
    try:
        await asyncio.to_thread(notify_socket.wait_for, lambda ms: len(ms) >= 2)
        healthy = False
        sick_since = time.monotonic() + 0.01
        asked_then = asked
        await wait_until(lambda: asked >= asked_then + 3)  # three periods withheld
        count = len([m for m in notify_socket.messages if m.received > sick_since])
        healthy = True
        await asyncio.to_thread(notify_socket.wait_for, lambda ms: ms[-1].received > sick_since)
    finally:
        task.cancel()
    assert count == 0


# -- children -------------------------------------------------------------------------------


def test_children_never_inherit_systemd_variables() -> None:
    env = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "42",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "42",
        "LISTEN_FDNAMES": "http",
        "INVOCATION_ID": "abc",
        "JOURNAL_STREAM": "8:123",
        "NCCL_P2P_DISABLE": "1",
    }
    assert clean_child_env(env) == {"PATH": "/usr/bin", "NCCL_P2P_DISABLE": "1"}
    assert "NOTIFY_SOCKET" in env  # the input is left alone


def test_unset_environment_hides_the_socket_from_later_subprocesses(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = Notifier(unset_environment=True)
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
    assert notifier.watchdog_interval() == 1.0
    assert notifier.ready()
    notify_socket.wait_for_key("READY", "1")


# -- end to end: a real ``dpd serve`` -------------------------------------------------------


def _serve_speaks_notify() -> bool:
    try:
        import dpd.daemon  # noqa: F401
    except ImportError:
        return False
    root = Path(__file__).resolve().parent.parent / "dpd"
    wiring = (root / "daemon.py").read_text() + (root / "cli" / "serve.py").read_text()
    return "dpd.notify" in wiring or "Notifier" in wiring


needs_serve = pytest.mark.skipif(
    not _serve_speaks_notify(), reason="dpd serve does not use dpd.notify yet (lead wires it)"
)


@pytest.fixture
def served(tmp_path: Path) -> Iterator:
    from tests.daemon_harness import DaemonProcess

    with NotifySocket(abstract=True) as sock:
        daemon = DaemonProcess(tmp_path)
        daemon.env = {"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "1000000"}
        yield daemon, sock
        daemon.stop(signal.SIGKILL)


@needs_serve
def test_serve_is_ready_only_once_healthz_answers_then_stops(served: tuple) -> None:
    daemon, sock = served
    daemon.start(wait=False)
    ready = sock.wait_for_key("READY", "1", timeout=20)
    assert daemon.healthy(), "READY=1 was sent before /healthz answered"
    assert ready.sender_pid == daemon.process.pid  # NotifyAccess=main
    assert not [m for m in sock.messages if m.received < ready.received and m.has("READY")]
    pings = sock.wait_for(lambda ms: len([m for m in ms if m.has("WATCHDOG", "1")]) >= 2)
    assert any("running" in m.fields.get("STATUS", "") for m in pings)
    assert daemon.stop(signal.SIGTERM) == 0
    stopping = sock.wait_for_key("STOPPING", "1")
    assert stopping.sender_pid == daemon.process.pid


@needs_serve
def test_sighup_reloads_between_reloading_and_ready(served: tuple) -> None:
    daemon, sock = served
    daemon.start(wait=False)
    first_ready = sock.wait_for_key("READY", "1", timeout=20)
    daemon.config["daemon"]["log_level"] = "WARNING"
    daemon.config_path.write_text(__import__("tomlkit").dumps(daemon.config))
    daemon.process.send_signal(signal.SIGHUP)
    reloading = sock.wait_for_key("RELOADING", "1")
    assert int(reloading.fields["MONOTONIC_USEC"]) > 0
    sock.wait_for(
        lambda ms: any(m.has("READY", "1") and m.received > reloading.received for m in ms)
    )
    assert first_ready.received < reloading.received
    assert daemon.healthy()
