"""The body taken over from aiohttp: read into the partial file's buffers over HTTP and TLS,
left to aiohttp when its length is unknown, ended by a stall but not by a slow disk."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from huggingface_hub import constants

from dpd.models import body as body_module
from dpd.models import partial as partial_module
from dpd.models.partial import PartialFile, RemoteFile, TransferControl
from tests.models.conftest import MIB, REPO_FILES
from tests.models.hub_server import FakeHub, serve_hub

BIG = "transformer/diffusion_pytorch_model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"


@pytest.fixture
def taken_over(monkeypatch) -> list[int]:
    """Bytes the socket put straight into the partial file's buffers, call by call."""
    counts: list[int] = []
    real = body_module._Receiver.buffer_updated

    def buffer_updated(self: body_module._Receiver, nbytes: int) -> None:
        counts.append(nbytes)
        real(self, nbytes)

    monkeypatch.setattr(body_module._Receiver, "buffer_updated", buffer_updated)
    return counts


async def test_a_body_of_known_length_is_read_into_the_buffers(
    make_manager, hub, tmp_path, taken_over
):
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    assert (tmp_path / "models/flux/tiny" / BIG).read_bytes() == REPO_FILES[BIG]
    assert sum(taken_over) > len(REPO_FILES[BIG]) // 2  # the rest came with the headers


async def test_a_body_without_length_is_read_through_aiohttp(
    make_manager, hub, tmp_path, taken_over
):
    hub.chunked.add(BIG)
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    assert (tmp_path / "models/flux/tiny" / BIG).read_bytes() == REPO_FILES[BIG]
    assert taken_over == []


async def test_a_stalled_body_ends_the_transfer_and_keeps_its_bytes(
    make_manager, hub, tmp_path, monkeypatch
):
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.3)
    hub.hold_at[BIG] = MIB
    manager = await make_manager(retry_delays=())
    started = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})

    final = await asyncio.wait_for(manager.wait(started["download_id"]), 30)

    assert final["status"] == "failed" and "Timeout" in final["error"]
    partials = list((tmp_path / "models/.dpd/partial").glob("*.incomplete"))
    assert [p.read_bytes() for p in partials] == [REPO_FILES[BIG][:MIB]]


async def test_waiting_for_the_disk_is_not_a_stall(make_manager, hub, tmp_path, monkeypatch):
    """One buffer of 1 MiB and a disk slower than the read timeout per buffer: the socket
    is not read meanwhile, and that wait is not the peer's."""
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, data: memoryview, offset: int) -> int:
        if offset % MIB == 0:  # once per buffer
            time.sleep(0.8)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setattr(partial_module, "BLOCK_SIZE", MIB)
    monkeypatch.setattr(partial_module, "BLOCKS", 1)
    monkeypatch.setattr(partial_module.os, "pwrite", slow_pwrite)
    manager = await make_manager(retry_delays=())
    started = await manager.submit({"model_id": "flux", "components": ["vae"]})

    final = await asyncio.wait_for(manager.wait(started["download_id"]), 30)

    assert final["status"] == "completed", final["error"]
    assert (tmp_path / "models/flux/tiny" / VAE).read_bytes() == REPO_FILES[VAE]


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for 127.0.0.1, and a client context
    that trusts only it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
    command += " -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


async def test_a_tls_body_is_read_into_the_buffers_too(tmp_path, tls, taken_over):
    server_context, client_context = tls
    data = REPO_FILES[BIG]
    fake = FakeHub()
    fake.add_repo("tiny/flux", {BIG: data})
    sha = fake.sha256("tiny/flux", BIG)
    remote = RemoteFile("tiny/flux", BIG, "c" * 40, len(data), sha)
    sink = await asyncio.to_thread(PartialFile.open, tmp_path / "p", remote, TransferControl())
    async with serve_hub(fake, server_context), aiohttp.ClientSession() as session:
        url = f"{fake.url}/cdn/{sha}?repo=tiny/flux&path={BIG}"
        async with session.get(url, ssl=client_context) as response:
            try:
                sink.start()
                assert await body_module.receive_body(response, sink, 10)
                await sink.finish()
            finally:
                await sink.close()

    assert (tmp_path / "p").read_bytes() == data
    assert sum(taken_over) > len(data) // 2
