"""The key store on disk and ``dpd keys create|list|revoke`` as a real subprocess, including a
running daemon picking up keys created and revoked by the CLI without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomlkit

from dpd.http.common import PERMISSIONS as HTTP_PERMISSIONS
from dpd.keys import PERMISSIONS, KeyStore, hash_key
from tests.http.conftest import MakeApi

# ------------------------------------------------------------------ the store


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "state" / "keys.json")


def test_raw_key_is_returned_once_and_only_its_hash_is_stored(store: KeyStore) -> None:
    raw, record = store.create("alice", ["training", "training", "preprocessing"])
    assert raw.startswith("sk_") and len(raw) == 3 + 43
    assert record.permissions == ("training", "preprocessing")
    text = store.path.read_text()
    assert raw not in text and raw[3:] not in text
    assert hash_key(raw) in text
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.lookup(raw) == record
    assert store.lookup(raw + "x") is None
    assert store.lookup("sk_" + "A" * 43) is None


def test_each_write_keeps_the_previous_generation(store: KeyStore) -> None:
    store.create("alice", ["training"])
    first = store.path.read_bytes()
    store.create("bob", ["admin"])
    assert store.old_path.read_bytes() == first
    assert stat.S_IMODE(os.stat(store.old_path).st_mode) == 0o600


def test_a_corrupt_file_falls_back_to_the_previous_generation(store: KeyStore) -> None:
    raw, _ = store.create("alice", ["training"])
    store.create("bob", ["admin"])
    store.path.write_text('{"keys": [')  # torn by something outside dpd
    fresh = KeyStore(store.path)
    fresh.refresh()
    assert fresh.lookup(raw) is not None
    assert [k.user for k in fresh.list_keys()] == ["alice"]


def test_revoked_and_expired_keys_do_not_authenticate(store: KeyStore) -> None:
    raw, record = store.create("alice", ["training"])
    store.revoke(record.key_id)
    assert store.lookup(raw) is None
    assert [k.revoked for k in store.list_keys()] == [True]
    past = datetime.now(UTC) - timedelta(days=3)
    old_raw, old = store.create("bob", ["admin"], expire_days=2, now=past)
    assert old.expires_at is not None
    assert store.lookup(old_raw) is None
    assert store.lookup(old_raw, now=past + timedelta(days=1)) is not None


def test_another_process_change_is_seen_after_refresh(store: KeyStore) -> None:
    store.refresh()
    other = KeyStore(store.path)  # stands for `dpd keys` in another process
    raw, record = other.create("carol", ["model_download"])
    assert store.lookup(raw) is None
    assert store.changed_on_disk()
    assert store.refresh() is True
    assert store.lookup(raw) is not None
    assert store.refresh() is False  # nothing changed since
    other.revoke(record.key_id)
    store.refresh()
    assert store.lookup(raw) is None


def test_bad_input_is_refused(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="unknown permission"):
        store.create("alice", ["root"])
    with pytest.raises(ValueError, match="at least one"):
        store.create("alice", [])
    with pytest.raises(ValueError, match="user"):
        store.create("  ", ["training"])
    assert not store.path.exists()


def test_unreadable_entries_are_skipped(store: KeyStore) -> None:
    raw, _ = store.create("alice", ["training"])
    document = json.loads(store.path.read_text())
    document["keys"].append({"key_id": "broken"})
    document["keys"].append(dict(document["keys"][0], key_id="evil", permissions=["root"]))
    store.path.write_text(json.dumps(document))
    fresh = KeyStore(store.path)
    assert [k.key_id for k in fresh.list_keys()] == [document["keys"][0]["key_id"]]
    assert fresh.lookup(raw) is not None


def test_permissions_are_those_of_the_http_layer() -> None:
    assert PERMISSIONS == HTTP_PERMISSIONS


# ------------------------------------------------------------------ the CLI


def write_config(root: Path) -> Path:
    path = root / "dpd.toml"
    config = {
        "daemon": {"state_dir": str(root / "state"), "spool_dir": str(root / "spool")},
        "auth": {"key_expire_days": 30},
    }
    path.write_text(tomlkit.dumps(config))
    return path


def dpd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_", "API_"))}
    return subprocess.run(
        [sys.executable, "-m", "dpd", *args], capture_output=True, text=True, env=env, timeout=30
    )


def test_create_list_revoke(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    created = dpd(
        "keys", "--config", str(config), "create", "--permission", "training",
        "--permission", "preprocessing", "--user", "alice",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    raw = created.stdout.strip()
    assert raw.startswith("sk_") and "\n" not in raw
    assert "shown this once" in created.stderr and raw not in created.stderr
    store = KeyStore(tmp_path / "state" / "keys.json")
    record = store.lookup(raw) if store.refresh() else None
    assert record is not None and record.user == "alice"
    assert record.expires_at is not None  # auth.key_expire_days = 30

    listed = dpd("keys", "--config", str(config), "list")
    assert listed.returncode == 0
    assert record.key_id in listed.stdout and "training,preprocessing" in listed.stdout
    assert raw not in listed.stdout and record.key_hash not in listed.stdout
    as_json = json.loads(dpd("keys", "--config", str(config), "list", "--json").stdout)
    assert as_json[0]["key_id"] == record.key_id and "key_hash" not in as_json[0]

    revoked = dpd("keys", "--config", str(config), "revoke", record.key_id)
    assert revoked.returncode == 0
    assert "revoked" in dpd("keys", "--config", str(config), "list").stdout
    assert dpd("keys", "--config", str(config), "revoke", "key_nope").returncode == 1


def test_usage_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    bad = dpd("keys", "--config", str(config), "create", "--permission", "root")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = dpd("keys", "--config", str(tmp_path / "nope.toml"), "list")
    assert missing.returncode == 78 and "configuration error" in missing.stderr
    never = dpd("keys", "--config", str(config), "create", "--permission", "admin",
                "--expire-days", "0", "--json")  # fmt: skip
    assert never.returncode == 0 and json.loads(never.stdout)["expires_at"] is None


async def test_a_running_daemon_sees_cli_keys_without_restart(make_api: MakeApi) -> None:
    api = await make_api()
    root = api.daemon.config.daemon.state_dir.parent
    config = root / "cli.toml"
    config.write_text(
        tomlkit.dumps({"daemon": {"state_dir": str(api.daemon.config.daemon.state_dir)}})
    )
    created = await asyncio.to_thread(
        dpd, "keys", "--config", str(config), "create", "--permission", "training"
    )
    raw = created.stdout.strip()
    assert await wait_status(api, raw, 200)
    key_id = api.daemon.keys.lookup(raw).key_id  # type: ignore[union-attr]
    await asyncio.to_thread(dpd, "keys", "--config", str(config), "revoke", key_id)
    assert await wait_status(api, raw, 401)


async def wait_status(api, raw: str, wanted: int, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await api.get("/api/v1/gpu/status", raw)).status == wanted:
            return True
        await asyncio.sleep(0.05)
    return False
