"""Steps per epoch before the trainer says so: reference §4.5 applied to a listing of the
dataset — pure.

diffusion-pipe never prints steps_per_epoch; the daemon learns it only when
``Started new epoch: 2`` appears, which on a long run is an hour of no total and no ETA.
This module computes it from the job's dataset and batch settings and a listing of each
directory's media (``DirectoryListing``, made by ``dpd.supervisor.dataset_listing``).

What it guarantees: the arithmetic is the trainer's (size buckets per resolution, AR bucket
and frame bucket; ``int(count x num_repeats)`` per directory and bucket; per bucket
``floor(N_b / (mbs_b x GAS x DP))``; ``subsample_ratio``), so where the listing says all the
trainer will see, the answer is ``exact``. What it does not know, and then says so in
``reasons``: image sizes (with AR bucketing, items whose size is unknown are pooled in one
bucket, an upper bound; exact anyway when every global batch is 1), video frame counts
(videos are assumed long enough for the largest frame bucket), files the trainer cannot
open, tar archives, and anything past the listing's cap (a lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dpd.jobs.spec import JobSpec

EMPTY_DATASET: Final = (
    "RuntimeError: Processed dataset was empty. Probably caused by rounding down for each "
    "size bucket."
)
ROUND_DIGITS: Final = 3  # the trainer dedups resolutions and ARs at 3 decimals
DEFAULT_PIXEL_MULTIPLE: Final = 16
PIXEL_MULTIPLE: Final = {"ltx-video": 32, "hunyuan_image": 32}  # reference §3.2

AR_UNKNOWN: Final = (
    "aspect-ratio buckets need each image's size, which was not read: rounding down per "
    "bucket can make the real number smaller"
)
FRAMES_UNKNOWN: Final = (
    "video frame counts were not read: videos are taken to fill the largest frame bucket"
)


@dataclass(frozen=True)
class MediaFile:
    """One file the trainer treats as media. ``captions``: how many captions it has (0: none;
    1 for a ``.txt``; the list's length in captions.json). ``frames`` (videos, at the model's
    frame rate) and ``size`` (width, height) are None where they were not read."""

    name: str
    captions: int
    video: bool = False
    frames: int | None = None
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class DirectoryListing:
    """A ``[[directory]]``'s media. ``complete`` False: the listing stopped at its cap.
    ``unread``: why some files could not be counted (a tar archive, ...)."""

    path: str
    files: tuple[MediaFile, ...]
    complete: bool = True
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class EpochEstimate:
    """steps_per_epoch as the trainer will compute it; ``exact`` False says it may differ, and
    ``reasons`` why. ``error``: the trainer's own error text where it would refuse to train
    (then ``steps_per_epoch`` is 0)."""

    steps_per_epoch: int
    exact: bool
    reasons: tuple[str, ...] = ()
    error: str | None = None


@dataclass
class _Tally:
    """Entries per size bucket across directories, and what made the count uncertain."""

    buckets: dict[tuple[Any, ...], int] = field(default_factory=dict)
    pooled: set[tuple[Any, ...]] = field(default_factory=set)  # keys holding unknown ARs
    reasons: list[str] = field(default_factory=list)

    def doubt(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)


def estimate_steps_per_epoch(
    spec: JobSpec, listings: Sequence[DirectoryListing], data_parallel: int
) -> EpochEstimate:
    """Reference §4.5 for ``spec`` with its directories listed as ``listings`` (in the
    order of ``spec.dataset["directories"]``) and ``data_parallel`` model copies."""
    entries = list(spec.dataset.get("directories") or [])
    defaults = {k: v for k, v in spec.dataset.items() if k != "directories"}
    tally = _Tally()
    multiple = PIXEL_MULTIPLE.get(spec.model_type, DEFAULT_PIXEL_MULTIPLE)
    for entry, listing in zip(entries, listings, strict=True):
        if listing.complete and not listing.files and not listing.unread:
            error = f"AssertionError: Directory {listing.path} had no images/videos!"
            return EpochEstimate(0, True, (), error)
        directory = {**defaults, **entry}
        counts = _directory_counts(directory, listing, multiple, tally)
        repeats = float(directory.get("num_repeats", 1))
        for key, count in counts.items():
            tally.buckets[key] = tally.buckets.get(key, 0) + int(count * repeats)
    return _steps(spec.config, defaults, tally, max(1, data_parallel))


def _steps(
    config: Mapping[str, Any], defaults: Mapping[str, Any], tally: _Tally, dp: int
) -> EpochEstimate:
    mbs = config.get("micro_batch_size_per_gpu", 1)
    image_mbs = config.get("image_micro_batch_size_per_gpu", mbs)
    gas = int(config.get("gradient_accumulation_steps", 1))
    total = 0
    for key, count in tally.buckets.items():
        _, width, height, frames = key
        batch = _batch_size(image_mbs if frames == 1 else mbs, math.sqrt(width * height))
        total += count // (batch * gas * dp)
        if key in tally.pooled and _any_batch_above_one(image_mbs if frames == 1 else mbs, gas, dp):
            tally.doubt(AR_UNKNOWN)
    ratio = defaults.get("subsample_ratio")
    if ratio is not None:
        total = int(total * float(ratio))
    reasons = tuple(tally.reasons)
    return EpochEstimate(total, not reasons, reasons, EMPTY_DATASET if total == 0 else None)


def _directory_counts(
    directory: Mapping[str, Any], listing: DirectoryListing, multiple: int, tally: _Tally
) -> dict[tuple[Any, ...], int]:
    """Entries (items x captions per item) per size bucket for one directory."""
    for reason in listing.unread:
        tally.doubt(reason)
    if not listing.complete:
        tally.doubt(f"the listing of {listing.path} stopped early: the real number is larger")
    skip_uncaptioned = bool(directory.get("skip_empty_caption", True))
    shuffles = int(directory.get("cache_shuffle_num", 0) or 0)
    if shuffles == 0 and directory.get("shuffle_tags", False):
        shuffles = 1
    placer = _Placer(directory, multiple, tally)
    counts: dict[tuple[Any, ...], int] = {}
    for media in listing.files:
        captions = media.captions or (0 if skip_uncaptioned else 1)
        if captions == 0:
            continue
        for key in placer.keys(media):
            counts[key] = counts.get(key, 0) + captions * max(1, shuffles)
    return counts


class _Placer:
    """Which size buckets one item lands in: (AR, width, height, frames) per resolution, or
    the nearest of the directory's ``size_buckets``."""

    def __init__(self, directory: Mapping[str, Any], multiple: int, tally: _Tally) -> None:
        self.tally = tally
        self.multiple = multiple
        frames = sorted({1, *(int(f) for f in directory.get("frame_buckets", [1]))})
        self.video_frames = [f for f in frames if f > 1]
        self.size_buckets = [tuple(b) for b in directory.get("size_buckets") or []]
        self.resolutions = _dedup(_side(r) for r in directory.get("resolutions") or [])
        self.ars = _ars(directory) if not self.size_buckets else []

    def keys(self, media: MediaFile) -> list[tuple[Any, ...]]:
        if self.size_buckets:
            return self._size_bucket(media)
        frames = self._frame_bucket(media) if media.video else 1
        if frames is None:
            return []  # too short: the trainer skips it
        ar, known = self._ar(media)
        keys = []
        for resolution in self.resolutions:
            width, height = _pixels(resolution, ar if known else 1.0, self.multiple)
            key = (round(ar, ROUND_DIGITS) if known else None, width, height, frames)
            if not known:
                self.tally.pooled.add(key)
            keys.append(key)
        return keys

    def _frame_bucket(self, media: MediaFile) -> int | None:
        """The largest frame bucket <= the video's frames; never the image bucket."""
        fitting = [f for f in self.video_frames if f <= self._frames(media)]
        return fitting[-1] if fitting else None

    def _frames(self, media: MediaFile) -> float:
        """The video's frames; unknown ones are taken to fit every bucket (and said so)."""
        if media.frames is not None:
            return media.frames
        self.tally.doubt(FRAMES_UNKNOWN)
        return math.inf

    def _ar(self, media: MediaFile) -> tuple[float, bool]:
        if len(self.ars) == 1:
            return self.ars[0], True
        if media.size is None or not self.ars:
            return 1.0, False
        log_ar = math.log(media.size[0] / media.size[1])
        return min(self.ars, key=lambda ar: abs(log_ar - math.log(ar))), True

    def _size_bucket(self, media: MediaFile) -> list[tuple[Any, ...]]:
        """The nearest AR among the buckets the item fits (a video: not the image ones,
        and no longer than it), the longest first on a tie, as the trainer sorts them."""
        frames = self._frames(media) if media.video else 1
        fitting = [b for b in self.size_buckets if (b[2] == 1) != media.video and b[2] <= frames]
        if not fitting:
            return []
        fitting.sort(key=lambda b: -b[2])
        if media.size is not None:
            log_ar = math.log(media.size[0] / media.size[1])
            best = min(fitting, key=lambda b: abs(log_ar - math.log(b[0] / b[1])))
        else:
            best = fitting[0]
            if len({b[0] / b[1] for b in fitting}) > 1:
                self.tally.doubt(AR_UNKNOWN)
        width, height, bucket_frames = (int(v) for v in best)
        return [(round(width / height, ROUND_DIGITS), width, height, bucket_frames)]


