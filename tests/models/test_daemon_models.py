"""Model downloads through a real ``dpd serve``: the operator's catalog, hub endpoint and token
come from its config file, requests go over REST, progress goes out on a real nats-server,
and a daemon killed with SIGKILL mid-download resumes the file when it starts again.

The local hub runs on this test's event loop, so every blocking call to the daemon goes
through a thread."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import yaml

from tests.daemon_harness import DaemonProcess
from tests.events.harness import collecting
from tests.events.nats_server import NatsServer
from tests.models.conftest import CATALOG, GATED_TOKEN, MIB, REPO_FILES
from tests.models.hub_server import FakeHub
from tests.waiting import wait_for, wait_until

BIG = "transformer/diffusion_pytorch_model.safetensors"


def models_daemon(root: Path, hub: FakeHub, nats_url: str | None = None) -> DaemonProcess:
    catalog = root / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    daemon = DaemonProcess(
        root,
        {"models": {"catalog": str(catalog), "hf_endpoint": hub.url, "hf_token": GATED_TOKEN}},
    )
    if nats_url is not None:
        daemon.config["nats"] = {"url": nats_url, "jetstream": False}
    return daemon


async def request(
    daemon: DaemonProcess, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(daemon.request, method, path, body)


async def wait_download(daemon: DaemonProcess, download_id: str) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        status, envelope = await request(daemon, "GET", f"/api/v1/models/download/{download_id}")
        assert status == 200, envelope
        view: dict[str, Any] = envelope["data"]
        return view if view["status"] not in ("queued", "downloading") else None

    return await wait_until(finished, 25, interval=0.05, what=f"{download_id} to finish")


async def test_a_download_through_the_daemon_is_published_on_nats(
    tmp_path: Path, hub: FakeHub, core_nats_server: NatsServer, daemons: list[DaemonProcess]
) -> None:
    daemon = models_daemon(tmp_path, hub, core_nats_server.url)
    daemons.append(daemon)
    async with collecting(core_nats_server.url, "dpd.models.>") as sub:
        await asyncio.to_thread(daemon.start)
        status, envelope = await request(
            daemon, "POST", "/api/v1/models/download", {"model_id": "flux"}
        )
        assert status == 202, envelope
        download_id = envelope["data"]["download_id"]
        view = await wait_download(daemon, download_id)
        assert view["status"] == "completed", view
        subject = f"dpd.models.{download_id}.progress"
        await wait_until(
            lambda: any(
                s == subject and p["data"]["status"] == "completed" for s, p in sub.messages
            )
        )
        status, gated = await request(
            daemon, "POST", "/api/v1/models/download", {"model_id": "gated"}
        )
        assert status == 202, gated
        assert (await wait_download(daemon, gated["data"]["download_id"]))["status"] == "completed"

    published = [p for s, p in sub.messages if s == subject]
    assert all(p["task_id"] == download_id and p["type"] == "progress" for p in published)
    assert published[-1]["data"]["progress"] == 100.0
    models = tmp_path / "data" / "models"
    for name, content in REPO_FILES.items():
        assert (models / "flux" / "tiny" / name).read_bytes() == content
    status, listing = await request(daemon, "GET", "/api/v1/models/list")
    assert status == 200
    installed = {m["id"]: m for m in listing["data"]["models"]}
    assert all(c["installed"] for c in installed["flux"]["components"])
    assert all(c["installed"] for c in installed["gated"]["components"])
    # The token from the config file reached the hub and nothing else.
    assert any(auth == f"Bearer {GATED_TOKEN}" for *_, auth in hub.requests)
    shown = [daemon.log(), str(listing), str(view)] + [str(p) for _, p in sub.messages]
    assert not [text for text in shown if GATED_TOKEN in text]


async def test_daemon_killed_mid_download_resumes_the_file_on_restart(
    tmp_path: Path, hub: FakeHub, daemons: list[DaemonProcess]
) -> None:
    daemon = models_daemon(tmp_path, hub)
    daemons.append(daemon)
    hub.hold_at[BIG] = 2 * MIB
    await asyncio.to_thread(daemon.start)
    body = {"model_id": "flux", "components": ["diffusion_model"]}
    status, envelope = await request(daemon, "POST", "/api/v1/models/download", body)
    assert status == 202, envelope
    download_id = envelope["data"]["download_id"]
    models = tmp_path / "data" / "models"

    def partial_sizes() -> list[int]:
        return [p.stat().st_size for p in models.rglob("*") if p.is_file()]

    # Held at 2 MiB: the daemon writes out what it received once the transfer stalls.
    await asyncio.to_thread(wait_for, lambda: 2 * MIB in partial_sizes(), 10)
    await asyncio.to_thread(daemon.kill9)
    hub.release()
    await asyncio.to_thread(daemon.start)

    view = await wait_download(daemon, download_id)
    assert view["status"] == "completed", view
    content = (models / "flux" / "tiny" / BIG).read_bytes()
    assert hashlib.sha256(content).digest() == hashlib.sha256(REPO_FILES[BIG]).digest()
    assert hub.served[BIG] == len(REPO_FILES[BIG])  # the first 2 MiB were not sent again
