from __future__ import annotations

import ssl
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from dpd.config import NatsConfig
from dpd.events.nats_options import (
    PENDING_SIZE,
    connect_options,
    reconnect_delay,
    redact_url,
    tls_context,
)


async def _noop() -> None:
    return None


async def _noop_error(err: Exception) -> None:
    return None


def options(config: NatsConfig) -> dict:
    return connect_options(
        config,
        name="dpd@n",
        reconnect_wait=0.5,
        reconnect_max=10,
        on_disconnect=_noop,
        on_reconnect=_noop,
        on_error=_noop_error,
    )


def test_reconnect_delay_doubles_up_to_the_cap() -> None:
    delays = [reconnect_delay(n, 0.5, 10, 0.5) for n in range(8)]
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert delays[5:] == [10, 10, 10]
    assert 0.4 <= reconnect_delay(0, 0.5, 10, 0.0) < reconnect_delay(0, 0.5, 10, 0.99) <= 0.6
    assert reconnect_delay(10_000, 0.5, 10, 0.5) == 10


def test_password_and_token_never_show_in_the_url() -> None:
    assert redact_url("nats://u:secret@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://tok@h") == "nats://***@h"
    assert redact_url("nats://h:4222") == "nats://h:4222"


def test_options_never_give_up_and_carry_credentials() -> None:
    config = replace(
        NatsConfig(), url="nats://h:4222", user="u", password="p", creds_file="/x.creds"
    )
    opts = options(config)
    assert opts["max_reconnect_attempts"] == -1 and opts["allow_reconnect"] is True
    assert opts["pending_size"] == PENDING_SIZE
    assert (opts["user"], opts["password"]) == ("u", "p")
    assert opts["user_credentials"] == "/x.creds"
    assert "tls" not in opts and "token" not in opts
    assert options(replace(config, token="t", user=""))["token"] == "t"


def make_ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key, cert


def test_tls_context_trusts_the_configured_ca(tmp_path: Path) -> None:
    cert, key, ca = make_ca(tmp_path)
    config = replace(NatsConfig(), url="tls://127.0.0.1:4222", tls_ca=str(ca))
    context = tls_context(config)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.get_ca_certs()
    with_client_cert = replace(config, tls_cert=str(cert), tls_key=str(key))
    assert tls_context(with_client_cert) is not None
    assert tls_context(replace(NatsConfig(), url="nats://h")) is None
    with pytest.raises(OSError):
        tls_context(replace(config, tls_ca=str(tmp_path / "missing.pem")))
