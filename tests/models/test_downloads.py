"""Downloads against the local hub: real HTTP on 127.0.0.1, real files, real hashes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest

from dpd.errors import Conflict, Forbidden, InsufficientResources, NotFound, ValidationFailed
from dpd.models.catalog import installed_state
from tests.models.conftest import GATED_TOKEN, MIB, REPO_FILES
from tests.models.hub_server import FakeHub, HubFile, write_file
from tests.waiting import wait_until

BIG = "transformer/diffusion_pytorch_model.safetensors"


def _partials(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "models" / ".dpd" / "partial").glob("*.incomplete"))


async def test_full_download_of_a_multi_component_model(make_manager, hub, tmp_path, events):
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux"})
    assert started["status"] == "downloading"
    assert [c["name"] for c in started["components"]] == ["diffusion_model", "vae", "text_encoder"]
    assert started["bytes_total"] == sum(len(v) for v in REPO_FILES.values())

    final = await manager.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    assert final["progress"] == 100.0 and final["bytes_done"] == final["bytes_total"]
    root = tmp_path / "models" / "flux" / "tiny"
    for path, content in REPO_FILES.items():
        assert (root / path).read_bytes() == content
        assert hub.served[path] == len(content)  # each byte crossed the wire once
    state = await asyncio.to_thread(
        installed_state, manager.catalog.get("flux"), tmp_path / "models"
    )
    assert all(entry["installed"] for entry in state.values())
    record = json.loads(
        (tmp_path / "state" / "downloads" / f"{final['download_id']}.json").read_text()
    )
    assert record["status"] == "completed"
    assert _partials(tmp_path) == []
    published = events.of(final["download_id"])
    assert published[-1]["status"] == "completed" and published[-1]["progress"] == 100.0
    assert all(item[1:4:2] == ("models", "progress") for item in events.items)


async def test_interrupted_transfer_resumes_without_fetching_bytes_twice(make_manager, hub):
    # The connection drops mid-file, anywhere: every byte received is written before the
    # transfer resumes from the partial file's size.
    hub.cut_once[BIG] = 2 * MIB + 12345
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    assert hub.served[BIG] == len(REPO_FILES[BIG])
    ranges = [p for m, _, p, _ in hub.requests if m == "GET" and p.startswith("/cdn/")]
    assert len(ranges) == 2  # the first transfer and one resumed with Range


async def test_hash_mismatch_is_rejected_and_nothing_is_installed(make_manager, hub, tmp_path):
    hub.wrong_hash.add("vae/diffusion_pytorch_model.safetensors")
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux", "components": ["vae"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "failed"
    assert "hash" in final["error"]
    assert not (tmp_path / "models/flux/tiny/vae/diffusion_pytorch_model.safetensors").exists()
    assert final["components"][0]["status"] == "failed"
    assert _partials(tmp_path) == []
    state = await asyncio.to_thread(
        installed_state, manager.catalog.get("flux"), tmp_path / "models"
    )
    assert state["vae"]["installed"] is False


async def test_missing_file_is_a_404_before_anything_starts(make_manager, tmp_path):
    manager = await make_manager()
    with pytest.raises(NotFound) as caught:
        await manager.submit({"model_id": "broken", "components": ["missing"]})
    assert caught.value.data["file"] == "nope.safetensors"
    assert manager.list() == []


async def test_unknown_model_and_component_are_422(make_manager):
    manager = await make_manager()
    with pytest.raises(ValidationFailed):
        await manager.submit({"model_id": "nosuch"})
    with pytest.raises(ValidationFailed) as caught:
        await manager.submit({"model_id": "broken", "components": ["handmade", "x"]})
    assert [e.field for e in caught.value.errors] == ["components[0]", "components[1]"]


async def test_gated_repo_needs_the_token_which_never_leaks(
    make_manager, hub, tmp_path, caplog, events
):
    caplog.set_level(logging.DEBUG)
    without = await make_manager()
    with pytest.raises(Forbidden) as caught:
        await without.submit({"model_id": "gated"})
    assert caught.value.data["hub_status"] == 401

    with_token = await make_manager(token=GATED_TOKEN)
    started = await with_token.submit({"model_id": "gated"})
    final = await with_token.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    assert (tmp_path / "models/gated/model.safetensors").stat().st_size == MIB + 5
    assert any(auth == f"Bearer {GATED_TOKEN}" for _, _, _, auth in hub.requests)
    shown = [caplog.text, json.dumps(final), json.dumps(events.items), repr(with_token.hub)]
    shown += [p.read_text() for p in (tmp_path / "state").rglob("*.json")]
    assert not any(GATED_TOKEN in text for text in shown)


async def test_cancel_stops_the_transfer_and_removes_partial_files(
    make_manager, hub, tmp_path, events
):
    hub.hold_at[BIG] = 2 * MIB
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})
    download_id = started["download_id"]
    await wait_until(lambda: manager.get(download_id)["bytes_done"] >= 2 * MIB)
    assert any(p.stat().st_size == 2 * MIB for p in _partials(tmp_path))

    cancelled = await manager.cancel(download_id)
    hub.release()
    final = await manager.wait(download_id)

    assert cancelled["status"] == "cancelled" and final["status"] == "cancelled"
    assert _partials(tmp_path) == []
    assert not (tmp_path / "models/flux/tiny" / BIG).exists()
    assert events.of(download_id)[-1]["status"] == "cancelled"
    with pytest.raises(Conflict):
        await manager.cancel(download_id)


async def test_second_download_of_the_same_files_is_a_conflict(make_manager, hub):
    hub.hold_at[BIG] = MIB
    manager = await make_manager()
    first = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})
    with pytest.raises(Conflict) as caught:
        await manager.submit({"model_id": "flux"})
    assert caught.value.data["download_id"] == first["download_id"]


async def test_installed_components_are_not_fetched_again(make_manager, hub):
    manager = await make_manager()
    first = await manager.submit({"model_id": "flux", "components": ["vae"]})
    await manager.wait(first["download_id"])
    served = dict(hub.served)

    again = await manager.submit({"model_id": "flux", "components": ["vae"]})
    final = await manager.wait(again["download_id"])

    assert final["status"] == "completed"
    assert dict(hub.served) == served


async def test_not_enough_disk_space_is_refused_with_507(make_manager, hub, tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    sparse = tmp_path / "hub" / "huge.safetensors"
    sparse.parent.mkdir()
    with open(sparse, "wb") as handle:
        handle.truncate(free + 10 * 1024**3)  # sparse: takes no space itself
    hub.add_repo("tiny/huge", {})
    hub.repos["tiny/huge"].files["huge.safetensors"] = HubFile(sparse, sha256="a" * 64)
    manager = await make_manager()

    with pytest.raises(InsufficientResources) as caught:
        await manager.submit({"model_id": "broken", "components": ["huge"]})

    assert caught.value.code == 507
    assert caught.value.data["required_bytes"] > caught.value.data["free_bytes"]
    assert manager.list() == []


WORKER = Path(__file__).with_name("download_worker.py")


@pytest.mark.crash
async def test_daemon_killed_mid_download_resumes_on_restart(make_manager, hub, tmp_path):
    import asyncio

    hub.hold_at[BIG] = 2 * MIB
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        str(tmp_path),
        hub.url,
        "flux",
        "diffusion_model",
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        await wait_until(lambda: any(p.stat().st_size == 2 * MIB for p in _partials(tmp_path)))
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    records = list((tmp_path / "state" / "downloads").glob("dl_*.json"))
    assert len(records) == 1 and json.loads(records[0].read_text())["status"] == "downloading"
    hub.release()

    manager = await make_manager()  # start() resumes it
    download_id = records[0].stem
    await wait_until(lambda: manager.get(download_id)["status"] != "downloading")

    assert manager.get(download_id)["status"] == "completed"
    content = (tmp_path / "models/flux/tiny" / BIG).read_bytes()
    assert hashlib.sha256(content).digest() == hashlib.sha256(REPO_FILES[BIG]).digest()
    assert hub.served[BIG] == len(REPO_FILES[BIG])  # the first 2 MiB were not sent again


async def test_big_file_from_disk_is_served_and_verified(make_manager, hub, tmp_path):
    path = write_file(tmp_path / "hub" / "big.bin", 5 * MIB + 3)
    hub.repos["tiny/gated"].files["model.safetensors"] = HubFile(path)
    manager = await make_manager(token=GATED_TOKEN)
    final = await manager.wait((await manager.submit({"model_id": "gated"}))["download_id"])
    assert final["status"] == "completed", final["error"]
    assert (tmp_path / "models/gated/model.safetensors").read_bytes() == path.read_bytes()


def test_fake_hub_is_a_fakehub():
    assert FakeHub().repos == {}
