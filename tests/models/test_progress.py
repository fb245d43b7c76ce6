"""Pure shaping of downloads: sizes, durations, speed, the view and request checking."""

from __future__ import annotations

import pytest

from dpd.errors import BadRequest, ValidationFailed
from dpd.models.catalog import parse_catalog
from dpd.models.progress import (
    LiveFigures,
    SpeedMeter,
    download_view,
    event_payload,
    human_duration,
    human_size,
)
from dpd.models.requests import parse_download_request
from tests.models.conftest import CATALOG


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (335_000_000, "335 MB"),
        (5_200_000_000, "5.2 GB"),
        (1_500, "1.5 KB"),
    ],
)
def test_human_size(size, text):
    assert human_size(size) == text


def test_human_duration():
    assert human_duration(None) is None
    assert human_duration(45) == "45s"
    assert human_duration(150) == "2m 30s"
    assert human_duration(3900) == "1h 05m"


def test_speed_meter_uses_a_sliding_window():
    meter = SpeedMeter(window_s=5)
    assert meter.rate() == 0.0
    for second in range(11):
        meter.add(float(second), second * 100)
    assert meter.rate() == pytest.approx(100.0)
    meter.add(11.0, 1000)  # a stall: the window still reports recent bytes
    assert 0 < meter.rate() < 100


def _record(status="downloading"):
    files = [
        {"path": "a", "revision": "c", "size": 100, "etag": "e", "dest": "/m/a", "done": True},
        {"path": "b", "revision": "c", "size": 300, "etag": "f", "dest": "/m/b", "done": False},
    ]
    return {
        "download_id": "dl_1",
        "model_id": "flux",
        "version": "1.0",
        "status": status,
        "error": None,
        "created_at": "t",
        "updated_at": "t",
        "finished_at": None,
        "components": [
            {"name": "vae", "repo": "r", "path": "/m", "status": "completed", "files": files[:1]},
            {"name": "te", "repo": "r", "path": "/m", "status": "downloading", "files": files[1:]},
        ],
    }


def test_view_counts_finished_files_and_the_one_in_flight():
    view = download_view(_record(), LiveFigures(("te", "b"), 150, 50.0))
    assert (view["bytes_done"], view["bytes_total"], view["progress"]) == (250, 400, 62.5)
    assert view["eta_seconds"] == 3 and view["eta"] == "3s" and view["speed"] == "50 B/s"
    vae, te = view["components"]
    assert vae["downloaded"] and vae["progress"] == 100.0 and vae["eta_seconds"] is None
    assert te["bytes_done"] == 150 and te["speed_bps"] == 50 and te["eta_seconds"] == 3
    payload = event_payload(view)
    assert payload["components"][1] == {
        "name": "te",
        "status": "downloading",
        "bytes_done": 150,
        "bytes_total": 300,
    }


def test_view_of_a_download_not_running_here_has_no_speed():
    view = download_view(_record("failed"), None)
    assert view["speed"] is None and view["eta"] is None and view["bytes_done"] == 100


def test_request_checking():
    catalog = parse_catalog(CATALOG)
    request = parse_download_request(catalog, {"model_id": "flux"})
    assert [c.name for c in request.components] == ["diffusion_model", "vae", "text_encoder"]
    request = parse_download_request(catalog, {"model_id": "broken"})
    assert [c.name for c in request.components] == ["missing", "huge"]  # not the handmade one
    with pytest.raises(BadRequest):
        parse_download_request(catalog, ["flux"])
    with pytest.raises(ValidationFailed) as caught:
        parse_download_request(
            catalog, {"model_id": "flux", "version": "9", "extra": 1, "components": []}
        )
    assert sorted(e.field for e in caught.value.errors) == ["components", "extra", "version"]
