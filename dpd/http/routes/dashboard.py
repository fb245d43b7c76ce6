"""The dashboard's pages: ``GET /`` (index.html), ``GET /assets/{path}`` (everything under
``dpd/web/static/``) and ``GET /login?token=`` (a one-time login link, ``dpd.http.sessions``).

Every answer carries a strict Content-Security-Policy (scripts, styles, images, fetches and
workers from this origin only; no inline script; no framing) and ``nosniff``, so the pages
can only ever run the code shipped in the package. Assets are revalidated on every load
(``Cache-Control: no-cache`` with an ETag): their names carry no hash, and a daemon upgrade
must never leave an old module beside a new one.

Not trusted: the asset path. It is resolved and must stay under the static directory; dot
files and anything that is not a regular file are 404.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from aiohttp import web

from dpd.errors import NotFound
from dpd.http.sessions import LOGIN_PATH, SESSIONS, set_session_cookie
from dpd.web import static_dir

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'; object-src 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".webmanifest": "application/manifest+json",
}
ASSETS_PREFIX: Final = "/assets/"
STATIC_DIR: web.AppKey[Path] = web.AppKey("dpd.web.static_dir", Path)


def setup(app: web.Application, root: Path | None = None) -> None:
    app[STATIC_DIR] = (root or static_dir()).resolve()
    app.router.add_get("/", index)
    app.router.add_get(ASSETS_PREFIX + "{path:.+}", asset)
    app.router.add_get(LOGIN_PATH, login_with_link)


def confined_file(root: Path, relative: str) -> Path:
    """The regular file ``relative`` names under ``root``; NotFound for anything else
    (``..``, absolute paths, links leading out, dot files, directories)."""
    parts = Path(relative).parts
    if not parts or any(p.startswith(".") or p in ("/", "") for p in parts):
        raise NotFound(f"no asset {relative!r}")
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        raise NotFound(f"no asset {relative!r}")
    return candidate


def file_response(path: Path) -> web.FileResponse:
    """ETag and Last-Modified come from aiohttp (size and mtime); 304 on a match."""
    headers = dict(SECURITY_HEADERS)
    headers["Cache-Control"] = "no-cache"
    headers["Content-Type"] = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return web.FileResponse(path, headers=headers)


async def index(request: web.Request) -> web.StreamResponse:
    return file_response(confined_file(request.app[STATIC_DIR], "index.html"))


async def asset(request: web.Request) -> web.StreamResponse:
    return file_response(confined_file(request.app[STATIC_DIR], request.match_info["path"]))


async def login_with_link(request: web.Request) -> web.StreamResponse:
    """A one-time link: a valid token becomes a session cookie and a 303 to ``/``; a used,
    expired or unknown one goes to the login page."""
    token = request.query.get("token") or ""
    sessions = request.app[SESSIONS]
    opened = sessions.open_from_link(token)
    if opened is None:
        return _see_other("/#/login")
    response = _see_other("/")
    set_session_cookie(response, opened, secure=request.secure)
    return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**SECURITY_HEADERS, "Location": location})
