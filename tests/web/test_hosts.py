"""The Overview's Hosts panel: the fleet's hosts from ``GET /api/v1/fleet/nodes``.

- fleet mode off: the route answers 404 and the panel is not there;
- every state a host can be in, from a route answer shaped as ``FleetAgent.nodes_view``
  writes it, served to the page in place of the daemon's 404;
- a real fleet (two ``dpd serve`` hosts on a 3-node NATS cluster, tests/fleet/hosts.py): the
  panel lists both hosts, their GPUs, and the job one of them runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import DaemonProcess, kill_daemons, wait_for
from tests.web.conftest import PHONE, no_horizontal_scroll, shoot, start_daemon

NODES = "/api/v1/fleet/nodes"


@pytest.fixture(scope="module")
def plain_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    started = start_daemon(tmp_path_factory.mktemp("dpd-hosts"), auth=False)
    yield started
    kill_daemons([started])


def node(name: str, gpus: int, **fields: Any) -> dict[str, Any]:
    return {"node": name, "url": f"http://{name}:7070", "gpus": gpus, "filesystem_domain": "t",
            "alive": True, "free_gpus": list(range(gpus)), "running": [], "draining": False,
            "down": None, **fields}  # fmt: skip


def test_without_fleet_mode_the_overview_has_no_hosts_panel(
    plain_daemon: DaemonProcess, open_page: Any
) -> None:
    watched = open_page(plain_daemon)
    with watched.page.expect_response(lambda r: NODES in r.url) as probe:
        watched.goto("#/")
    assert probe.value.status == 404
    watched.page.locator("article.gpu").first.wait_for()
    watched.page.locator("section h2", has_text="Queue").wait_for()
    assert watched.page.locator("section.hosts").count() == 0
    watched.clean()


def test_the_panel_shows_each_hosts_state_gpus_and_runs(
    plain_daemon: DaemonProcess, open_page: Any, screenshots: Path
) -> None:
    answer = {
        "node": "alpha",
        "ready": True,
        "nodes": [
            node("alpha", 2, free_gpus=[1], running=["cats-lora"]),
            node("beta", 4, alive=False, free_gpus=[]),
            node("gamma-with-a-rather-long-host-name", 8, draining=True, running=["a", "b"]),
            node("delta", 1, down={"by": "operator", "at": "2026-12-07T05:00:00Z"}),
        ],
    }
    envelope = {"code": 200, "message": "success", "data": answer, "timestamp": 0}
    for viewport, name in ((None, "overview-hosts-desktop"), (PHONE, "overview-hosts-phone")):
        watched = open_page(plain_daemon, **({"viewport": viewport} if viewport else {}))
        watched.page.route(
            f"**{NODES}",
            lambda route: route.fulfill(
                status=200, content_type="application/json", body=json.dumps(envelope)
            ),
        )
        watched.goto("#/")
        rows = watched.page.locator("section.hosts li[data-node]")
        rows.first.wait_for()
        assert rows.count() == 4
        alpha = watched.page.locator("li[data-node=alpha]")
        assert "this host" in alpha.inner_text()
        assert alpha.locator(".pill").inner_text() == "alive"
        assert alpha.locator("[data-field=gpus]").inner_text() == "1 of 2 GPUs free"
        assert alpha.locator("[data-field=running]").inner_text().strip() == "cats-lora"
        beta = watched.page.locator("li[data-node=beta]")
        assert beta.locator(".pill").inner_text() == "lost"
        assert beta.locator("[data-field=gpus]").inner_text() == "4 GPUs"
        assert "idle" in beta.inner_text()
        assert beta.locator("[data-field=running]").inner_text() == ""
        gamma = watched.page.locator("li[data-node^=gamma]")
        assert gamma.locator(".pill").inner_text() == "draining"
        assert gamma.locator("[data-field=running]").inner_text().split() == ["a", "b"]
        delta = watched.page.locator("li[data-node=delta]")
        assert delta.locator(".pill").inner_text() == "down"
        assert delta.locator("[data-field=gpus]").inner_text() == "1 GPU"  # none offered
        assert no_horizontal_scroll(watched)
        shoot(watched, screenshots, name)
        watched.clean()


@pytest.mark.fleet
def test_a_real_fleets_hosts_and_the_job_one_runs(
    tmp_path: Path, open_page: Any, screenshots: Path
) -> None:
    from tests.fleet.hosts import Fleet
    from tests.fleet.natscluster import NatsCluster, why_no_fleet_server

    reason = why_no_fleet_server()
    if reason:
        pytest.skip(reason)
    cluster = NatsCluster(tmp_path / "nats", n=3, sync="always").up()
    fleet = Fleet(cluster, tmp_path / "fleet", {"alpha": 1, "beta": 2}, step_seconds=0.5)
    try:
        fleet.up()
        alpha = fleet["alpha"]
        code, body = alpha.request("POST", "/api/v1/training/start", fleet.job(task_id="fleetjob"))
        assert code in (200, 201, 202), body

        def runs_somewhere() -> bool:
            nodes = alpha.request("GET", NODES)[1]["data"]["nodes"]
            return any("fleetjob" in n["running"] for n in nodes)

        wait_for(runs_somewhere, timeout=60)
        watched = open_page(alpha)
        watched.goto("#/")
        hosts = watched.page.locator("section.hosts")
        hosts.locator("li[data-node=beta]").wait_for()
        assert "this host" in hosts.locator("li[data-node=alpha]").inner_text()
        assert (
            hosts.locator("li[data-node=beta] [data-field=gpus]")
            .inner_text()
            .endswith("of 2 GPUs free")
        )
        assert hosts.locator(".pill", has_text="alive").count() == 2
        hosts.locator("[data-field=running]", has_text="fleetjob").wait_for()
        shoot(watched, screenshots, "overview-hosts-real-fleet")
        watched.clean()
    finally:
        fleet.down()
        cluster.stop()
        shutil.rmtree(tmp_path / "nats", ignore_errors=True)
