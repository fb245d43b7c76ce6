"""Media made by the real ffmpeg from its lavfi sources, and a manager on temp directories.

Files are generated once per session (they are small) and copied per test, so a test may
move or delete its copy. ``slow_ffmpeg`` is the real ffmpeg reading its input at a fixed
multiple of real time (``-readrate``): long enough to observe, cancel or interrupt a run.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dpd.config import Config, DaemonConfig, HttpConfig, PreprocessConfig
from dpd.preprocess.tasks import PreprocessManager

LAVFI_VIDEO = "testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=60)


def make_video(
    path: Path,
    seconds: float = 3,
    fps: float = 24,
    size: tuple[int, int] = (320, 240),
    codec: str = "libx264",
    audio: bool = False,
) -> Path:
    source = LAVFI_VIDEO.format(w=size[0], h=size[1], fps=fps, seconds=seconds)
    args = ["-f", "lavfi", "-i", source]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=duration={seconds}", "-c:a", "aac"]
    pix = ["-pix_fmt", "yuv420p"] if codec in ("libx264", "libvpx-vp9") else []
    ffmpeg(*args, "-c:v", codec, *pix, str(path))
    return path


class MediaFactory:
    """Generates each described file once and hands out copies."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def get(self, name: str, target_dir: Path, maker: Callable[[Path], Any], key: str = "") -> Path:
        cached = self.cache / f"{abs(hash(key)):x}-{name}"
        if not cached.exists():
            tmp = cached.with_name(f"tmp-{cached.name}")
            maker(tmp)
            tmp.rename(cached)
        target_dir.mkdir(parents=True, exist_ok=True)
        copy = target_dir / name
        shutil.copyfile(cached, copy)
        return copy


@pytest.fixture(scope="session")
def media_factory(tmp_path_factory: pytest.TempPathFactory) -> MediaFactory:
    return MediaFactory(tmp_path_factory.mktemp("media"))


@pytest.fixture
def clip(media_factory: MediaFactory, tmp_path: Path) -> Callable[..., Path]:
    """clip(name, seconds=, fps=, size=, codec=, audio=) -> a fresh copy of that video."""

    def make(name: str, **kw: Any) -> Path:
        key = repr(sorted(kw.items()))
        return media_factory.get(name, tmp_path / "src", lambda p: make_video(p, **kw), key)

    return make


@pytest.fixture
def slow_ffmpeg(tmp_path: Path) -> Path:
    """The real ffmpeg reading its input at real time (or $DPD_TEST_READRATE times it)."""
    script = tmp_path / "bin" / "ffmpeg-realtime"
    script.parent.mkdir(parents=True)
    script.write_text('#!/bin/sh\nexec ffmpeg -readrate "${DPD_TEST_READRATE:-1}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def make_config(
    tmp_path: Path, ffmpeg_cmd: str = "ffmpeg", concurrent: int = 1, upload_mb: int = 64
) -> Config:
    daemon = DaemonConfig(
        node="test",
        spool_dir=tmp_path / "spool",
        state_dir=tmp_path / "state",
        storage_root=tmp_path / "data",
        output_root=tmp_path / "data" / "runs",
        models_root=tmp_path / "data" / "models",
        preprocessed_root=tmp_path / "data" / "preprocessed",
        data_roots=[tmp_path / "data"],
    )
    return Config(
        daemon=daemon,
        http=HttpConfig(max_upload_mb=upload_mb),
        preprocess=PreprocessConfig(max_concurrent=concurrent, ffmpeg=ffmpeg_cmd),
    )


class Events:
    """An EmitEvent that records what it is given."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, dict[str, Any]]] = []

    def __call__(self, scope: str, task_id: str, kind: str, data: dict[str, Any]) -> None:
        self.records.append((scope, task_id, kind, data))

    def statuses(self, task_id: str) -> list[str]:
        return [d["status"] for _, t, k, d in self.records if t == task_id and k == "status"]


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
async def manager(tmp_path: Path, events: Events) -> AsyncIterator[PreprocessManager]:
    mgr = PreprocessManager(make_config(tmp_path), events)
    await mgr.start()
    yield mgr
    await mgr.close()
