"""The dashboard's login (``/auth/session``), one-time login links (``/auth/login-link``)
and the keys page (``GET /auth/keys``, ``DELETE /auth/keys/{key_id}``).

``/auth/session`` is open in the auth middleware: logging in is how a browser gets its
credentials, so each handler checks its caller itself (the key in the body, the cookie, or
``Authorization: Bearer``), and these routes are added directly. The rest go through the
middleware like every /api/v1 route and are declared in ``ROUTES`` (``dpd.http.routing``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from dpd.errors import BadRequest, FieldError, Unauthorized, ValidationFailed
from dpd.http.auth import KEY_STORE, LOCAL_ADMIN, Authenticator, bearer_key
from dpd.http.common import Principal, envelope_response, principal, rate_limit
from dpd.http.routing import Route, add_routes
from dpd.http.sessions import (
    LOGIN_PATH,
    SESSIONS,
    START_LINK_SECONDS,
    Session,
    SessionStore,
    check_csrf,
    clear_session_cookie,
    cookie_principal,
    session_cookie,
    set_session_cookie,
)
from dpd.http.views import iso_from_unix

PREFIX = "/api/v1/auth"
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("dpd.authenticator", Authenticator)


def install(app: web.Application, authenticator: Authenticator, session_hours: float) -> None:
    """Give the app (and its auth middleware) a session store; before ``setup``."""
    store = SessionStore(session_hours * 3600.0)
    authenticator.sessions = store
    app[SESSIONS] = store
    app[AUTHENTICATOR] = authenticator


def setup(app: web.Application) -> None:
    # open (dpd.http.auth.OPEN_PATHS): no key is checked before these handlers
    app.router.add_post(f"{PREFIX}/session", log_in)
    app.router.add_get(f"{PREFIX}/session", get_session)
    app.router.add_delete(f"{PREFIX}/session", log_out)
    add_routes(app, ROUTES)


def session_view(
    who: Principal, auth_enabled: bool, session: Session | None = None
) -> dict[str, Any]:
    return {
        "user": who.user,
        "key_id": who.key_id,
        "permissions": sorted(who.permissions),
        "csrf_token": session.csrf_token if session is not None else None,
        "expires_at": iso_from_unix(session.expires_at) if session is not None else None,
        "auth_enabled": auth_enabled,
    }


def _api_key_from_body(body: bytes) -> str:
    try:
        document = json.loads(body or b"{}")
    except ValueError as err:
        raise BadRequest("request body is not valid JSON") from err
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    key = document.get("api_key")
    if not isinstance(key, str) or not key.strip():
        raise ValidationFailed([FieldError("api_key", "the API key to log in with")])
    return key.strip()


async def log_in(request: web.Request) -> web.Response:
    """JSON only: a cross-site form cannot send it (without a CORS preflight this daemon
    never grants), so no other site can log a browser in under its own key."""
    authenticator = request.app[AUTHENTICATOR]
    if request.content_type != "application/json":
        raise BadRequest("send the key as a JSON body (Content-Type: application/json)")
    await rate_limit(request, "auth")  # per client address: no key is known yet
    raw_key = _api_key_from_body(await request.read())
    if not authenticator.enabled:
        return envelope_response(session_view(LOCAL_ADMIN, False), 200, "auth is disabled")
    who = await authenticator.identify(raw_key)
    if who is None:
        raise Unauthorized("invalid, revoked or expired API key")
    opened = request.app[SESSIONS].open(raw_key=raw_key)
    response = envelope_response(session_view(who, True, opened.session), 200, "logged in")
    set_session_cookie(response, opened, secure=request.secure)
    return response


async def get_session(request: web.Request) -> web.Response:
    """The current session (cookie) or key (Bearer); 401 without either."""
    authenticator = request.app[AUTHENTICATOR]
    if not authenticator.enabled:
        return envelope_response(session_view(LOCAL_ADMIN, False))
    raw_key = bearer_key(request)
    if raw_key is not None:
        who = await authenticator.identify(raw_key)
        if who is None:
            raise Unauthorized("invalid, revoked or expired API key")
        return envelope_response(session_view(who, True))
    sessions = request.app[SESSIONS]
    by_cookie = await cookie_principal(request, sessions, authenticator.identify)
    if by_cookie is None:
        raise Unauthorized("not logged in: send the session cookie or an API key")
    cookie = session_cookie(request)
    session = sessions.get(cookie) if cookie is not None else None
    return envelope_response(session_view(by_cookie, True, session))


async def log_out(request: web.Request) -> web.Response:
    """Forget the session and clear the cookie (with its CSRF token, like every mutation)."""
    sessions = request.app[SESSIONS]
    cookie = session_cookie(request)
    session = sessions.get(cookie) if cookie is not None else None
    if cookie is not None and session is not None:
        check_csrf(request, session)
        sessions.close(cookie)
    response = envelope_response({"logged_out": session is not None}, 200, "logged out")
    clear_session_cookie(response)
    return response


async def make_login_link(request: web.Request) -> web.Response:
    """A one-time link that logs a browser in as the caller (admin only)."""
    who = principal(request)  # an admin: the route's permission is checked before this
    sessions = request.app[SESSIONS]
    raw_key, fixed = _caller_credential(request, sessions, who)
    token, expires = sessions.make_link(raw_key, fixed)
    url = f"{request.url.origin()}{LOGIN_PATH}?token={token}"
    return envelope_response({"url": url, "expires_at": iso_from_unix(expires)}, 201)


def _caller_credential(
    request: web.Request, sessions: SessionStore, who: Principal
) -> tuple[str | None, Principal | None]:
    """What a session opened from the link re-checks: the caller's key, or the principal
    of a session that has none (auth disabled, the daemon's own start-up link)."""
    raw_key = bearer_key(request)
    if raw_key is not None:
        return raw_key, None
    cookie = session_cookie(request)
    session = sessions.get(cookie) if cookie is not None else None
    if session is not None:
        return session.raw_key, session.fixed
    return None, who


def start_link(app: web.Application, base_url: str) -> str:
    """The one-time link ``dpd serve`` and ``dpd demo`` print at start: it logs the local
    user in as administrator (like the token URL Jupyter prints). With auth disabled the
    plain address does."""
    authenticator = app[AUTHENTICATOR]
    if not authenticator.enabled:
        return base_url + "/"
    token, _ = app[SESSIONS].make_link(fixed=LOCAL_ADMIN, seconds=START_LINK_SECONDS)
    return f"{base_url}{LOGIN_PATH}?token={token}"


# ------------------------------------------------------------------ keys page


async def list_keys(request: web.Request) -> web.Response:
    keys = await asyncio.to_thread(request.app[KEY_STORE].list_keys)
    return envelope_response({"keys": [k.public() for k in keys]})


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key; its browser sessions end at their next request (the key is re-checked)."""
    key_id = request.match_info["key_id"]
    revoked = await asyncio.to_thread(request.app[KEY_STORE].revoke, key_id)
    return envelope_response(revoked.public(), 200, "API key revoked")


ROUTES = (
    Route("POST", f"{PREFIX}/login-link", make_login_link, permission="admin", rate="auth"),
    Route("GET", f"{PREFIX}/keys", list_keys, permission="admin", rate="auth"),
    Route("DELETE", f"{PREFIX}/keys/{{key_id}}", revoke_key, permission="admin", rate="auth"),
)
