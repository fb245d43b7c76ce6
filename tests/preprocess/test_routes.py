"""The HTTP routes on a real aiohttp server: streamed multipart uploads, limits, names,
permissions, status, stop, and the datasets view."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dpd.config import Config
from dpd.http.common import PRINCIPAL, Principal
from dpd.http.middlewares import error_middleware
from dpd.http.routes import datasets as dataset_routes
from dpd.http.routes import preprocess as preprocess_routes
from dpd.preprocess.tasks import PreprocessManager
from tests.preprocess.conftest import Events, make_config
from tests.waiting import wait_until

KEYS = {
    "pre": frozenset({"preprocessing"}),
    "train": frozenset({"training"}),
}


@web.middleware
async def key_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Stands in for the auth middleware: 'Bearer <name>' of KEYS gives those permissions."""
    token = request.headers.get("Authorization", "").removeprefix("Bearer ")
    if token in KEYS:
        request[PRINCIPAL] = Principal(token, "tester", KEYS[token])
    return await handler(request)


def build_app(config: Config, manager: PreprocessManager) -> web.Application:
    app = web.Application(middlewares=[error_middleware, key_auth])
    preprocess_routes.setup(app, manager, config)
    dataset_routes.setup(app, config)
    return app


@pytest.fixture
async def setup(
    tmp_path: Path, aiohttp_client: Any
) -> AsyncIterator[tuple[TestClient, PreprocessManager, Config]]:
    config = make_config(tmp_path, upload_mb=1)
    manager = PreprocessManager(config, Events())
    await manager.start()
    client = await aiohttp_client(build_app(config, manager))
    yield client, manager, config
    await manager.close()


def form(path: Path | None, filename: str | None = None, **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    if path is not None:
        data.add_field("video", path.open("rb"), filename=filename or path.name)
    for name, value in {"prompt": "waves", "model_type": "wan", **fields}.items():
        data.add_field(name, value)
    return data


AUTH = {"Authorization": "Bearer pre"}


async def wait_status(client: TestClient, task_id: str, timeout: float = 10) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        resp = await client.get(f"/api/v1/preprocess/status/{task_id}", headers=AUTH)
        data: dict[str, Any] = (await resp.json())["data"]
        return data if data["status"] in ("completed", "failed", "stopped") else None

    return await wait_until(ended, timeout, interval=0.05, what=f"{task_id} to end")


async def test_upload_then_status_until_completed(setup: Any, clip: Callable[..., Path]) -> None:
    client, _, config = setup
    resp = await client.post(
        "/api/v1/preprocess/upload",
        data=form(clip("v.mp4", seconds=3), resolution="128x128", dataset="mine"),
        headers=AUTH,
    )
    body = await resp.json()
    assert resp.status == 202 and body["code"] == 202, body
    assert body["data"]["status"] == "queued"
    final = await wait_status(client, body["data"]["task_id"])
    assert final["status"] == "completed" and final["progress"] == 100
    result = final["result"]
    assert result["prompt"] == "waves" and result["metadata"]["resolution"] == "128x128"
    assert result["dataset_dir"] == str(config.daemon.preprocessed_root / "mine")
    assert Path(result["video_path"]).is_file()


async def test_permission_and_auth(setup: Any, clip: Callable[..., Path]) -> None:
    client, _, _ = setup
    resp = await client.post("/api/v1/preprocess/upload", data=form(clip("v.mp4")))
    assert resp.status == 401
    resp = await client.post(
        "/api/v1/preprocess/upload",
        data=form(clip("v.mp4")),
        headers={"Authorization": "Bearer train"},
    )
    assert resp.status == 403 and (await resp.json())["code"] == 403


async def test_oversize_upload_is_cut_off_without_leftovers(setup: Any, tmp_path: Path) -> None:
    client, manager, _ = setup
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3 << 20))  # limit is 1 MB
    try:
        resp = await client.post("/api/v1/preprocess/upload", data=form(big), headers=AUTH)
        status, body = resp.status, await resp.json()
    except aiohttp.ClientError:  # the server may close the connection mid-send
        status, body = 413, {"data": {"max_upload_mb": 1}}
    assert status == 413 and body["data"] == {"max_upload_mb": 1}
    staging = manager.store.root / ".incoming"
    assert not staging.exists() or os.listdir(staging) == []
    assert manager.all_tasks() == []


