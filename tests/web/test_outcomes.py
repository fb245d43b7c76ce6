"""What the dashboard shows when a training goes wrong, or runs long: the error in one line, the
first error in the log, a browser notification, the daemon's health alerts, and a long run's
thinned step loss with its min/max band."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProcess, kill_daemons, wait_for
from tests.jobfiles import job_document
from tests.web.conftest import shoot, start_daemon, submit_job, wait_status, watch

# Records each Notification the page creates (the headless browser shows none).
RECORD_NOTIFICATIONS = """
window.__notes = [];
const Real = window.Notification;
class Recording extends Real {
  constructor(title, options) { super(title, options); window.__notes.push(title); }
}
Object.defineProperty(Recording, "permission", { get: () => Real.permission });
window.Notification = Recording;
"""


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


@pytest.fixture
def failing_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """Every training dies of CUDA out-of-memory at step 3."""
    started = start_daemon(tmp_path / "dpd", auth=False, DPD_SIM_FAIL="oom:3")
    yield started
    kill_daemons([started])


@pytest.fixture
def exploding_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """Every training's loss grows by half each step: a loss explosion within ~13 steps."""
    started = start_daemon(
        tmp_path / "dpd", auth=False, step_seconds="0.1", DPD_SIM_LOSS_DECAY="1.5"
    )
    yield started
    kill_daemons([started])


def test_failure_shows_its_error_the_first_error_and_a_notification(
    failing_daemon: DaemonProcess, browser: Any, screenshots: Path
) -> None:
    context = browser.new_context(permissions=["notifications"])
    context.add_init_script(RECORD_NOTIFICATIONS)
    watched = watch(context, failing_daemon.url)
    page = watched.page
    watched.goto("#/")
    expect(page.locator("article.gpu")).to_have_count(1)
    submit_job(failing_daemon, "doomed")
    wait_status(failing_daemon, "doomed", "failed")
    error = failing_daemon.request("GET", "/api/v1/training/doomed")[1]["data"]["error"]
    message = error["reason"]
    row = page.locator(".recent li[data-task=doomed]")
    expect(row.locator(".pill")).to_have_text("failed")
    line = row.locator(".error-line")
    expect(line).to_contain_text(message[:100])
    assert (line.get_attribute("title") or "").startswith(message[:100])
    assert line.evaluate("e => e.getClientRects().length") == 1  # one line, however long
    wait_for(lambda: page.evaluate("window.__notes.length") > 0, timeout=10)
    assert page.evaluate("window.__notes") == ["dpd: doomed failed"]
    shoot(watched, screenshots, "overview-failed-desktop")
    watched.goto("#/job/doomed")
    expect(page.locator(".summary [data-field=error]")).to_be_visible()
    page.get_by_role("button", name="First error").click()
    focused = page.locator(".log-lines .ln.focus")
    expect(focused).to_have_count(1)
    expect(focused).to_contain_text(re.compile("Traceback|Error"))
    expect(focused).to_have_class(re.compile("lv-ERROR"))
    shoot(watched, screenshots, "job-failed-desktop")
    watched.clean()
    context.close()


def test_loss_explosion_alert_on_the_overview_live_and_on_the_job_page(
    exploding_daemon: DaemonProcess, open_page: Any, screenshots: Path
) -> None:
    watched = open_page(exploding_daemon)
    page = watched.page
    watched.goto("#/")
    expect(page.locator("article.gpu")).to_have_count(1)
    submit_job(exploding_daemon, "boom")
    live = page.locator(".alerts li.a-loss_explosion")
    expect(live).to_contain_text("boom", timeout=60_000)
    wait_status(exploding_daemon, "boom", "completed", "failed")
    watched.goto("#/job/boom")
    recorded = page.locator(".alerts li.a-loss_explosion")
    expect(recorded).to_have_count(1)
    expect(recorded).to_contain_text("step")
    shoot(watched, screenshots, "job-alert-desktop")
    watched.clean()


def test_a_long_run_is_drawn_thinned_with_its_min_max_band(tmp_path: Path, open_page: Any) -> None:
    daemon = start_daemon(
        tmp_path / "dpd", auth=False, step_seconds="0", DPD_SIM_STEPS_PER_EPOCH="5000"
    )
    try:
        submit_job(daemon, "long", config={**job_document(daemon.data)["config"], "epochs": 1})
        wait_status(daemon, "long", "completed", timeout=120)
        watched = open_page(daemon)
        page = watched.page
        watched.goto("#/job/long")
        chart = page.locator('figure.chart[data-series="step_loss"]')
        expect(chart.locator("figcaption")).to_contain_text("thinned: band = min/max")
        assert int(chart.get_attribute("data-points") or 0) == 2000  # the server's buckets
        watched.clean()
    finally:
        kill_daemons([daemon])
