"""``dpd open`` against a real daemon, run as the user runs it (a subprocess): it gets a
one-time login link with an admin key and hands it to the browser ($BROWSER here)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp

from dpd.config import AuthConfig
from dpd.http.sessions import COOKIE
from tests.http.conftest import Api, MakeApi


async def dpd_open(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("DPD_API_KEY", "DPD_URL")}
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dpd", "open", *args, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_open_hands_a_working_login_link_to_the_browser(api: Api, tmp_path: Path) -> None:
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    code, out, err = await dpd_open(
        "--url", api.url, env={"DPD_API_KEY": api.key("admin"), "BROWSER": str(browser)}
    )
    assert code == 0, err
    link = out.strip()
    assert link.startswith(f"{api.url}/login?token=")
    assert opened.read_text().strip() == link
    async with (
        aiohttp.ClientSession() as session,
        session.get(link, allow_redirects=False) as reply,
    ):
        assert reply.status == 303 and COOKIE in reply.cookies


async def test_open_without_a_usable_key_says_what_to_do(api: Api) -> None:
    code, _, err = await dpd_open("--url", api.url, "--print")
    assert code == 1 and "--key" in err
    code, _, err = await dpd_open("--url", api.url, "--print", "--key", api.key("training"))
    assert code == 1 and "403" in err


async def test_open_with_auth_disabled_prints_the_address(make_api: MakeApi) -> None:
    api = await make_api(auth=AuthConfig(enabled=False))
    code, out, _ = await dpd_open("--url", api.url, "--print")
    assert code == 0 and out.strip() == f"{api.url}/"
