"""Browser sessions: an API key exchanged for an HttpOnly cookie, and one-time login links.

Guarantees:
- The cookie (``dpd_session``) is a 256-bit random token, HttpOnly, SameSite=Strict, Path=/,
  with Max-Age = ``http.session_hours``; only its SHA-256 is kept in memory, so a memory
  listing of sessions cannot be replayed as cookies.
- A session is as strong as its key and no stronger: on every request its key is checked
  again through the authenticator (``identify``), so a revoked or expired key — or a changed
  bootstrap key — ends the session at its next request (401). Its permissions are the key's.
- A request authenticated by the cookie that changes something (POST, PUT, PATCH, DELETE)
  must carry the session's CSRF token in ``X-CSRF-Token`` (403 otherwise): a cross-site form
  cannot read the token, and SameSite=Strict already keeps the cookie off cross-site requests.
- A request authenticated by the cookie that names another origin (``Origin``) is refused
  (403): browsers send ``Origin`` on every cross-origin request and on WebSocket handshakes,
  so no other site's page can use the session, not even over a WebSocket (where neither
  SameSite nor a CSRF header is guaranteed to apply).
- A login link's token is used at most once and expires (``LINK_SECONDS``).

Known weaknesses: sessions live in the daemon's memory only, so a restart logs every browser
out (they log in again, or open a fresh link). The raw key of a session is held in memory to
re-check it; a session opened from a link the daemon printed at start (``local_link``) has no
key behind it and lives until it expires or logs out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from dpd.errors import Forbidden, Unauthorized
from dpd.http.common import Principal

COOKIE: Final = "dpd_session"
CSRF_HEADER: Final = "X-CSRF-Token"
LOGIN_PATH: Final = "/login"
MUTATING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LINK_SECONDS: Final = 600.0  # a link asked for through the API (``dpd open`` uses it at once)
START_LINK_SECONDS: Final = 3600.0  # the link ``dpd serve`` prints when it starts
MAX_SESSIONS: Final = 10_000
MAX_LINKS: Final = 1_000

Identify = Callable[[str], Awaitable[Principal | None]]


@dataclass(frozen=True)
class Session:
    """One logged-in browser. ``raw_key`` is re-checked on every request; ``fixed`` is the
    principal of a session opened from the daemon's own start-up link (no key behind it)."""

    csrf_token: str
    expires_at: float  # unix time
    raw_key: str | None = None
    fixed: Principal | None = None


@dataclass(frozen=True)
class Opened:
    """A new session and its cookie value (shown to the browser once, never stored)."""

    cookie: str
    session: Session
    max_age: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """In-memory sessions and login links; every method is cheap and never does I/O."""

    def __init__(self, session_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.session_seconds = session_seconds
        self.clock = clock
        self._sessions: dict[str, Session] = {}  # sha256(cookie) -> session
        self._links: dict[str, tuple[Session, float]] = {}  # sha256(token) -> (template, expiry)

    # ------------------------------------------------------------ sessions

    def open(self, raw_key: str | None = None, fixed: Principal | None = None) -> Opened:
        self._forget_expired()
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
            for digest in list(self._sessions)[: len(self._sessions) - MAX_SESSIONS + 1]:
                del self._sessions[digest]
        cookie = secrets.token_urlsafe(32)
        session = Session(
            secrets.token_urlsafe(32), self.clock() + self.session_seconds, raw_key, fixed
        )
        self._sessions[_digest(cookie)] = session
        return Opened(cookie, session, int(self.session_seconds))

    def get(self, cookie: str) -> Session | None:
        session = self._sessions.get(_digest(cookie))
        if session is None:
            return None
        if session.expires_at <= self.clock():
            self.close(cookie)
            return None
        return session

    def close(self, cookie: str) -> None:
        self._sessions.pop(_digest(cookie), None)

    def close_for_key(self, raw_keys: Callable[[str], bool]) -> int:
        """Forget every session whose key ``raw_keys`` matches; how many were closed."""
        doomed = [d for d, s in self._sessions.items() if s.raw_key and raw_keys(s.raw_key)]
        for digest in doomed:
            del self._sessions[digest]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._sessions)

    def _forget_expired(self) -> None:
        now = self.clock()
        for digest in [d for d, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[digest]

    # ------------------------------------------------------------ one-time links

    def make_link(
        self,
        raw_key: str | None = None,
        fixed: Principal | None = None,
        seconds: float = LINK_SECONDS,
    ) -> tuple[str, float]:
        """A one-time token for ``/login?token=`` and its expiry (unix time)."""
        now = self.clock()
        for digest in [d for d, (_, exp) in self._links.items() if exp <= now]:
            del self._links[digest]
        if len(self._links) >= MAX_LINKS:
            del self._links[next(iter(self._links))]
        token = secrets.token_urlsafe(32)
        expires = now + seconds
        self._links[_digest(token)] = (Session("", 0.0, raw_key, fixed), expires)
        return token, expires

    def open_from_link(self, token: str) -> Opened | None:
        """The session a link opens, or None if it is unknown, used or expired."""
        if not token:
            return None
        found = self._links.pop(_digest(token), None)
        if found is None or found[1] <= self.clock():
            return None
        template = found[0]
        return self.open(template.raw_key, template.fixed)


SESSIONS: web.AppKey[SessionStore] = web.AppKey("dpd.sessions", SessionStore)


def session_cookie(request: web.Request) -> str | None:
    return request.cookies.get(COOKIE) or None


async def cookie_principal(
    request: web.Request, sessions: SessionStore, identify: Identify
) -> Principal | None:
    """Who the session cookie says is calling; None without a cookie. 401 for an unknown or
    expired session or one whose key no longer works; 403 for a mutation without its CSRF
    token."""
    cookie = session_cookie(request)
    if cookie is None:
        return None
    session = sessions.get(cookie)
    if session is None:
        raise Unauthorized("the session has expired or was logged out: log in again")
    check_origin(request)
    if request.method in MUTATING:
        check_csrf(request, session)
    who = session.fixed
    if who is None and session.raw_key is not None:
        who = await identify(session.raw_key)
    if who is None:
        sessions.close(cookie)
        raise Unauthorized("the session's API key was revoked or has expired")
    return who


def check_origin(request: web.Request) -> None:
    origin = request.headers.get("Origin")
    if origin is None:
        return
    # behind a proxy that rewrites Host, the browser's host arrives as X-Forwarded-Host (a
    # page of another site cannot set that header without a CORS preflight dpd never grants)
    hosts = {request.host, request.headers.get("X-Forwarded-Host", "")}
    if urlsplit(origin).netloc not in hosts:
        raise Forbidden("the session cookie is not accepted from another origin")


def check_csrf(request: web.Request, session: Session) -> None:
    sent = request.headers.get(CSRF_HEADER, "")
    if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        raise Forbidden(f"a request made with the session cookie needs the {CSRF_HEADER} header")


def set_session_cookie(response: web.StreamResponse, opened: Opened, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        opened.cookie,
        max_age=opened.max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
