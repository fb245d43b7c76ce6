"""The submit page's advanced editor takes YAML (or JSON) and shows the daemon's field
errors beside it, each with the line its field is on; the page, its editor and its folder
picker fit a phone's width. A real browser against a real daemon."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProcess
from tests.web.conftest import (
    ADMIN_KEY,
    EXPECTED_FAILURES,
    PHONE,
    login,
    no_horizontal_scroll,
    shoot,
    wait_status,
)


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def yaml_job(data: Path, epochs: int) -> str:
    """A job as people write YAML: flow mappings, lr in scientific notation (not JSON)."""
    return f"""task_id: yaml-job
model_type: sdxl
dataset:
  resolutions: [512]
  directories:
    - path: {data / "datasets" / "cats"}
config:
  epochs: {epochs}
  micro_batch_size_per_gpu: 1
  model:
    checkpoint_path: {data / "models" / "sdxl.safetensors"}
    dtype: bfloat16
  adapter: {{type: lora, rank: 8, dtype: bfloat16}}
  optimizer:
    type: adamw_optimi
    lr: 5e-5
  save: {{save_every_n_epochs: 1}}
"""


def selected_text(page: Any) -> str:
    return str(
        page.evaluate(
            "() => { const t = document.querySelector('textarea[name=document]');"
            " return t.value.slice(t.selectionStart, t.selectionEnd); }"
        )
    )


def test_submit_yaml_editor_shows_a_field_error_by_its_line_then_starts(
    daemon: DaemonProcess, open_page: Any, screenshots: Path
) -> None:
    watched = open_page(daemon)
    login(watched)
    page = watched.page
    watched.goto("#/submit")
    page.fill("#f-epochs", "7")
    page.get_by_text("Advanced: edit the whole job as YAML or JSON").click()
    document = page.locator("textarea[name=document]")
    # the form, written out as YAML to start from
    expect(document).to_have_value(re.compile(r"^  epochs: 7$", re.MULTILINE))
    assert not document.input_value().lstrip().startswith("{")

    document.fill(yaml_job(daemon.data, epochs=0))
    page.get_by_role("button", name="Check").click()
    error = page.locator(".doc-errors li[data-field='config.epochs']")
    expect(error).to_contain_text(">= 1")
    expect(error.get_by_role("button", name="line 8")).to_be_visible()
    expect(page.locator("textarea.invalid")).to_have_count(1)
    shoot(watched, screenshots, "submit-yaml-field-error-desktop")
    error.get_by_role("button", name="line 8").click()
    assert selected_text(page) == "  epochs: 0"
    assert daemon.request("GET", "/api/v1/training/yaml-job", key=ADMIN_KEY)[0] == 404

    document.fill(yaml_job(daemon.data, epochs=1))
    page.get_by_role("button", name="Check").click()
    expect(page.locator("[data-role=validation] .ok")).to_be_visible()
    expect(page.locator(".doc-errors")).to_have_count(0)
    page.get_by_role("button", name="Start training").click()
    expect(page).to_have_url(re.compile(r"#/job/yaml-job$"))
    status, body = daemon.request("GET", "/api/v1/training/yaml-job/config", key=ADMIN_KEY)
    assert status == 200, body
    assert body["data"]["job"]["config"]["optimizer"]["lr"] == pytest.approx(5e-5)
    wait_status(daemon, "yaml-job", "running", "completed")
    watched.clean(allowed=EXPECTED_FAILURES | {("/api/v1/training/validate", 422)})


def test_submit_json_in_the_editor_is_still_sent_as_json(
    daemon: DaemonProcess, open_page: Any
) -> None:
    watched = open_page(daemon)
    login(watched)
    page = watched.page
    watched.goto("#/submit")
    page.get_by_text("Advanced: edit the whole job as YAML or JSON").click()
    page.locator("textarea[name=document]").fill('{"model_type": "sdxl", "config": {"epochs": 0}')
    page.get_by_role("button", name="Check").click()
    # a JSON mistake is reported as one, so the text went out as JSON
    expect(page.locator(".error")).to_contain_text("not valid JSON")
    watched.clean(allowed=EXPECTED_FAILURES | {("/api/v1/training/validate", 400)})


def test_submit_editor_and_folder_picker_fit_a_phone(
    daemon: DaemonProcess, open_page: Any, screenshots: Path
) -> None:
    deep = daemon.data / "datasets" / "a-folder-with-a-rather-long-name-for-a-phone-screen"
    deep.mkdir(parents=True, exist_ok=True)
    watched = open_page(daemon, viewport=PHONE, is_mobile=True, has_touch=True)
    login(watched)
    page = watched.page
    watched.goto("#/submit")
    page.get_by_role("button", name="Browse…").click()
    picker = page.locator(".folder-picker [data-role=roots]")
    picker.locator("li button.link").first.click()
    picker.locator("li[data-folder=datasets] button.link").click()
    expect(picker.locator(f"li[data-folder='{deep.name}']")).to_contain_text("empty")
    assert no_horizontal_scroll(watched)
    shoot(watched, screenshots, "submit-folder-picker-phone")
    picker.locator(f"li[data-folder='{deep.name}'] button.link").click()
    expect(picker.locator(".picker-path code")).to_have_text(str(deep.resolve()))
    expect(picker.locator("li")).to_have_text("No folders here.")
    picker.get_by_role("button", name="Use this folder").click()
    expect(page.locator("#f-dataset")).to_have_value(str(deep.resolve()))
    page.get_by_text("Advanced: edit the whole job as YAML or JSON").click()
    page.locator("textarea[name=document]").fill(yaml_job(daemon.data, epochs=0))
    page.get_by_role("button", name="Check").click()
    error = page.locator(".doc-errors li[data-field='config.epochs']")
    expect(error.get_by_role("button", name="line 8")).to_be_visible()
    assert no_horizontal_scroll(watched)
    shoot(watched, screenshots, "submit-yaml-field-error-phone")
    watched.clean(allowed=EXPECTED_FAILURES | {("/api/v1/training/validate", 422)})
