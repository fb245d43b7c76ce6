"""Fixtures every test folder may use. Folder-specific fixtures live in that folder's
conftest.py; fakes (the stand-in trainer, a fake NOTIFY_SOCKET...) live in tests/fakes/."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.blocking import UNGUARDED, Detected, blocking_calls_fail
from tests.daemon_harness import DaemonProcess, kill_daemons
from tests.events.nats_server import NatsServer


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop(request: pytest.FixtureRequest) -> Iterator[Detected | None]:
    """In-process async tests fail on a blocking call dpd makes on the event loop, even one
    that dpd's code caught (see tests/blocking.py). Synchronous tests are left alone."""
    folder = request.node.path.parent.name
    if not inspect.iscoroutinefunction(getattr(request, "function", None)) or folder in UNGUARDED:
        yield None
        return
    with blocking_calls_fail() as detected:
        yield detected
    if detected.calls:
        pytest.fail("blocking calls on the event loop: " + "; ".join(detected.calls))


@pytest.fixture
def dpd_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated XDG state home, and no dpd variables leaking in from the caller."""
    for name in list(os.environ):
        if name.startswith("DPD_") or name in ("API_PORT", "API_HOST", "LOG_LEVEL"):
            monkeypatch.delenv(name, raising=False)
    state = tmp_path / "xdg-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server with JetStream (file store in tmp_path) on a free 127.0.0.1 port."""
    server = NatsServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def core_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path, jetstream=False).start()
    yield server
    server.stop()


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """The daemons a test starts, killed at its end with every process of their jobs."""
    started: list[DaemonProcess] = []
    yield started
    kill_daemons(started)
