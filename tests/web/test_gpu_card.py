"""The overview's GPU card on a machine whose GPU also runs a process dpd did not start:
``dpd serve`` reads NVML through the fake pynvml (tests/fakes/fake_nvml.py), the boundary a
machine without GPUs cannot have for real."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProcess, kill_daemons
from tests.web.conftest import shoot

REPO = Path(__file__).resolve().parents[2]
FAKE_PYNVML = """\
import sys
from tests.fakes import fake_nvml

# One RTX 4090, busy with a process of pid 1: not a training of dpd's.
machine = fake_nvml.FakeMachine(gpus=[fake_nvml.FakeGpu(
    memory_used_mb=4321, utilization_gpu=37, temperature=61, power_mw=180_000,
    processes=[(1, 4321)])])
sys.modules[__name__] = fake_nvml.module(machine)
"""


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture
def nvml_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    shim = tmp_path / "fake-pynvml"
    shim.mkdir()
    (shim / "pynvml.py").write_text(FAKE_PYNVML)
    daemon = DaemonProcess(tmp_path / "dpd", {"gpus": {"backend": "nvml", "monitor_interval": 0.5}})
    daemon.env = {"PYTHONPATH": f"{shim}:{REPO}"}
    daemon.start()
    yield daemon
    kill_daemons([daemon])


def test_gpu_card_flags_a_foreign_process(
    nvml_daemon: DaemonProcess, open_page: Any, screenshots: Path
) -> None:
    watched = open_page(nvml_daemon)
    page = watched.page
    watched.goto("#/")
    card = page.locator("article.gpu")
    expect(card).to_have_count(1)
    expect(card).to_contain_text("RTX 4090")
    expect(card.locator("dd").nth(0)).to_have_text("37%")
    expect(card).to_contain_text("4.2 GiB / 24.0 GiB")
    expect(card).to_contain_text("61 °C")
    expect(card).to_contain_text("180 W")
    foreign = card.locator(".procs li.foreign")
    expect(foreign).to_have_count(1)
    expect(foreign.locator("span").first).to_have_text("process · pid 1")
    expect(foreign.locator("span").nth(1)).to_have_text("4.2 GiB · not dpd's")
    expect(card.locator(".warn")).to_contain_text("1 process(es) not started by dpd")
    shoot(watched, screenshots, "overview-foreign-process-desktop")
    watched.clean()
