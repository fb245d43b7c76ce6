"""What a dataset directory under preprocessed_root holds, and what diffusion-pipe will keep.

It reads a directory the way diffusion-pipe does (reference/diffusion-pipe.md §3.2): not
recursive; ``.txt .npz .json .parquet .bak .db`` files and sub-directories are not media;
every other file is, a video if its suffix is on imageio's video list (in lower or upper
case exactly), else an image; the caption is ``<stem>.txt`` unless ``captions.json`` exists.
``bucket_report`` (pure) then says, for a model and its frame buckets, which bucket each
item lands in and why an item is dropped (no caption, too short, unreadable, a video for an
image-only model).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dpd.preprocess.plan import (
    MODELS,
    ModelMedia,
    choose_bucket,
    model_frames,
    normalize_buckets,
)
from dpd.preprocess.probe import MediaRejected, probe_media
from dpd.preprocess.publish import WORK_DIR

NOT_MEDIA = frozenset({".txt", ".npz", ".json", ".parquet", ".bak", ".db"})
VIDEO_SUFFIXES = frozenset(
    {"mp4", "mov", "mkv", "webm", "avi", "m4v", "mpg", "mpeg", "ts", "flv", "wmv", "3gp", "ogv"}
)
PROBE_PARALLEL = 4


@dataclass(frozen=True)
class DatasetItem:
    file: str
    kind: str  # "video" | "image" | "unreadable"
    has_caption: bool
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    problem: str | None = None


def is_video_name(name: str) -> bool:
    suffix = name.rpartition(".")[2]
    return "." in name and (
        suffix in VIDEO_SUFFIXES or (suffix.lower() in VIDEO_SUFFIXES and suffix.isupper())
    )


def summarize(items: list[DatasetItem]) -> dict[str, Any]:
    return {
        "clips": sum(1 for i in items if i.kind == "video"),
        "images": sum(1 for i in items if i.kind == "image"),
        "total_frames": sum(i.frames for i in items if i.kind != "unreadable"),
        "missing_captions": sorted(i.file for i in items if not i.has_caption),
        "unreadable": sorted(i.file for i in items if i.kind == "unreadable"),
    }


def bucket_report(
    items: list[DatasetItem], model_type: str, frame_buckets: tuple[int, ...] | None
) -> dict[str, Any]:
    """Which bucket keeps each item for ``model_type``; ValueError for an unknown model or
    bad buckets."""
    model = MODELS.get(model_type)
    if model is None:
        raise ValueError(f"unknown model type {model_type!r}; known: {', '.join(sorted(MODELS))}")
    buckets = normalize_buckets(frame_buckets, model)
    kept: dict[str, list[str]] = {str(b): [] for b in buckets}
    dropped: list[dict[str, str]] = []
    for item in items:
        bucket, reason = _place(item, model, buckets)
        if bucket is None:
            dropped.append({"file": item.file, "reason": reason})
        else:
            kept[str(bucket)].append(item.file)
    return {
        "model_type": model_type,
        "frame_buckets": list(buckets),
        "buckets": kept,
        "dropped": dropped,
    }


def _place(
    item: DatasetItem, model: ModelMedia, buckets: tuple[int, ...]
) -> tuple[int | None, str]:
    if item.kind == "unreadable":
        return None, f"diffusion-pipe cannot open it: {item.problem}"
    if not item.has_caption:
        return None, "no caption (skip_empty_caption is on by default)"
    if item.kind == "image":
        return 1, ""
    if not model.video:
        return None, "video in a dataset for an image-only model"
    model_fps = model.fps
    if model_fps is None:
        return None, "video for a model whose frame rate dpd does not know: bucket unknown"
    frames = model_frames(item.frames, item.fps, model_fps)
    bucket = choose_bucket(frames, buckets)
    if bucket is None:
        return None, f"too short: {frames} frames at {model_fps} fps fill no frame bucket"
    return bucket, ""


class DatasetCatalog:
    """Lists and inspects dataset directories; probes each media file once per version
    (path, size, mtime)."""

    def __init__(self, root: Path, ffprobe: str) -> None:
        self.root = root
        self.ffprobe = ffprobe
        self._cache: dict[tuple[str, int, int], DatasetItem] = {}
        self._gate = asyncio.Semaphore(PROBE_PARALLEL)

    def names(self) -> list[str]:
        """Blocking: the dataset directory names (hidden and work directories excluded)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.name != WORK_DIR
        )

    async def items(self, name: str) -> list[DatasetItem]:
        """FileNotFoundError when the dataset does not exist."""
        entries = await asyncio.to_thread(_list_media, self.root / name)
        return list(
            await asyncio.gather(
                *(self._item(path, size, mtime, cap) for path, size, mtime, cap in entries)
            )
        )

    async def _item(self, path: Path, size: int, mtime: int, has_caption: bool) -> DatasetItem:
        key = (str(path), size, mtime)
        cached = self._cache.get(key)
        if cached is None:
            async with self._gate:
                cached = await self._probe(path)
            self._cache[key] = cached
        return DatasetItem(**{**asdict(cached), "has_caption": has_caption})

    async def _probe(self, path: Path) -> DatasetItem:
        video = is_video_name(path.name)
        try:
            info = await probe_media(self.ffprobe, path, image=not video)
        except (MediaRejected, OSError, ValueError) as err:
            return DatasetItem(path.name, "unreadable", False, problem=str(err))
        return DatasetItem(
            path.name,
            info.kind,
            False,
            info.frame_count if video else 1,
            info.fps,
            info.width,
            info.height,
        )


def _list_media(directory: Path) -> list[tuple[Path, int, int, bool]]:
    if not directory.is_dir():
        raise FileNotFoundError(directory)
    captions_json = directory / "captions.json"
    listed: set[str] | None = None
    if captions_json.is_file():
        try:
            listed = set(json.loads(captions_json.read_text()))
        except (ValueError, TypeError):
            listed = set()  # diffusion-pipe would fail on it: no item has a usable caption
    found = []
    for path in sorted(directory.iterdir()):
        if path.is_dir() or path.suffix in NOT_MEDIA:
            continue
        has_caption = (
            path.name in listed if listed is not None else path.with_suffix(".txt").is_file()
        )
        stat = path.stat()
        found.append((path, stat.st_size, stat.st_mtime_ns, has_caption))
    return found