def _side(resolution: Any) -> float:
    """An int is a square's side; ``[w, h]`` means the area of w x h."""
    if isinstance(resolution, list | tuple):
        return math.sqrt(float(resolution[0]) * float(resolution[1]))
    return float(resolution)


def _dedup(values: Any) -> list[float]:
    return sorted({round(float(v), ROUND_DIGITS) for v in values})


def _ars(directory: Mapping[str, Any]) -> list[float]:
    """The directory's aspect ratios (w/h): 1.0 without AR bucketing."""
    if not directory.get("enable_ar_bucket", False):
        return [1.0]
    given = directory.get("ar_buckets")
    if given:
        return _dedup(a[0] / a[1] if isinstance(a, list | tuple) else a for a in given)
    low, high = float(directory["min_ar"]), float(directory["max_ar"])
    count = int(directory["num_ar_buckets"])
    if count == 1:
        return _dedup([low])
    step = (math.log(high) - math.log(low)) / (count - 1)
    return _dedup(math.exp(math.log(low) + i * step) for i in range(count))


def _pixels(side: float, ar: float, multiple: int) -> tuple[int, int]:
    """The trainer's (w, h) for a resolution and an AR, rounded to the model's multiple."""
    area = side**2
    width = math.sqrt(area * ar)
    height = area / width
    return _round_to(width, multiple), _round_to(height, multiple)


def _round_to(value: float, multiple: int) -> int:
    return int(round(value / multiple) * multiple)


def _batch_size(value: Any, size: float) -> int:
    """An int, or the ``[[size, bs], ...]`` entry whose size is nearest ``size``."""
    if isinstance(value, list):
        return int(min(value, key=lambda pair: abs(float(pair[0]) - size))[1])
    return int(value)


def _any_batch_above_one(value: Any, gas: int, dp: int) -> bool:
    sizes = [int(pair[1]) for pair in value] if isinstance(value, list) else [int(value)]
    return any(size * gas * dp > 1 for size in sizes)
