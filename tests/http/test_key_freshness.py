"""A key works on the request right after ``dpd keys create`` returns, and a revoked key is
refused on the request right after ``dpd keys revoke`` returns: a real ``dpd serve`` with auth,
the real CLI as a subprocess, several rounds in a row (each round also makes a request just
before the change, which is what a polling window would have hidden the change behind)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.daemon_harness import DaemonProcess

ADMIN = "freshness-bootstrap-admin-key"
ROUNDS = 6


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    root = tmp_path_factory.mktemp("fresh")
    running = DaemonProcess(root, {"auth": {"enabled": True, "bootstrap_key": ADMIN}}).start()
    yield running
    running.stop(signal.SIGTERM)


def dpd_keys(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_", "API_"))}
    command = [sys.executable, "-m", "dpd", "keys", "--config", str(daemon.config_path), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return result


def status_with(daemon: DaemonProcess, key: str) -> int:
    return daemon.request("GET", "/api/v1/gpu/status", key=key)[0]


def test_created_keys_work_and_revoked_keys_fail_on_the_next_request(
    daemon: DaemonProcess,
) -> None:
    for round_number in range(ROUNDS):
        assert status_with(daemon, ADMIN) == 200  # the daemon has just looked at its keys
        created = json.loads(
            dpd_keys(daemon, "create", "--permission", "training", "--json").stdout
        )
        raw, key_id = created["api_key"], created["key_id"]
        assert status_with(daemon, raw) == 200, f"round {round_number}: new key refused"
        assert status_with(daemon, raw) == 200
        dpd_keys(daemon, "revoke", key_id)
        assert status_with(daemon, raw) == 401, f"round {round_number}: revoked key accepted"
