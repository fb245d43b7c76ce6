"""How dpd connects to NATS: credentials, TLS, reconnection and the client's buffer.

Choices made on purpose (reliability.md §5.1):
- ``max_reconnect_attempts=-1``: never give up. That also makes the first connect loop
  forever, so the bridge connects in a background task and nothing waits on it.
- Reconnects back off exponentially (``reconnect_delay``, with jitter, capped) through the
  client's reconnect handler where the installed nats-py has one; the first connect retries
  every ``reconnect_wait`` seconds.
- ``pending_size`` is the client's write batch, not an outage buffer: the bridge hands the
  client nothing while disconnected (it keeps its own counted queue, and in JetStream mode
  the truth is events.jsonl), so only what races a disconnect lands there. It stays at
  1 MiB: large enough to batch a burst, small enough that a publish meeting a full buffer
  waits for the socket (back-pressure on the bridge's own task, never on the bus).
"""

from __future__ import annotations

import inspect
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from nats.aio.client import Client as NATS

from dpd.config import NatsConfig

PENDING_SIZE: Final = 1024 * 1024
CONNECT_TIMEOUT: Final = 2
PING_INTERVAL: Final = 20


def reconnect_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Seconds before reconnect attempt ``attempt`` (0-based); ``jitter`` in [0, 1)."""
    delay: float = min(cap, base * 2.0 ** min(attempt, 30))
    return delay * (0.8 + 0.4 * jitter)


def redact_url(url: str) -> str:
    """The URL without a password or token, for status pages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def tls_context(config: NatsConfig) -> ssl.SSLContext | None:
    """A client TLS context when the URL or the config asks for TLS (reads files: blocking)."""
    wants_tls = config.url.startswith(("tls://", "wss://")) or bool(
        config.tls_ca or config.tls_cert
    )
    if not wants_tls:
        return None
    context = ssl.create_default_context(cafile=config.tls_ca or None)
    if config.tls_cert:
        context.load_cert_chain(config.tls_cert, config.tls_key or None)
    return context


Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


def connect_options(
    config: NatsConfig,
    *,
    name: str,
    reconnect_wait: float,
    reconnect_max: float,
    on_disconnect: Callback,
    on_reconnect: Callback,
    on_error: ErrorCallback,
) -> dict[str, Any]:
    """Keyword arguments for ``nats.aio.client.Client.connect`` (blocking: may read TLS
    files; call from a thread)."""
    options: dict[str, Any] = {
        "servers": [u.strip() for u in config.url.split(",") if u.strip()],  # a cluster's list
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": reconnect_wait,
        "connect_timeout": CONNECT_TIMEOUT,
        "ping_interval": PING_INTERVAL,
        "pending_size": PENDING_SIZE,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "error_cb": on_error,
    }
    if config.user:
        options["user"] = config.user
        options["password"] = config.password
    if config.token:
        options["token"] = config.token
    if config.creds_file:
        options["user_credentials"] = config.creds_file
    context = tls_context(config)
    if context is not None:
        options["tls"] = context
    if _supports("reconnect_to_server_handler"):
        options["reconnect_to_server_handler"] = _backoff_handler(reconnect_wait, reconnect_max)
    return options


def _supports(option: str) -> bool:
    return option in inspect.signature(NATS.connect).parameters


def _backoff_handler(base: float, cap: float) -> Callable[[list[Any], dict[str, Any]], Any]:
    def choose(servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        server = servers[0] if servers else None
        attempts = int(getattr(server, "reconnects", 0) or 0)
        return server, reconnect_delay(attempts, base, cap, random.random())

    return choose
