"""The hub boundary: endpoint and token resolution, token scrubbing, servers that ignore Range."""

from __future__ import annotations

import pytest
from huggingface_hub.utils import _detect_agent

from dpd.models.hub import resolve_endpoint, resolve_token, scrub
from tests.models.conftest import MIB, REPO_FILES

BIG = "transformer/diffusion_pytorch_model.safetensors"


def test_config_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no token file of this machine
    assert resolve_endpoint("", {}) == "https://huggingface.co"
    assert resolve_endpoint("", {"HF_ENDPOINT": "https://mirror.example/"}) == (
        "https://mirror.example"
    )
    assert resolve_endpoint("https://cfg.example", {"HF_ENDPOINT": "https://env"}) == (
        "https://cfg.example"
    )
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert resolve_token("") is None
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert resolve_token("") == "from-env"
    assert resolve_token("from-config") == "from-config"


def test_scrub_removes_the_token():
    assert scrub("Bearer abc123 failed", "abc123") == "Bearer *** failed"
    assert scrub("nothing", None) == "nothing"


async def test_a_server_ignoring_range_restarts_the_file_and_its_hash(make_manager, hub):
    hub.cut_once[BIG] = 2 * MIB
    hub.ignore_range.add(BIG)
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux", "components": ["diffusion_model"]})

    final = await manager.wait(started["download_id"])

    assert final["status"] == "completed", final["error"]
    assert hub.served[BIG] == 2 * MIB + len(REPO_FILES[BIG])  # the library started over


async def test_nothing_is_fetched_from_the_public_hub_behind_the_configured_endpoint(
    make_manager, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub builds its headers with a list it fetches from huggingface.co unless
    # telemetry is off: pretend no copy is cached and record any attempt
    fetches: list[str] = []
    monkeypatch.setattr(_detect_agent, "_registry", None)
    monkeypatch.setattr(_detect_agent, "_read_cached_registry", lambda *args, **kwargs: None)
    monkeypatch.setattr(_detect_agent, "_fetch_registry", lambda: fetches.append("fetch"))
    manager = await make_manager()
    started = await manager.submit({"model_id": "flux", "components": ["vae"]})
    final = await manager.wait(started["download_id"])
    assert final["status"] == "completed", final["error"]
    assert fetches == []
