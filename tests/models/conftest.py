"""Fixtures for model tests: a local hub on 127.0.0.1 with a few small repositories, a small
catalog pointing at them, and a DownloadManager wired to both (state under tmp_path)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dpd.models.catalog import Catalog, parse_catalog
from dpd.models.downloads import DownloadManager
from dpd.models.hub import HubClient
from tests.models.hub_server import FakeHub, serve_hub

MIB = 1024 * 1024
GATED_TOKEN = "hf_secret_token_for_tests_0123456789"


def pseudo_random(size: int, seed: int) -> bytes:
    import hashlib

    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(2048))
    return (block * (size // len(block) + 1))[:size]


REPO_FILES: dict[str, bytes] = {
    "model_index.json": b'{"_class_name": "FluxPipeline"}\n',
    "transformer/config.json": b'{"num_layers": 2}\n',
    "transformer/diffusion_pytorch_model.safetensors": pseudo_random(3 * MIB + 123, 1),
    "vae/config.json": b'{"latent_channels": 16}\n',
    "vae/diffusion_pytorch_model.safetensors": pseudo_random(2 * MIB + 7, 2),
    "text_encoder/model.safetensors": pseudo_random(MIB + 99, 3),
    "tokenizer/vocab.json": b'{"a": 1}\n',
}

CATALOG: dict[str, Any] = {
    "models": [
        {
            "id": "flux",
            "name": "Tiny Flux",
            "type": "image",
            "version": "1.0",
            "supports_lora": True,
            "supports_full_finetune": True,
            "supports_fp8": True,
            "min_vram_gb": 12,
            "recommended_vram_gb": 24,
            "components": [
                {
                    "name": "diffusion_model",
                    "repo": "tiny/flux",
                    "include": ["transformer/*"],
                    "dir": "flux/tiny",
                    "config_key": "diffusers_path",
                },
                {
                    "name": "vae",
                    "repo": "tiny/flux",
                    "include": ["vae/*"],
                    "dir": "flux/tiny",
                    "config_key": "diffusers_path",
                },
                {
                    "name": "text_encoder",
                    "repo": "tiny/flux",
                    "files": [
                        "text_encoder/model.safetensors",
                        "tokenizer/vocab.json",
                        "model_index.json",
                    ],
                    "dir": "flux/tiny",
                    "config_key": "diffusers_path",
                },
            ],
        },
        {
            "id": "gated",
            "name": "Gated",
            "type": "image",
            "version": "1.0",
            "supports_lora": True,
            "supports_full_finetune": False,
            "supports_fp8": False,
            "min_vram_gb": 40,
            "recommended_vram_gb": 80,
            "components": [
                {
                    "name": "diffusion_model",
                    "repo": "tiny/gated",
                    "gated": True,
                    "files": ["model.safetensors"],
                    "dir": "gated",
                    "config_key": "transformer_path",
                    "path": "gated/model.safetensors",
                },
            ],
        },
        {
            "id": "broken",
            "name": "Broken",
            "type": "video",
            "version": "1.0",
            "supports_lora": True,
            "supports_full_finetune": True,
            "supports_fp8": True,
            "min_vram_gb": 8,
            "recommended_vram_gb": 16,
            "components": [
                {
                    "name": "missing",
                    "repo": "tiny/flux",
                    "files": ["nope.safetensors"],
                    "dir": "broken",
                    "config_key": "transformer_path",
                },
                {
                    "name": "huge",
                    "repo": "tiny/huge",
                    "files": ["huge.safetensors"],
                    "dir": "broken",
                    "config_key": "vae_path",
                },
                {"name": "handmade", "repo": "", "dir": "broken", "config_key": "llm_path"},
            ],
        },
    ]
}


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(CATALOG)


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    fake.add_repo("tiny/flux", dict(REPO_FILES))
    fake.add_repo("tiny/gated", {"model.safetensors": pseudo_random(MIB + 5, 4)}, GATED_TOKEN)
    async with serve_hub(fake):
        yield fake


class Events:
    """An EmitEvent that records what a manager announces."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, str, str, dict[str, Any]]] = []

    def __call__(self, scope: str, task_id: str, kind: str, data: dict[str, Any]) -> None:
        self.items.append((time.monotonic(), scope, task_id, kind, data))

    def of(self, download_id: str) -> list[dict[str, Any]]:
        return [item[4] for item in self.items if item[2] == download_id]


@pytest.fixture
def events() -> Events:
    return Events()


ManagerFactory = Callable[..., "asyncio.Future[DownloadManager]"]


@pytest.fixture
async def make_manager(
    tmp_path: Path, hub: FakeHub, catalog: Catalog, events: Events
) -> AsyncIterator[Callable[..., Any]]:
    managers: list[DownloadManager] = []

    async def make(token: str | None = None, **kwargs: Any) -> DownloadManager:
        manager = DownloadManager(
            catalog,
            HubClient(hub.url, token),
            tmp_path / "models",
            tmp_path / "state",
            events,
            retry_delays=kwargs.pop("retry_delays", (0.2,)),
            event_interval=kwargs.pop("event_interval", 0.05),
        )
        await manager.start()
        managers.append(manager)
        return manager

    yield make
    hub.release()
    for manager in managers:
        await manager.close(timeout=5)
