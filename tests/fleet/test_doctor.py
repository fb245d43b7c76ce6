"""``dpd fleet doctor`` as an operator runs it, against real NATS deployments."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from nats.aio.client import Client as NATS

from dpd.fleet.kv import Bucket, BucketSpec, alive_spec, jobs_spec, nodes_spec
from dpd.fleet.registry import Heartbeat, register
from tests.daemon_harness import free_port
from tests.fleet.natscluster import NatsCluster
from tests.fleet.test_registry import actor, node_record

pytestmark = pytest.mark.fleet


def doctor(
    tmp_path: Path, nats: dict[str, Any], fleet: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "dpd.toml"
    config.write_text(tomlkit.dumps({"daemon": {"node": "gpu-a"}, "nats": nats, "fleet": fleet}))
    return subprocess.run(
        [sys.executable, "-m", "dpd", "fleet", "--config", str(config), "doctor", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


async def test_a_safe_cluster_with_buckets_and_nodes(
    tmp_path: Path, cluster: NatsCluster, clients: list[NATS]
) -> None:
    js = clients[0].jetstream()
    await Bucket.ensure(js, jobs_spec("doc", 3))
    nodes = await Bucket.ensure(js, nodes_spec("doc", 3))
    alive = await Bucket.ensure(js, alive_spec("doc", 3, 15))
    here, gone = actor("gpu-a"), actor("gpu-z", machine="m9")
    await register(nodes, node_record(here))
    await register(nodes, node_record(gone))
    await Heartbeat(alive, here, 3.0).start()
    monitors = ",".join(cluster.monitor_url(i) for i in range(3))
    settings = {"url": cluster.url_list, "subject_prefix": "doc"}
    done = doctor(tmp_path, settings, {"monitor_url": monitors})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.count("sync always") == 3
    assert re.search(r" v2\.1[1-9]\.\d+, jetstream on", out)
    for name in ("nats-1", "nats-2", "nats-3"):
        assert name in out
    assert "doc_jobs: R3, leader nats-" in out and "doc_alive: R3" in out
    assert "gpu-a: alive, 2 GPU(s)" in out and "gpu-z: gone" in out
    assert out.rstrip().endswith("fleet mode: safe")
    report = json.loads(doctor(tmp_path, settings, {"monitor_url": monitors}, "--json").stdout)
    assert report["safe"] and {b["bucket"] for b in report["buckets"]} == {
        "doc_jobs",
        "doc_nodes",
        "doc_alive",
    }
    assert [n["alive"] for n in report["nodes"]] == [True, False]


async def test_a_single_replica_bucket_is_unsafe(
    tmp_path: Path, cluster: NatsCluster, clients: list[NATS]
) -> None:
    await Bucket.ensure(clients[0].jetstream(), BucketSpec("doc1_jobs", 10, 1024, 1))
    done = doctor(tmp_path, {"url": cluster.url(0), "subject_prefix": "doc1"}, {})
    assert done.returncode == 1
    assert "UNSAFE: bucket doc1_jobs has 1 replica(s); fleet.replicas is 3" in done.stdout
    assert "warning: fleet.monitor_url is not set" in done.stdout
    assert "doc1_nodes: absent" in done.stdout


def test_old_or_lazy_servers_are_unsafe(
    tmp_path: Path, debian_server: NatsCluster, lazy_server: NatsCluster
) -> None:
    old = doctor(tmp_path, {"url": debian_server.url(0)}, {})
    assert old.returncode == 1 and "is 2.9.10; fleet mode needs >= 2.11" in old.stdout
    lazy = doctor(
        tmp_path, {"url": lazy_server.url(0)}, {"monitor_url": lazy_server.monitor_url(0)}
    )
    assert lazy.returncode == 1
    assert "does not run with jetstream { sync_interval: always }" in lazy.stdout
    assert "sync NOT always" in lazy.stdout


def test_no_server_answering(tmp_path: Path) -> None:
    done = doctor(tmp_path, {"url": f"nats://127.0.0.1:{free_port()}"}, {}, "--timeout", "3")
    assert done.returncode == 3 and "no NATS server at" in done.stderr
