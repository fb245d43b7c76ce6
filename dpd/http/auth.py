"""Who is calling: ``Authorization: Bearer <key>`` on every /api/v1 route (DESIGN §4).

Missing or unknown (revoked, expired) key: 401. A valid key without the permission a route
needs: 403, raised by the route through ``require_permission``. With ``auth.enabled = false``
(a single-user laptop) every caller is the local administrator. The bootstrap key from the
environment (``API_SECRET_KEY``) is an admin key, compared in constant time; every other key
is looked up in the key store (``dpd.keys``), which is re-read when ``dpd keys`` changed it
on disk, so a new or revoked key takes effect without a restart (within ``refresh_interval``).

WebSocket routes (``/api/v1/ws/``) also take the key as the ``token`` query parameter, since
browsers cannot set headers on a WebSocket handshake.

Requests for unknown routes or methods pass through untouched: they get their 404/405
whether or not a key was sent (the route table is public in the OpenAPI document anyway).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from dpd.config import AuthConfig
from dpd.errors import Unauthorized
from dpd.http.common import PRINCIPAL, Principal
from dpd.http.sessions import SessionStore, cookie_principal
from dpd.keys import ApiKey, KeyStore

log = logging.getLogger("dpd.http.auth")

API_PREFIX = "/api/v1/"
WS_PREFIX = "/api/v1/ws/"  # WebSocket routes also accept the key as ?token=
# /auth/session checks its caller itself: logging in is how a browser gets credentials
OPEN_PATHS = frozenset({"/api/v1/openapi.json", "/api/v1/auth/session"})
LOCAL_ADMIN = Principal("local", "local", frozenset({"admin"}))
BOOTSTRAP = Principal("bootstrap", "bootstrap", frozenset({"admin"}))
DEFAULT_REFRESH_INTERVAL = 1.0  # seconds between looks at keys.json's inode/mtime

# key -> Principal or None; may do I/O (run in a thread by its implementation)
KeyChecker = Callable[[str], Awaitable[Principal | None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The daemon's key store, for the routes that create keys (POST /auth/generate-key).
KEY_STORE: web.AppKey[KeyStore] = web.AppKey("dpd.key_store", KeyStore)


def bearer_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def principal_of(key: ApiKey) -> Principal:
    return Principal(key.key_id, key.user, frozenset(key.permissions))


class StoreChecker:
    """A ``KeyChecker`` over a ``KeyStore``: in-memory lookups, and at most one look at the
    file per ``refresh_interval`` (in a worker thread) to pick up other processes' changes."""

    def __init__(self, store: KeyStore, refresh_interval: float = DEFAULT_REFRESH_INTERVAL):
        self.store = store
        self.refresh_interval = refresh_interval
        self._next_refresh = 0.0

    async def __call__(self, raw_key: str) -> Principal | None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_interval
            try:
                await asyncio.to_thread(self.store.refresh)
            except OSError as err:
                log.error(
                    "cannot re-read %s (%s); using the keys read before", self.store.path, err
                )
        found = self.store.lookup(raw_key)
        return principal_of(found) if found is not None else None


class Authenticator:
    """The auth middleware and its settings; ``set_config`` applies a reloaded [auth]."""

    def __init__(
        self, enabled: bool, bootstrap_key: str = "", checker: KeyChecker | None = None
    ) -> None:
        self.enabled = enabled
        self.bootstrap_key = bootstrap_key
        self.checker = checker
        self.sessions: SessionStore | None = None  # browser sessions (dpd.http.sessions)

    def set_config(self, auth: AuthConfig) -> None:
        self.enabled = auth.enabled
        self.bootstrap_key = auth.bootstrap_key

    async def identify(self, raw_key: str) -> Principal | None:
        if self.bootstrap_key and hmac.compare_digest(
            raw_key.encode(), self.bootstrap_key.encode()
        ):
            return BOOTSTRAP
        if self.checker is not None:
            return await self.checker(raw_key)
        return None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            not request.path.startswith(API_PREFIX)
            or request.path in OPEN_PATHS
            or request.match_info.http_exception is not None  # unknown route: 404/405 as is
        ):
            return await handler(request)
        if not self.enabled:
            request[PRINCIPAL] = LOCAL_ADMIN
            return await handler(request)
        raw_key = bearer_key(request)
        if raw_key is None and request.path.startswith(WS_PREFIX):
            raw_key = request.query.get("token") or None  # browsers cannot set headers
        if raw_key is None and self.sessions is not None:  # the dashboard's session cookie
            by_cookie = await cookie_principal(request, self.sessions, self.identify)
            if by_cookie is not None:
                request[PRINCIPAL] = by_cookie
                return await handler(request)
        if raw_key is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        who = await self.identify(raw_key)
        if who is None:
            raise Unauthorized("invalid, revoked or expired API key")
        request[PRINCIPAL] = who
        return await handler(request)


def auth_middleware(
    enabled: bool, bootstrap_key: str, checker: KeyChecker | None = None
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The middleware alone, for callers that never change the settings."""
    return Authenticator(enabled, bootstrap_key, checker).middleware
