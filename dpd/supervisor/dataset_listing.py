"""A job's dataset directories listed the way diffusion-pipe reads them (reference §3.2), for
the steps-per-epoch estimate (``dpd.jobs.epoch_estimate``). Blocking: call in a thread.

Bounded: at most ``max_files`` directory entries are read over all directories; a listing cut
there says so (``complete`` False), and the estimate then says it is one. Only names are
read (one ``scandir`` per directory, plus captions.json where there is one): no image is
opened, so sizes and frame counts stay unknown.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from typing import Any, Final

from dpd.jobs.epoch_estimate import DirectoryListing, EpochEstimate, MediaFile
from dpd.jobs.epoch_estimate import estimate_steps_per_epoch as estimate
from dpd.jobs.spec import JobSpec

log = logging.getLogger("dpd.supervisor")

MAX_FILES: Final = 200_000
CAPTIONS_JSON: Final = "captions.json"
NOT_MEDIA: Final = frozenset({".txt", ".npz", ".json", ".parquet", ".bak", ".db"})  # exact case
# imageio's video extensions as the trainer matches them: all lower- or all upper-case
VIDEO_EXTENSIONS: Final = frozenset(
    {
        "mp4",
        "mov",
        "mkv",
        "webm",
        "avi",
        "m4v",
        "mpg",
        "mpeg",
        "ts",
        "flv",
        "wmv",
        "3gp",
        "3g2",
        "ogv",
        "asf",
        "divx",
        "dv",
        "f4v",
        "m2ts",
        "mts",
        "mxf",
        "vob",
        "yuv",
        "j2k",
        "mpo",
        "rgb",
        "dat",
        "ogg",
        "m4a",
    }
)


def estimate_for_spec(
    spec: JobSpec, data_parallel: int, max_files: int = MAX_FILES
) -> EpochEstimate | None:
    """The estimate for ``spec``, or None where its directories cannot be read (the
    trainer will report that itself)."""
    try:
        listings = list_dataset(spec, max_files)
    except (OSError, ValueError) as err:
        log.info("no steps-per-epoch estimate for %s: %s", spec.task_id, err)
        return None
    return estimate(spec, listings, data_parallel)


def list_dataset(spec: JobSpec, max_files: int = MAX_FILES) -> list[DirectoryListing]:
    """Every ``[[directory]]`` of the spec, in order, within ``max_files`` entries in all."""
    listings = []
    budget = max_files
    for entry in spec.dataset.get("directories") or []:
        listing, used = list_directory(str(entry["path"]), budget)
        budget -= used
        listings.append(listing)
    return listings


def list_directory(path: str, budget: int) -> tuple[DirectoryListing, int]:
    """(the directory's media, entries read). OSError if it cannot be read; ValueError if its
    captions.json is not JSON (the trainer fails on both)."""
    names: dict[str, bool] = {}  # name -> is a regular file
    complete = True
    for entry in _entries(path):
        if len(names) >= budget:
            complete = False
            break
        names[entry.name] = entry.is_file()
    captions = _captions_json(path) if os.path.isfile(os.path.join(path, CAPTIONS_JSON)) else None
    files, unread = [], []
    for name in sorted(names):
        suffix = os.path.splitext(name)[1]
        if not names[name] or suffix in NOT_MEDIA:
            continue
        if suffix == ".tar":
            unread.append(f"tar archive {os.path.join(path, name)} was not opened")
            continue
        count = _caption_count(name, captions, names)
        files.append(MediaFile(name, count, video=_is_video(suffix)))
    return DirectoryListing(path, tuple(files), complete, tuple(unread)), len(names)


def _entries(path: str) -> Iterator[os.DirEntry[str]]:
    with os.scandir(path) as entries:
        yield from entries


def _captions_json(path: str) -> dict[str, Any]:
    with open(os.path.join(path, CAPTIONS_JSON), encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{CAPTIONS_JSON} in {path} is not a JSON object")
    return data


def _caption_count(name: str, captions: dict[str, Any] | None, names: dict[str, bool]) -> int:
    """captions.json's list for the file if there is one (then .txt files are ignored), else
    1 for ``<stem>.txt`` beside it (``a.b.png`` pairs with ``a.b.txt``)."""
    if captions is not None:
        listed = captions.get(name)
        if listed is None:
            return 0
        return len(listed) if isinstance(listed, list) else 1
    return 1 if os.path.splitext(name)[0] + ".txt" in names else 0


def _is_video(suffix: str) -> bool:
    bare = suffix[1:]
    return bare in VIDEO_EXTENSIONS or (bare.isupper() and bare.lower() in VIDEO_EXTENSIONS)
