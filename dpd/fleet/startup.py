"""Is this NATS safe for fleet mode? The start-up check (FLEET.md §3.4, §3.6, §11).

Fleet mode refuses, with one line, a NATS server below 2.11 (per-subject CAS could desync
across a leader change before nats-server#6194; 2.9.15–2.9.20 accepted two concurrent CAS,
#4320) or without JetStream, and — when ``fleet.require_sync_always`` is set — a server whose
``/varz`` does not show ``jetstream.config.sync_always`` (Jepsen 2.12.1 lost acknowledged
writes with the default two-minute fsync). Without ``fleet.monitor_url`` the sync setting
cannot be read and is only warned about.

An unreachable NATS is not a refusal (``NatsUnreachable``): the daemon starts and fleet work
waits for the connection (§9.5). The check must then run again when it connects, before
anything is claimed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from dpd.config import Config, NatsConfig
from dpd.errors import ConfigError
from dpd.events.nats_options import redact_url, tls_context

log = logging.getLogger("dpd.fleet.startup")

MIN_VERSION: Final = (2, 11, 0)
VERSION_RE: Final = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
CHECK_TIMEOUT: Final = 10.0
DEFAULT_PORT: Final = 4222
API_TIMEOUT: Final = 5.0  # for JetStream's account info


class FleetUnsafe(ConfigError):
    """The NATS deployment would make fleet mode unsafe; the message is one line."""


class NatsUnreachable(Exception):
    """No NATS server answered within the timeout."""


class JetStreamNotReady(NatsUnreachable):
    """The server runs JetStream but its API did not answer now; ask again later."""


NOT_ENABLED: Final = frozenset({10039, 10076})  # "JetStream not enabled" (for the account)


def says_disabled(err: Exception) -> bool:
    """Is this API error the server's own word that JetStream is off? No responders on the
    API subject (a server without JetStream) is a 503 with no error code. Pure."""
    if not isinstance(err, nats.js.errors.APIError):
        return False
    if err.err_code in NOT_ENABLED:
        return True
    return isinstance(err, nats.js.errors.ServiceUnavailableError) and err.err_code is None


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = VERSION_RE.match(text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def server_urls(url: str) -> list[str]:
    """``[nats] url`` may list several servers, comma-separated."""
    return [u.strip() for u in url.split(",") if u.strip()]


def monitor_urls(text: str) -> list[str]:
    return [u.strip().rstrip("/") for u in text.split(",") if u.strip()]


@dataclass(frozen=True)
class ServerFacts:
    """What one NATS server says about itself."""

    where: str  # its client URL or monitoring URL (redacted)
    version: str
    name: str = ""
    jetstream: bool | None = None
    sync_always: bool | None = None  # None: not known (no monitoring URL)
    cluster: str | None = None
    api_level: int | None = None
    answered: bool = True  # False: its monitoring URL did not answer


def problems(facts: Sequence[ServerFacts], require_sync_always: bool) -> list[str]:
    """Why these servers are unsafe for fleet mode (empty: they are fine). Pure."""
    out = []
    for f in facts:
        if not f.answered:
            if require_sync_always:
                out.append(
                    f"NATS monitoring at {f.where} did not answer (fleet.require_sync_always)"
                )
            continue
        version = parse_version(f.version)
        if version is None or version < MIN_VERSION:
            out.append(
                f"nats-server at {f.where} is {f.version or 'of unknown version'}; fleet mode "
                f"needs >= 2.11 (CAS across leader changes, nats-server#6194)"
            )
        elif f.api_level is not None and f.api_level < 1:
            out.append(
                f"JetStream at {f.where} answers with API level {f.api_level}; fleet mode needs "
                "level 1 (a server of 2.11 or later) for consistent CAS"
            )
        if f.jetstream is False:
            out.append(f"nats-server at {f.where} has JetStream disabled")
        if require_sync_always and f.sync_always is False:
            out.append(
                f"nats-server at {f.where} does not run with jetstream {{ sync_interval: always }}"
                " (fleet.require_sync_always)"
            )
    return out


async def listening(urls: Sequence[str], timeout: float) -> bool:
    """Does any server accept a TCP connection? nats-py's first connect tries again until
    its caller gives up, even with reconnects off: without this a daemon whose NATS is
    down would wait the whole check timeout before it serves anything."""
    for url in urls:
        parsed = urlsplit(url if "://" in url else f"nats://{url}")
        if parsed.scheme not in ("nats", "tls"):
            return True  # websocket and others: left to the client
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(
                    parsed.hostname or "127.0.0.1", parsed.port or DEFAULT_PORT
                )
        except (OSError, TimeoutError, ValueError):
            continue
        writer.close()
        return True
    return False


async def connect_once(config: NatsConfig, name: str, timeout: float = CHECK_TIMEOUT) -> NATS:
    """A connection for checks and tools: every listed server tried, no endless retry."""
    if not await listening(server_urls(config.url), min(2.0, timeout)):
        raise NatsUnreachable(f"no NATS server at {redact_url(config.url)} accepts connections")
    options: dict[str, Any] = {
        "servers": server_urls(config.url),
        "name": name,
        "allow_reconnect": False,
        "connect_timeout": min(2.0, timeout),
    }
    if config.user:
        options.update(user=config.user, password=config.password)
    if config.token:
        options["token"] = config.token
    if config.creds_file:
        options["user_credentials"] = config.creds_file
    context = await asyncio.to_thread(tls_context, config)
    if context is not None:
        options["tls"] = context
    try:
        return await asyncio.wait_for(nats.connect(**options), timeout)
    except (OSError, TimeoutError, nats.errors.Error) as err:
        raise NatsUnreachable(
            f"no NATS server at {redact_url(config.url)} answered: {err!r}"
        ) from err


async def connected_facts(nc: NATS, timeout: float = API_TIMEOUT) -> ServerFacts:
    """The connected server's version (its INFO) and JetStream API level.

    Only a server that says so is "JetStream disabled": its INFO does not announce JetStream
    and the API has no responder, or the API answers "not enabled". A server that announces
    JetStream but does not answer now (a meta-leader election, a restart in the cluster) is
    ``JetStreamNotReady``, never a refusal: a daemon restarted during a NATS leader kill
    would otherwise exit with a configuration error."""
    info: dict[str, Any] = dict(getattr(nc, "_server_info", {}) or {})
    where = redact_url(str(nc.connected_url.geturl())) if nc.connected_url else "?"
    announced = bool(info.get("jetstream"))  # nats-server's INFO names JetStream when on
    try:
        account = await nc.jetstream(timeout=timeout).account_info()
        jetstream, level = True, getattr(account.api, "level", None)
    except (nats.js.errors.Error, nats.errors.Error) as err:
        if announced or not says_disabled(err):
            raise JetStreamNotReady(f"JetStream at {where} did not answer: {err!r}") from err
        jetstream, level = False, None
    return ServerFacts(
        where=where,
        version=str(info.get("version", "")),
        name=str(info.get("server_name", "")),
        jetstream=jetstream,
        cluster=info.get("cluster"),
        api_level=level,
    )


async def varz(session: aiohttp.ClientSession, url: str) -> ServerFacts:
    """``/varz`` of one monitoring URL (version, JetStream, sync setting, cluster)."""
    async with session.get(f"{url}/varz") as response:
        data = await response.json(content_type=None)
    jetstream = data.get("jetstream") or {}
    config = jetstream.get("config") or {}
    return ServerFacts(
        where=url,
        version=str(data.get("version", "")),
        name=str(data.get("server_name", "")),
        jetstream=bool(config),
        sync_always=bool(config.get("sync_always", False)),
        cluster=(data.get("cluster") or {}).get("name"),
    )


async def monitored_facts(urls: Sequence[str], timeout: float = 5.0) -> list[ServerFacts]:
    """``/varz`` of every monitoring URL; one that does not answer is an unknown server."""
    out = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for url in urls:
            try:
                out.append(await varz(session, url))
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                log.warning("NATS monitoring at %s did not answer: %r", url, err)
                out.append(ServerFacts(where=url, version="", answered=False))
    return out


async def gather_facts(config: Config, timeout: float = CHECK_TIMEOUT) -> list[ServerFacts]:
    """The connected server's facts, then every monitored server's."""
    nc = await connect_once(config.nats, f"{config.daemon.node}-fleet-check", timeout)
    try:
        facts = [await connected_facts(nc, min(API_TIMEOUT, timeout))]
    finally:
        await nc.close()
    facts += await monitored_facts(monitor_urls(config.fleet.monitor_url))
    return facts


async def check_fleet_nats(config: Config, timeout: float = CHECK_TIMEOUT) -> list[ServerFacts]:
    """Refuse (``FleetUnsafe``, one line) a NATS deployment unsafe for fleet mode; warn
    when the sync setting cannot be read. ``NatsUnreachable`` when no server answers."""
    facts = await gather_facts(config, timeout)
    found = problems(facts, config.fleet.require_sync_always)
    if found:
        raise FleetUnsafe(
            found[0] if len(found) == 1 else f"{found[0]} (and {len(found) - 1} more)"
        )
    if not config.fleet.monitor_url:
        log.warning(
            "fleet: set fleet.monitor_url to check that every NATS server runs with "
            "sync_interval: always (without it, a power loss can lose acknowledged jobs)"
        )
    elif not all(f.sync_always for f in facts if f.sync_always is not None):
        log.warning("fleet: a NATS server runs without sync_interval: always (see /varz)")
    return facts
