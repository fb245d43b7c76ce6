from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.events.nats_server import NatsServer


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
