"""The Models page against a real ``dpd serve`` pointed at the local stand-in hub
(tests/models/hub_server.py, on its own event loop in a thread): a download started from the
page shows its progress bar move while the hub holds the transfer halfway, then the model
shows as installed without reloading the page."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.daemon_harness import DaemonProcess, kill_daemons
from tests.models.conftest import CATALOG, GATED_TOKEN, MIB, REPO_FILES
from tests.models.hub_server import FakeHub, serve_hub
from tests.web.conftest import PHONE, no_horizontal_scroll, shoot, start_daemon

BIG = "transformer/diffusion_pytorch_model.safetensors"


class HubThread:
    """The stand-in hub served from a thread of its own (the browser tests are synchronous)."""

    def __init__(self, hub: FakeHub) -> None:
        self.hub = hub
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),))

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve_hub(self.hub):
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> FakeHub:
        self._thread.start()
        assert self._ready.wait(10), "the stand-in hub did not start"
        return self.hub

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.hub.release)

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def hub_thread() -> Iterator[HubThread]:
    fake = FakeHub()
    fake.add_repo("tiny/flux", dict(REPO_FILES))
    fake.hold_at[BIG] = 2 * MIB  # the transfer stops here until released
    served = HubThread(fake)
    with served:
        yield served


@pytest.fixture
def models_daemon(tmp_path: Path, hub_thread: HubThread) -> Iterator[DaemonProcess]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(CATALOG))
    models = {"catalog": str(catalog), "hf_endpoint": hub_thread.hub.url, "hf_token": GATED_TOKEN}
    daemon = start_daemon(tmp_path / "dpd", auth=False, tables={"models": models})
    yield daemon
    hub_thread.release()
    kill_daemons([daemon])


def progress_value(row: Any) -> float:
    return float(row.locator("progress").get_attribute("value") or 0)


def test_a_download_from_the_page_moves_its_bar_and_installs_the_model(
    models_daemon: DaemonProcess, hub_thread: HubThread, open_page: Any, screenshots: Path
) -> None:
    watched = open_page(models_daemon)
    page = watched.page
    watched.goto("#/models")
    flux = page.locator("tr[data-model=flux]")
    flux.get_by_role("button", name="Download").click()

    row = page.locator("li[data-download]")
    row.wait_for()
    # Held at 2 MiB of the 3 MiB transformer: some of the model's bytes are in, not all.
    page.wait_for_function(
        """() => { const bar = document.querySelector('li[data-download] progress');
                   return bar && bar.value > 0 && bar.value < 100; }""",
        timeout=20_000,
    )
    held = progress_value(row)
    assert 0 < held < 100
    # the bytes shown follow the events too (not the figure of the row's first fetch)
    row.locator("[data-field=bytes]", has_text=re.compile(r"^[\d.]+ MiB / ")).wait_for()
    assert "downloading" in row.locator(".pill").inner_text()
    shoot(watched, screenshots, "models-downloading")

    hub_thread.release()
    page.wait_for_function(
        """() => { const bar = document.querySelector('li[data-download] progress');
                   return bar && bar.value === 100; }""",
        timeout=30_000,
    )
    assert progress_value(row) > held
    row.locator(".pill", has_text="completed").wait_for(timeout=10_000)
    # the catalog row turns installed without a reload
    flux.locator("[data-field=installed]", has_text="yes").wait_for(timeout=10_000)
    assert flux.get_by_role("button", name="Download").count() == 0
    assert (models_daemon.data / "models" / "flux" / "tiny" / BIG).stat().st_size == len(
        REPO_FILES[BIG]
    )
    shoot(watched, screenshots, "models-installed")
    watched.clean()

    phone = open_page(models_daemon, viewport=PHONE)
    phone.goto("#/models")
    phone.page.locator("tr[data-model=flux]").wait_for()
    assert no_horizontal_scroll(phone)
    shoot(phone, screenshots, "models-phone")
    phone.clean()
