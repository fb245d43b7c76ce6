"""``dpd preprocess`` against a real server: a streamed upload, --wait to the end, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, main
from dpd.cli.preprocess import multipart_parts
from dpd.preprocess.tasks import PreprocessManager
from tests.preprocess.conftest import Events, make_config
from tests.preprocess.test_routes import build_app


@pytest.fixture
async def daemon_url(tmp_path: Path, aiohttp_server: Any) -> Any:
    config = make_config(tmp_path)
    manager = PreprocessManager(config, Events())
    await manager.start()
    server = await aiohttp_server(build_app(config, manager))
    yield f"http://127.0.0.1:{server.port}", config
    await manager.close()


def test_multipart_framing() -> None:
    head, tail = multipart_parts({"prompt": "p"}, 'a"b.mp4', "XYZ")
    assert head.startswith(b"--XYZ\r\n") and b'name="prompt"\r\n\r\np\r\n' in head
    assert b'filename="a_b.mp4"' in head and tail == b"\r\n--XYZ--\r\n"


async def test_upload_and_wait(
    daemon_url: Any, clip: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, config = daemon_url
    source = clip("cli.mp4", seconds=3, size=(160, 120))
    argv = [
        "preprocess", str(source), "--prompt", "a pattern", "--model", "wan",
        "--dataset", "cli", "--wait", "--json", "--url", url, "--key", "pre",
    ]  # fmt: skip
    code = await asyncio.to_thread(main, argv)
    envelope = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK, envelope
    assert envelope["data"]["status"] == "completed"
    media = Path(envelope["data"]["result"]["video_path"])
    assert media.parent == config.daemon.preprocessed_root / "cli" and media.is_file()


async def test_refusal_and_unreachable(
    daemon_url: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = daemon_url
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x01" * 4096)
    argv = [
        "preprocess",
        str(junk),
        "--prompt",
        "x",
        "--model",
        "wan",
        "--url",
        url,
        "--key",
        "pre",
    ]
    assert await asyncio.to_thread(main, argv) == EXIT_FAILURE
    assert "error 422" in capsys.readouterr().err
    argv[-3] = "http://127.0.0.1:9"  # nothing listens on the discard port
    assert await asyncio.to_thread(main, argv) == EXIT_UNAVAILABLE
