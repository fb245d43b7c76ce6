"""Dataset directories listed as diffusion-pipe reads them (reference §3.2), on real files."""

from __future__ import annotations

import json
from pathlib import Path

from dpd.jobs.epoch_estimate import MediaFile
from dpd.supervisor.dataset_listing import estimate_for_spec, list_dataset, list_directory
from tests.jobs.test_epoch_estimate import spec


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"x")


def test_media_and_captions_follow_the_trainers_rules(tmp_path: Path) -> None:
    touch(tmp_path, "a.png", "a.txt", "b.jpg", "c.d.png", "c.d.txt", ".DS_Store", "e.json")
    touch(tmp_path, "clip.mp4", "clip.txt", "LOUD.MP4", "odd.Mp4", "x.npz", "y.TXT")
    (tmp_path / "cache").mkdir()
    listing, read = list_directory(str(tmp_path), 100)
    assert read == 14 and listing.complete
    assert {f.name: (f.captions, f.video) for f in listing.files} == {
        "a.png": (1, False),
        "b.jpg": (0, False),
        "c.d.png": (1, False),  # a.b.png pairs with a.b.txt
        ".DS_Store": (0, False),  # every other file is media, stray ones too
        "clip.mp4": (1, True),
        "LOUD.MP4": (0, True),
        "odd.Mp4": (0, False),  # mixed case is not in imageio's list: an image
        "y.TXT": (0, False),  # the skipped suffixes are matched exactly
    }


def test_captions_json_replaces_the_txt_files(tmp_path: Path) -> None:
    touch(tmp_path, "a.png", "a.txt", "b.png", "c.png")
    (tmp_path / "captions.json").write_text(json.dumps({"b.png": ["one", "two"], "c.png": ["x"]}))
    listing, _ = list_directory(str(tmp_path), 100)
    assert listing.files == (MediaFile("a.png", 0), MediaFile("b.png", 2), MediaFile("c.png", 1))


def test_the_listing_stops_at_its_budget_across_directories(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for directory in (first, second):
        directory.mkdir()
        touch(directory, *(f"{i}.png" for i in range(6)), *(f"{i}.txt" for i in range(6)))
    job = spec([{"path": str(first)}, {"path": str(second)}])
    whole = list_dataset(job, 100)
    assert [len(x.files) for x in whole] == [6, 6] and all(x.complete for x in whole)
    cut = list_dataset(job, 15)
    assert [x.complete for x in cut] == [True, False]
    estimate = estimate_for_spec(job, 1, max_files=15)
    assert estimate is not None and not estimate.exact
    assert estimate_for_spec(job, 1) == estimate_for_spec(job, 1, max_files=24)
    assert estimate_for_spec(job, 1).steps_per_epoch == 12  # type: ignore[union-attr]


def test_an_unreadable_dataset_gives_no_estimate(tmp_path: Path) -> None:
    assert estimate_for_spec(spec([{"path": str(tmp_path / "gone")}]), 1) is None
    (tmp_path / "captions.json").write_text("{not json")
    touch(tmp_path, "a.png")
    assert estimate_for_spec(spec([{"path": str(tmp_path)}]), 1) is None
