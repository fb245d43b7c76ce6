"""The dashboard stays live and says when it is not: one event stream per browser shared by
its tabs, a reconnecting banner while the daemon is away, and no gap after it returns."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProcess, kill_daemons, wait_for
from tests.jobfiles import job_document
from tests.web.conftest import shoot, start_daemon, submit_job, wait_status


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture
def open_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """Auth disabled: the pages open without a login."""
    started = start_daemon(tmp_path / "dpd", auth=False)
    yield started
    kill_daemons([started])


def long_job(daemon: DaemonProcess, task_id: str) -> None:
    submit_job(daemon, task_id, config={**job_document(daemon.data)["config"], "epochs": 200})
    wait_status(daemon, task_id, "running")


def chart_points(page: Any) -> int:
    value = page.get_attribute('figure.chart[data-series="step_loss"]', "data-points")
    return int(value or 0)


def gains_points(page: Any, more: int = 3) -> None:
    """The page's step-loss chart grows by ``more`` points without a reload."""
    start = wait_for(lambda: chart_points(page), timeout=30)
    wait_for(lambda: chart_points(page) >= start + more, timeout=30)


def test_without_auth_no_login_and_tabs_share_one_stream(
    open_daemon: DaemonProcess, browser: Any, open_page: Any
) -> None:
    long_job(open_daemon, "shared")
    first = open_page(open_daemon)
    first.goto("#/job/shared")
    expect(first.page.locator('figure.chart[data-series="step_loss"]')).to_be_visible()
    expect(first.page.locator("#api-key")).to_have_count(0)
    second = first.page.context.new_page()
    second.goto(f"{open_daemon.url}/#/job/shared")
    for page in (first.page, second):
        expect(page.locator("html")).to_have_attribute("data-live", "shared-worker")
        gains_points(page)
    cdp = browser.new_browser_cdp_session()
    targets = cdp.send("Target.getTargets")["targetInfos"]
    workers = [t for t in targets if t["type"] == "shared_worker"]
    assert [w["url"].split("/assets/")[1] for w in workers] == ["js/live-worker.js"]
    # The pages have no EventSource of their own: the worker is the browser's one stream.
    assert (
        first.page.evaluate(
            "performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('/events/stream')).length"
        )
        == 0
    )
    first.clean()


def test_banner_while_the_daemon_is_away_and_no_gap_after(
    open_daemon: DaemonProcess, open_page: Any, screenshots: Path
) -> None:
    long_job(open_daemon, "survivor")
    watched = open_page(open_daemon)
    page = watched.page
    watched.goto("#/job/survivor")
    wait_for(lambda: chart_points(page) >= 3, timeout=30)
    expect(page.locator(".banner")).to_have_count(0)
    open_daemon.stop(signal.SIGKILL)  # the training goes on under its shim
    banner = page.locator(".banner")
    expect(banner).to_contain_text("Reconnecting", timeout=15_000)
    expect(banner).to_contain_text("s old")
    shoot(watched, screenshots, "reconnecting-desktop")
    before = chart_points(page)
    open_daemon.start()
    expect(banner).to_have_count(0, timeout=30_000)
    # points made while the daemon was away arrive too, and then the stream carries on
    wait_for(lambda: chart_points(page) > before + 3, timeout=60)

    def matches_the_api() -> bool:
        status, body = open_daemon.request(
            "GET", "/api/v1/training/survivor/series?kind=step_loss&max_points=100000"
        )
        total = body["data"]["total"]
        return status == 200 and total > 0 and chart_points(page) in (total, total + 1, total - 1)

    wait_for(matches_the_api, timeout=30)
    watched.clean()
