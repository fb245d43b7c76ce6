"""Browser tests of the dashboard: Debian's Chromium, driven by Playwright, against a real
``dpd serve`` (tests/daemon_harness.py) running the stand-in trainer.

Skipped only where /usr/bin/chromium (or $DPD_TEST_CHROMIUM) is absent; CI installs it.
Playwright downloads no browser: it launches that binary. Every page a test opens is watched:
a request to anything but the daemon is aborted and recorded, and console errors (a CSP
violation is one) are recorded; both must stay empty. Screenshots go to $DPD_SCREENSHOTS, or
to a folder under pytest's tmp dir whose path the session prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dpd.simulation import simulation_paths
from tests.daemon_harness import DaemonProcess, kill_daemons, wait_for
from tests.jobfiles import job_document, make_data_root
from tests.ports import master_port_range

CHROMIUM = os.environ.get("DPD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ADMIN_KEY = "dpd-web-test-admin-key-0123456789"
ACTIVE = ("queued", "running", "stopping")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if Path(CHROMIUM).exists():
        return
    skip = pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    for item in items:
        in_here = "tests/web/" in str(item.fspath).replace(os.sep, "/")
        if in_here and "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("DPD_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {folder}")
    return folder


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def start_daemon(
    root: Path,
    auth: bool,
    step_seconds: str = "0.3",
    gpu_mb: int = 24576,
    tables: dict[str, dict[str, Any]] | None = None,
    **trainer_env: str,
) -> DaemonProcess:
    """One simulated GPU of ``gpu_mb``; ``tables``: more config tables (``[models]``...);
    ``trainer_env``: more DPD_SIM_* settings of the stand-in trainer."""
    deepspeed, diffusion_pipe_dir = simulation_paths()
    daemon = DaemonProcess(
        root,
        {
            **(tables or {}),
            "auth": {"enabled": auth, "bootstrap_key": ADMIN_KEY if auth else ""},
            "ratelimit": {name: "0" for name in ("auth", "training", "preprocess", "logs")},
            "gpus": {
                "backend": "static",
                "monitor_interval": 0.5,
                "static": [{"name": "Simulated RTX 4090", "memory_mb": gpu_mb}],
            },
            "trainer": {
                "deepspeed": str(deepspeed),
                "diffusion_pipe_dir": str(diffusion_pipe_dir),
                "env": {
                    "DPD_SIM_STEP_SECONDS": step_seconds,
                    "DPD_SIM_CACHE_SECONDS": "0.1",
                    **trainer_env,
                },
                # a graceful stop saves a checkpoint first; on a busy machine that takes time
                "stop_timeout": 30,
                # not dpd's default 29500-29999, which other test runs on the machine share
                "master_port_range": master_port_range(20),
            },
        },
    )
    make_data_root(daemon.data)
    return daemon.start()


@pytest.fixture(scope="module")
def module_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    # 8 GiB: less than the catalog's SDXL asks for, so the submit form warns about it
    started = start_daemon(tmp_path_factory.mktemp("dpd-web"), auth=True, gpu_mb=8192)
    yield started
    kill_daemons([started])


@pytest.fixture
def daemon(module_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """A daemon with auth enabled (the admin key is the bootstrap key), shared by a module's
    tests; each test leaves it with its one GPU free."""
    yield module_daemon
    stop_everything(module_daemon)


def stop_everything(daemon: DaemonProcess) -> None:
    status, body = daemon.request("GET", "/api/v1/training/list?limit=1000", key=ADMIN_KEY)
    if status != 200:
        return
    tasks = body["data"]["tasks"]
    # Queued ones first: a queued job must not be handed the GPU a stopping one frees.
    for wave in (("queued",), ("running", "stopping")):
        stopping = [t["task_id"] for t in tasks if t["status"] in wave]
        for task_id in stopping:
            daemon.request(
                "POST", f"/api/v1/training/stop/{task_id}", {"force": True}, key=ADMIN_KEY
            )
        for task_id in stopping:
            wait_status(daemon, task_id, "completed", "failed", "stopped")


# Answers a page may get without anything being wrong: the session probe of a browser that
# is not logged in yet, and the Overview's probe of fleet mode on a daemon without it.
EXPECTED_FAILURES = {("/api/v1/auth/session", 401), ("/api/v1/fleet/nodes", 404)}


@dataclass
class Watched:
    """A page, what it tried to reach outside the daemon, its console errors (a CSP
    violation is one) and its failed requests."""

    page: Any
    base: str
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def clean(self, allowed: set[tuple[str, int]] = EXPECTED_FAILURES) -> None:
        assert self.outside == [], f"requests left 127.0.0.1: {self.outside}"
        assert self.errors == [], f"console errors: {self.errors}"
        unexpected = [f for f in self.failed if f not in allowed]
        assert unexpected == [], f"failed requests: {unexpected}"

    def goto(self, hash_route: str) -> None:
        self.page.goto(f"{self.base}/{hash_route}")


def watch(context: Any, base: str) -> Watched:
    page = context.new_page()
    watched = Watched(page, base)

    def route(route: Any) -> None:
        url = route.request.url
        if url.startswith(base + "/") or url == base or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            watched.outside.append(url)
            route.abort()

    def response(response: Any) -> None:
        if response.status >= 400 and response.url.startswith(base):
            watched.failed.append((response.url[len(base) :].split("?")[0], response.status))

    def console(message: Any) -> None:
        # A failed request is logged as a console error too; those are judged in `failed`.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            watched.errors.append(message.text)

    context.route("**/*", route)
    context.on("request", lambda r: watched.requests.append(r.url))
    page.on("response", response)
    page.on("console", console)
    page.on("pageerror", lambda e: watched.errors.append(f"page error: {e} at {e.stack}"))
    return watched


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """open_page(daemon, viewport=DESKTOP) -> Watched, in a fresh browser context."""
    contexts: list[Any] = []

    def opener(daemon: DaemonProcess, viewport: dict[str, int] = DESKTOP, **kw: Any) -> Watched:
        context = browser.new_context(viewport=viewport, **kw)
        contexts.append(context)
        return watch(context, daemon.url)

    yield opener
    for context in contexts:
        context.close()


def login(watched: Watched, key: str = ADMIN_KEY) -> None:
    page = watched.page
    page.goto(watched.base + "/")
    page.fill("#api-key", key)
    page.click("button[type=submit]")
    page.wait_for_selector("header.top nav")


def submit_job(daemon: DaemonProcess, task_id: str, **overrides: Any) -> dict[str, Any]:
    status, body = daemon.request(
        "POST",
        "/api/v1/training/start",
        job_document(daemon.data, task_id=task_id, queue=True, **overrides),
        key=ADMIN_KEY,
    )
    assert status in (200, 201), body
    return body["data"]  # type: ignore[no-any-return]


def job_status(daemon: DaemonProcess, task_id: str) -> str:
    status, body = daemon.request("GET", f"/api/v1/training/{task_id}", key=ADMIN_KEY)
    assert status == 200, body
    return str(body["data"]["status"])


def wait_status(daemon: DaemonProcess, task_id: str, *wanted: str, timeout: float = 60) -> str:
    try:
        return str(wait_for(lambda: (s := job_status(daemon, task_id)) in wanted and s, timeout))
    except AssertionError:
        jobs = daemon.request("GET", "/api/v1/training/list?limit=1000", key=ADMIN_KEY)[1]
        gpus = daemon.request("GET", "/api/v1/gpu/status", key=ADMIN_KEY)[1]
        states = {t["task_id"]: t["status"] for t in jobs["data"]["tasks"]}
        raise AssertionError(
            f"{task_id} not {wanted} in {timeout} s; jobs {states}; gpus {gpus}"
        ) from None


def shoot(watched: Watched, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    # from the top: the sticky header of a scrolled page would land mid-picture
    watched.page.evaluate("() => window.scrollTo(0, 0)")
    watched.page.screenshot(path=str(path), full_page=True)
    return path


def no_horizontal_scroll(watched: Watched) -> bool:
    return bool(
        watched.page.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )
