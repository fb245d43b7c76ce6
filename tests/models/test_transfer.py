"""File bodies over aiohttp against the local hub: redirects and the token, hub failures as
502, failures mid-body retried and resumed, stops that close a stalled connection."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from huggingface_hub import constants

from dpd.errors import BadGateway
from dpd.models.downloads import DownloadManager
from dpd.models.hub import HubClient, TransientHubError
from tests.models.conftest import GATED_TOKEN, MIB, REPO_FILES
from tests.waiting import wait_until

BIG = "transformer/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"


async def test_the_token_goes_to_the_endpoint_never_to_the_cdn(make_manager, hub):
    manager = await make_manager(token=GATED_TOKEN)
    final = await manager.wait((await manager.submit({"model_id": "gated"}))["download_id"])

    assert final["status"] == "completed", final["error"]
    assert hub.sent_to_cdn() == [None]
    on_endpoint = [auth for _, _, path, auth in hub.requests if "/resolve/" in path]
    assert on_endpoint and set(on_endpoint) == {f"Bearer {GATED_TOKEN}"}


async def test_a_redirect_to_another_host_is_followed_without_the_token(
    make_manager, hub, tmp_path
):
    hub.redirect_get |= {"tokenizer/vocab.json", "model_index.json"}
    manager = await make_manager(token=GATED_TOKEN)
    started = await manager.submit({"model_id": "flux", "components": ["text_encoder"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    for path in ("tokenizer/vocab.json", "model_index.json"):
        assert (tmp_path / "models/flux/tiny" / path).read_bytes() == REPO_FILES[path]
        asked = [a for m, _, p, a in hub.requests if m == "GET" and p.endswith(f"/{path}")]
        assert asked == [f"Bearer {GATED_TOKEN}"]  # the first hop, on the endpoint
    assert hub.sent_to_cdn() == [None, None, None]  # the LFS file and both redirected ones


@pytest.mark.parametrize(("status", "transient"), [(500, True), (503, True), (400, False)])
async def test_hub_failures_are_a_502_before_anything_starts(make_manager, hub, status, transient):
    hub.fail[VAE] = status
    manager = await make_manager()

    with pytest.raises(BadGateway) as caught:
        await manager.submit({"model_id": "flux", "components": ["vae"]})

    assert caught.value.code == 502
    assert caught.value.data == {"repo": "tiny/flux", "file": VAE, "hub_status": status}
    assert isinstance(caught.value, TransientHubError) is transient
    assert manager.list() == []


async def test_an_unreachable_hub_is_a_502(tmp_path, catalog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    manager = DownloadManager(
        catalog, HubClient(f"http://127.0.0.1:{port}", None), tmp_path / "m", tmp_path / "s"
    )
    await manager.start()
    try:
        with pytest.raises(BadGateway) as caught:  # (a listing would retry for 20 s first)
            await manager.submit({"model_id": "gated"})
    finally:
        await manager.close()
    assert caught.value.code == 502 and "cannot reach the hub" in caught.value.message


async def test_failures_mid_transfer_are_retried_and_the_file_resumes(make_manager, hub):
    hub.fail_body_once[BIG] = 503
    hub.cut_once[BIG] = MIB + 1
    manager = await make_manager(retry_delays=(0.05, 0.05))
    started = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    assert hub.served[BIG] == len(REPO_FILES[BIG])  # the first MiB was not sent twice
    assert len(hub.sent_to_cdn()) == 3  # 503, cut after 1 MiB + 1, resumed


async def test_a_failure_left_after_the_retries_fails_the_download(make_manager, hub, tmp_path):
    hub.fail_body_once[VAE] = 502
    manager = await make_manager(retry_delays=())
    started = await manager.submit({"model_id": "flux", "components": ["vae"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "failed" and "502" in final["error"]
    assert not (tmp_path / "models/flux/tiny" / VAE).exists()


@pytest.fixture
def endless_reads(monkeypatch):
    """Only an interrupt can end a stalled read now (the read timeout is an hour)."""
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 3600)


async def test_cancel_closes_a_stalled_connection(make_manager, hub, endless_reads):
    hub.hold_at[BIG] = MIB
    manager = await make_manager()
    download_id = (await manager.submit({"model_id": "flux", "components": ["diffusion_model"]}))[
        "download_id"
    ]
    await wait_until(lambda: manager.get(download_id)["bytes_done"] >= MIB)

    await manager.cancel(download_id)
    final = await asyncio.wait_for(manager.wait(download_id), 30)

    assert final["status"] == "cancelled"


async def test_shutdown_closes_a_stalled_connection_and_keeps_the_partial_file(
    make_manager, hub, tmp_path, caplog, endless_reads
):
    caplog.set_level(logging.INFO)
    hub.hold_at[BIG] = MIB
    manager = await make_manager()
    download_id = (await manager.submit({"model_id": "flux", "components": ["diffusion_model"]}))[
        "download_id"
    ]
    await wait_until(lambda: manager.get(download_id)["bytes_done"] >= MIB)

    await manager.close(timeout=30)

    assert "did not pause" not in caplog.text
    assert f"model download {download_id} stopped (shutdown)" in caplog.text
    assert manager.get(download_id)["status"] == "downloading"  # the next start resumes it
    partials = list((tmp_path / "models/.dpd/partial").glob("*.incomplete"))
    assert [p.stat().st_size for p in partials] == [MIB]
