"""The dashboard's pages and assets, served by a real daemon: strict CSP and security
headers, content types, ETag revalidation, and paths confined to the static directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpd.daemon import Daemon
from dpd.http.routes import dashboard
from tests.http.conftest import Api, MakeApi


@pytest.fixture
def static_root(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    (root / "vendor").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>dpd</title>")
    (root / "app.js").write_text("export const x = 1;\n")
    (root / "vendor" / "preact.mjs").write_text("export default 1;\n")
    (root / "style.css").write_text("body{}\n")
    (root / "icon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "font.woff2").write_bytes(b"wOF2")
    (root / ".secret").write_text("HIDDEN-CONTENT")
    (tmp_path / "outside.txt").write_text("OUTSIDE-CONTENT")
    (root / "link.txt").symlink_to(tmp_path / "outside.txt")
    return root


@pytest.fixture
async def site(make_api: MakeApi, static_root: Path) -> Api:
    def serve_from(daemon: Daemon) -> None:
        daemon.app[dashboard.STATIC_DIR] = static_root.resolve()

    return await make_api(prepare=serve_from)


def assert_secure(headers: object) -> None:
    assert headers["Content-Security-Policy"] == dashboard.CSP  # type: ignore[index]
    assert "script-src 'self';" in dashboard.CSP and "unsafe-inline" not in dashboard.CSP
    assert headers["X-Content-Type-Options"] == "nosniff"  # type: ignore[index]
    assert headers["Referrer-Policy"] == "no-referrer"  # type: ignore[index]


async def test_index_is_served_with_the_strict_policy(site: Api) -> None:
    reply = await site.get("/", key=None)
    assert reply.status == 200
    assert reply.text == "<!doctype html><title>dpd</title>"
    assert reply.headers["Content-Type"].startswith("text/html")
    assert_secure(reply.headers)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("app.js", "text/javascript"),
        ("vendor/preact.mjs", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
        ("font.woff2", "font/woff2"),
    ],
)
async def test_assets_have_their_content_type_and_headers(
    site: Api, path: str, content_type: str
) -> None:
    reply = await site.get(f"/assets/{path}", key=None)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith(content_type)
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["ETag"]
    assert_secure(reply.headers)


async def test_an_unchanged_asset_revalidates_with_304(site: Api) -> None:
    first = await site.get("/assets/app.js", key=None)
    again = await site.get(
        "/assets/app.js", key=None, headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304
    assert again.text == ""


@pytest.mark.parametrize(
    "path", ["../outside.txt", "%2e%2e/outside.txt", ".secret", "link.txt", "vendor", "nope.js"]
)
async def test_nothing_outside_the_static_files_is_served(site: Api, path: str) -> None:
    reply = await site.get(f"/assets/{path}", key=None)
    assert reply.status == 404
    assert "OUTSIDE-CONTENT" not in reply.text and "HIDDEN-CONTENT" not in reply.text


def test_confined_file_refuses_escapes(static_root: Path) -> None:
    root = static_root.resolve()
    assert dashboard.confined_file(root, "app.js") == root / "app.js"
    for bad in ("../outside.txt", "/etc/passwd", ".secret", "link.txt", "vendor", ""):
        with pytest.raises(Exception, match="no asset"):
            dashboard.confined_file(root, bad)


async def test_the_package_ships_an_index_page(api: Api) -> None:
    reply = await api.get("/", key=None)
    assert reply.status == 200
    assert "<html" in reply.text.lower()
    assert_secure(reply.headers)