async def test_traversal_in_the_file_name_stays_inside_the_dataset(
    setup: Any, clip: Callable[..., Path]
) -> None:
    client, _, config = setup
    resp = await client.post(
        "/api/v1/preprocess/upload",
        data=form(clip("v.mp4", seconds=3), filename="../../../etc/.passwd.mp4"),
        headers=AUTH,
    )
    assert resp.status == 202
    final = await wait_status(client, (await resp.json())["data"]["task_id"])
    media = Path(final["result"]["video_path"])
    assert media.parent == config.daemon.preprocessed_root / "wan"
    assert media.name.startswith("passwd_") and not media.name.startswith(".")


async def test_refusals_say_why(setup: Any, clip: Callable[..., Path], tmp_path: Path) -> None:
    client, manager, _ = setup
    resp = await client.post(
        "/api/v1/preprocess/upload", data=form(clip("v.mp4"), filename="x.exe"), headers=AUTH
    )
    assert resp.status == 422 and "not accepted" in (await resp.json())["message"]
    bad = aiohttp.FormData()
    bad.add_field("video", clip("v.mp4").open("rb"), filename="v.mp4")
    bad.add_field("fps", "fast")
    bad.add_field("dataset", "../up")
    resp = await client.post("/api/v1/preprocess/upload", data=bad, headers=AUTH)
    fields = {e["field"] for e in (await resp.json())["data"]["errors"]}
    assert resp.status == 422 and fields == {"prompt", "model_type", "fps", "dataset"}
    audio = tmp_path / "a.mp4"
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=duration=1", str(audio)
    )
    await proc.wait()
    resp = await client.post("/api/v1/preprocess/upload", data=form(audio), headers=AUTH)
    assert resp.status == 422 and "audio only" in (await resp.json())["message"]
    resp = await client.post("/api/v1/preprocess/upload", data=b"{}", headers=AUTH)
    assert resp.status == 400
    assert manager.all_tasks() == [] and os.listdir(manager.store.root / ".incoming") == []


async def test_status_and_stop_of_unknown_tasks(setup: Any) -> None:
    client, _, _ = setup
    resp = await client.get("/api/v1/preprocess/status/preprocess_20000101_00000001", headers=AUTH)
    assert resp.status == 404
    resp = await client.post("/api/v1/preprocess/stop/nope", headers=AUTH)
    assert resp.status == 404


async def test_datasets_view(setup: Any, clip: Callable[..., Path]) -> None:
    client, _, config = setup
    resp = await client.post(
        "/api/v1/preprocess/upload",
        data=form(clip("v.mp4", seconds=5, size=(160, 120)), dataset="ds"),
        headers=AUTH,
    )
    await wait_status(client, (await resp.json())["data"]["task_id"])
    directory = config.daemon.preprocessed_root / "ds"
    (directory / "lonely.mp4").write_bytes(
        clip("w.mp4", seconds=5, size=(160, 120)).read_bytes()
    )  # no caption
    (directory / "short.mp4").write_bytes(
        clip("s.mp4", seconds=2.5, fps=16, size=(160, 120)).read_bytes()
    )
    (directory / "short.txt").write_text("short one")
    resp = await client.get("/api/v1/datasets", headers=AUTH)
    listing = (await resp.json())["data"]["datasets"]
    assert [d["name"] for d in listing] == ["ds"]
    assert listing[0]["clips"] == 3 and listing[0]["missing_captions"] == ["lonely.mp4"]
    resp = await client.get(
        "/api/v1/datasets/ds?model_type=wan&frame_buckets=1,33,65", headers=AUTH
    )
    data = (await resp.json())["data"]
    kept = data["buckets"]["buckets"]
    assert len(kept["65"]) == 1 and kept["33"] == ["short.mp4"]
    dropped = {d["file"]: d["reason"] for d in data["buckets"]["dropped"]}
    assert "no caption" in dropped["lonely.mp4"]
    resp = await client.get("/api/v1/datasets/ds?model_type=wan&frame_buckets=1,65", headers=AUTH)
    dropped = {d["file"] for d in (await resp.json())["data"]["buckets"]["dropped"]}
    assert "short.mp4" in dropped  # 40 frames fill no bucket but 1
    assert (await client.get("/api/v1/datasets/nope", headers=AUTH)).status == 404
    assert (await client.get("/api/v1/datasets/ds?model_type=zzz", headers=AUTH)).status == 400
