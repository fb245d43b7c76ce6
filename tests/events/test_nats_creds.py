"""``nats.creds_file``: a real ``dpd serve`` logs in to a real nats-server that trusts only
an operator's signed accounts (decentralized JWT auth) with a user's .creds file, which
nats-py can only sign with the nkeys package; without that package start-up is refused
in one line (exit 78) instead of failing at every background connect."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
import tomlkit

from tests.daemon_harness import DaemonProcess
from tests.events.harness import wait_until
from tests.events.nats_server import NatsServer
from tests.events.test_daemon_nats import nats_daemon


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[Any, bytes]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(bytearray(seed)), bytes(seed)


def _jwt(issuer: Any, subject: str, name: str, claims: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**claims, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    signature = issuer.sign(f"{head}.{payload}".encode())
    return f"{head}.{payload}.{_b64(signature)}"


def write_trust_chain(root: Path) -> tuple[Path, Path]:
    """(server configuration, user .creds file): an operator, one account it signed, one
    user the account signed."""
    operator, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user, user_seed = _keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1}  # fmt: skip
    operator_jwt = _jwt(operator, operator.public_key.decode(), "op", {"type": "operator"})
    account_pub = account.public_key.decode()
    account_jwt = _jwt(operator, account_pub, "dpd", {"type": "account", "limits": unlimited})
    user_claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    user_jwt = _jwt(account, user.public_key.decode(), "dpd", user_claims)
    for claims in (operator_jwt, account_jwt, user_jwt):
        assert claims.count(".") == 2
    server_conf = root / "trust.conf"
    server_conf.write_text(
        f"operator: {operator_jwt}\nresolver: MEMORY\n"
        f"resolver_preload: {{ {account_pub}: {account_jwt} }}\n"
    )
    creds = root / "dpd.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    return server_conf, creds


@pytest.fixture
def trusted_server(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    server_conf, creds = write_trust_chain(tmp_path)
    server = NatsServer(tmp_path, jetstream=False, args=["-c", str(server_conf)]).start()
    yield server, creds
    server.stop()


async def test_the_server_refuses_a_client_without_credentials(
    trusted_server: tuple[NatsServer, Path],
) -> None:
    server, _ = trusted_server
    with pytest.raises(Exception):  # noqa: B017 - nats-py's error type varies by version
        await nats.connect(server.url, connect_timeout=2, max_reconnect_attempts=0,
                           allow_reconnect=False)  # fmt: skip


async def test_a_daemon_logs_in_with_a_creds_file(
    tmp_path: Path, trusted_server: tuple[NatsServer, Path], daemons: list[DaemonProcess]
) -> None:
    server, creds = trusted_server
    daemon = nats_daemon(tmp_path / "d", server.url, False, step_seconds=0.05)
    daemon.config["nats"]["creds_file"] = str(creds)
    daemons.append(daemon)
    client = await nats.connect(server.url, user_credentials=str(creds), connect_timeout=2)
    subjects: list[str] = []

    async def record(message: Any) -> None:
        subjects.append(message.subject)

    try:
        await client.subscribe("dpd.>", cb=record)
        await client.flush()
        await asyncio.to_thread(daemon.start)
        await wait_until(lambda: "dpd.gpus.test-node" in subjects, timeout=15)
    finally:
        await client.close()


def test_without_nkeys_a_creds_file_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "dpd.toml"
    config.write_text(tomlkit.dumps({
        "daemon": {"state_dir": str(tmp_path / "state"), "spool_dir": str(tmp_path / "spool")},
        "nats": {"url": "nats://127.0.0.1:4222", "creds_file": str(tmp_path / "x.creds")},
    }))  # fmt: skip
    # The package made unimportable, as on a machine where it is not installed.
    program = "import sys; sys.modules['nkeys'] = None; from dpd.cli import main; sys.exit(main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPD_")}
    result = subprocess.run(
        [sys.executable, "-c", program, "serve", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert result.stderr.count("\n") == 1 and "nkeys" in result.stderr
    assert "Traceback" not in result.stderr
