"""``dpd models`` as a user runs it: a real subprocess talking to a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from aiohttp import web

from dpd.cli.models import models_table, progress_line
from dpd.http.middlewares import error_middleware
from dpd.http.routes import models as model_routes
from tests.models.test_routes import principal_from_header

ROOT = Path(__file__).parents[2]


@pytest.fixture
async def server(aiohttp_server, make_manager, catalog):
    manager = await make_manager()
    app = web.Application(middlewares=[error_middleware, principal_from_header])
    model_routes.setup(app, manager, catalog)
    return await aiohttp_server(app, host="127.0.0.1")


async def dpd(server, *argv: str, key: str = "downloader") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dpd",
        *argv,
        "--url",
        str(server.make_url("/")),
        "--key",
        key,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=20)
    return process.returncode or 0, out.decode(), err.decode()


async def test_models_table_shows_installed_state(server):
    code, out, _ = await dpd(server, "models")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "TYPE", "LORA"]
    assert any(line.startswith("flux") and "0/3 components" in line for line in lines)


async def test_pull_follows_the_download_with_a_progress_bar(server):
    code, out, err = await dpd(server, "models", "pull", "flux", "--component", "vae", "--json")
    assert code == 0, err
    final = json.loads(out)
    assert final["status"] == "completed" and final["progress"] == 100.0
    assert "started" in err and "100.0%" in err and "completed" in err
    code, out, _ = await dpd(server, "models")
    assert any(line.startswith("flux") and "1/3 components" in line for line in out.splitlines())


async def test_errors_are_reported_with_exit_codes(server):
    code, _, err = await dpd(server, "models", "pull", "nosuch")
    assert code == 1 and "422" in err and "model_id" in err
    code, _, err = await dpd(server, "models", "pull", "flux", key="reader")
    assert code == 1 and "403" in err
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dpd",
        "models",
        "--url",
        "http://127.0.0.1:9",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await process.communicate()
    assert process.returncode == 3


def test_progress_line_and_table_shapes():
    view = {
        "progress": 50.0,
        "bytes_done": 500_000_000,
        "bytes_total": 1_000_000_000,
        "status": "downloading",
        "speed_bps": 125_000_000,
        "eta_seconds": 4,
    }
    assert progress_line(view) == (
        "[###############---------------]  50.0% 500 MB/1.0 GB 125 MB/s ETA 4s"
    )
    table = models_table(
        [
            {
                "id": "wan",
                "type": "video",
                "supports_lora": True,
                "supports_full_finetune": True,
                "supports_fp8": True,
                "min_vram_gb": 24,
                "recommended_vram_gb": 48,
                "components": [{"installed": True}],
            }
        ]
    )
    assert table.splitlines()[1].split() == ["wan", "video", "yes", "yes", "yes", "24/48", "yes"]
