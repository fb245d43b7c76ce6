"""The manager with the real ffmpeg: completion, events, the concurrency limit, cancel,
a restart in the middle of processing, and ffmpeg started at submit (undone whole when the
upload is refused, killed when the daemon dies)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from dpd.errors import Conflict, NotFound, ValidationFailed
from dpd.preprocess import tasks
from dpd.preprocess.probe import probe_media
from dpd.preprocess.tasks import PreprocessManager, UploadRequest
from dpd.preprocess.taskstore import ID_RE
from tests.preprocess.conftest import Events, ffmpeg, make_config
from tests.waiting import wait_until


def staged_copy(manager: PreprocessManager, source: Path) -> Path:
    staged = manager.staging_path()
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, staged)
    return staged


def request(manager: PreprocessManager, source: Path, **kw: object) -> UploadRequest:
    fields = {"prompt": "a test pattern", "model_type": "wan", **kw}
    return UploadRequest(staged_copy(manager, source), source.name, **fields)  # type: ignore[arg-type]


def ffmpeg_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "ffmpeg" in p.name()]


def done(manager: PreprocessManager, task_id: str) -> bool:
    return manager.get(task_id)["status"] in ("completed", "failed", "stopped")


async def assert_nothing_left(manager: PreprocessManager) -> None:
    """A refused upload: no task, no ffmpeg, no task or work directory, no staged file."""
    assert manager.all_tasks() == [] and not ffmpeg_children()
    assert [p.name for p in manager.store.root.iterdir()] in ([], [".incoming"])
    work = manager.root / ".dpd-work"
    assert not work.exists() or os.listdir(work) == []
    incoming = manager.store.root / ".incoming"
    await wait_until(lambda: not incoming.exists() or os.listdir(incoming) == [])


async def test_clip_becomes_a_captioned_dataset_item(
    manager: PreprocessManager, events: Events, clip: Callable[..., Path]
) -> None:
    source = clip("beach.mp4", seconds=3, fps=24, size=(640, 360))
    state = await manager.submit(request(manager, source, resolution=(256, 256)))
    task_id = state["task_id"]
    assert state["status"] == "queued" and task_id.startswith("preprocess_")
    await wait_until(lambda: done(manager, task_id))
    final = manager.get(task_id)
    assert final["status"] == "completed", final["error"]
    result = final["result"]
    media = Path(result["video_path"])
    assert media.parent == manager.root / "wan" and media.suffix == ".mp4"
    assert media.with_suffix(".txt").read_text() == "a test pattern\n"
    info = await probe_media("ffprobe", media)
    assert (info.fps, info.frame_count, info.width, info.height) == (16, 33, 256, 256)
    meta = result["metadata"]
    assert (meta["fps"], meta["resolution"], meta["frame_count"]) == (16, "256x256", 33)
    assert meta["duration"] == pytest.approx(33 / 16, abs=0.01)
    assert final["processing_time"] > 0 and result["dataset_dir"] == str(manager.root / "wan")
    assert events.statuses(task_id) == ["queued", "processing", "completed"]
    steps = [d["current_step"] for _, t, k, d in events.records if k == "progress"]
    assert "transcoding" in steps and "writing caption" in steps
    assert steps.index("transcoding") < steps.index("writing caption")  # announced in order
    on_disk = json.loads((manager.store.task_dir(task_id) / "state.json").read_text())
    assert on_disk["status"] == "completed"
    assert not Path(on_disk["upload"]["path"]).exists()  # the stored upload is gone once done
    assert os.listdir(manager.root / ".dpd-work") == []


async def test_bad_upload_is_refused_and_removed(
    manager: PreprocessManager, tmp_path: Path
) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 5000)
    req = request(manager, junk)
    with pytest.raises(ValidationFailed) as err:
        await manager.submit(req)
    assert "corrupt" in err.value.message
    assert not req.staged.exists()
    await assert_nothing_left(manager)


async def test_a_big_refused_upload_is_renamed_at_once_and_deleted_behind(
    manager: PreprocessManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks, "DISCARD_INLINE_BYTES", 1000)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 5000)
    req = request(manager, junk)
    with pytest.raises(ValidationFailed):
        await manager.submit(req)
    assert not req.staged.exists()  # its name is free the moment the answer goes out
    await wait_until(lambda: os.listdir(req.staged.parent) == [])
    assert manager.all_tasks() == []


async def test_too_short_for_every_bucket_is_refused(
    manager: PreprocessManager, clip: Callable[..., Path]
) -> None:
    with pytest.raises(ValidationFailed) as err:
        await manager.submit(request(manager, clip("short.mp4", seconds=1, fps=24)))
    assert err.value.errors[0].field == "video" and "too short" in err.value.message
    await assert_nothing_left(manager)


async def test_no_more_ffmpeg_processes_than_the_limit(
    tmp_path: Path,
    events: Events,
    clip: Callable[..., Path],
    slow_ffmpeg: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DPD_TEST_READRATE", "3")
    manager = PreprocessManager(make_config(tmp_path, str(slow_ffmpeg), concurrent=2), events)
    await manager.start()
    try:
        source = clip("c.mp4", seconds=2.2, fps=16, size=(160, 120))
        ids = [(await manager.submit(request(manager, source)))["task_id"] for _ in range(3)]
        running, peak = set(), 0
        seen = 0
        while not all(done(manager, t) for t in ids):
            for _, task_id, kind, data in events.records[seen:]:
                if kind == "status" and data["status"] == "processing":
                    running.add(task_id)
                elif kind == "status" and data["status"] in ("completed", "failed"):
                    running.discard(task_id)
                peak = max(peak, len(running))
            seen = len(events.records)
            await wait_until(
                lambda n=seen: len(events.records) > n or all(done(manager, t) for t in ids)
            )
        assert peak == 2
        assert [manager.get(t)["status"] for t in ids] == ["completed"] * 3
        names = sorted(p.name for p in (manager.root / "wan").iterdir())
        assert len(names) == 6 and len(set(names)) == 6  # 3 clips, 3 captions, no clash
    finally:
        await manager.close()


async def test_cancel_kills_ffmpeg_and_removes_partial_output(
    tmp_path: Path, events: Events, clip: Callable[..., Path], slow_ffmpeg: Path
) -> None:
    manager = PreprocessManager(make_config(tmp_path, str(slow_ffmpeg)), events)
    await manager.start()
    try:
        source = clip("long.mp4", seconds=6, fps=16, size=(160, 120))
        first = (await manager.submit(request(manager, source)))["task_id"]
        queued = (await manager.submit(request(manager, source)))["task_id"]
        await wait_until(lambda: manager.get(first).get("frames_done", 0) > 0)
        work = list((manager.root / ".dpd-work" / first).iterdir())
        assert work and ffmpeg_children()
        stopped = await manager.cancel(first)
        assert stopped["status"] == "stopped"
        assert not (manager.root / ".dpd-work" / first).exists()
        await wait_until(lambda: manager.get(queued)["status"] == "processing")
        assert (await manager.cancel(queued))["status"] == "stopped"
        await wait_until(lambda: not ffmpeg_children())
        assert not (manager.root / "wan").exists() or os.listdir(manager.root / "wan") == []
        with pytest.raises(Conflict):
            await manager.cancel(first)
        with pytest.raises(NotFound):
            await manager.cancel("preprocess_20000101_00000001")
        assert events.statuses(first)[-1] == "stopped"
    finally:
        await manager.close()


async def test_restart_mid_processing_reruns_from_the_stored_upload(
    tmp_path: Path, clip: Callable[..., Path], slow_ffmpeg: Path
) -> None:
    first_events = Events()
    manager = PreprocessManager(make_config(tmp_path, str(slow_ffmpeg)), first_events)
    await manager.start()
    source = clip("r.mp4", seconds=6, fps=16, size=(160, 120))
    task_id = (await manager.submit(request(manager, source)))["task_id"]
    await wait_until(lambda: manager.get(task_id).get("frames_done", 0) > 0)
    await manager.close()  # the daemon goes away in the middle of transcoding
    on_disk = json.loads((manager.store.task_dir(task_id) / "state.json").read_text())
    assert on_disk["status"] == "processing" and on_disk["current_step"] == "transcoding"
    assert not ffmpeg_children() and not (manager.root / ".dpd-work" / task_id).exists()

    second_events = Events()
    restarted = PreprocessManager(make_config(tmp_path), second_events)
    await restarted.start()
    try:
        await wait_until(lambda: done(restarted, task_id))
        assert restarted.get(task_id)["status"] == "completed"
        # the state changes in memory first; its event follows once state.json is written
        await wait_until(lambda: second_events.statuses(task_id)[-1:] == ["completed"])
        fresh = (await restarted.submit(request(restarted, source)))["task_id"]
        assert fresh != task_id and fresh > task_id  # ids never repeat across restarts
    finally:
        await restarted.close()


async def test_start_fails_a_task_whose_upload_is_gone(
    tmp_path: Path, clip: Callable[..., Path], slow_ffmpeg: Path
) -> None:
    manager = PreprocessManager(make_config(tmp_path, str(slow_ffmpeg)), Events())
    await manager.start()
    task_id = (
        await manager.submit(request(manager, clip("g.mp4", seconds=6, fps=16, size=(160, 120))))
    )["task_id"]
    await manager.close()
    Path(manager.get(task_id)["upload"]["path"]).unlink()
    restarted = PreprocessManager(make_config(tmp_path), Events())
    await restarted.start()
    assert restarted.get(task_id)["status"] == "failed"
    assert "upload is missing" in restarted.get(task_id)["error"]
    await restarted.close()


async def test_ffmpeg_starts_at_submit_only_while_a_slot_is_free(
    tmp_path: Path, events: Events, clip: Callable[..., Path], slow_ffmpeg: Path
) -> None:
    manager = PreprocessManager(make_config(tmp_path, str(slow_ffmpeg)), events)
    await manager.start()
    try:
        source = clip("f.mp4", seconds=6, fps=16, size=(160, 120))
        first = (await manager.submit(request(manager, source)))["task_id"]
        started = ffmpeg_children()  # before the run's first step: started by submit
        assert len(started) == 1 and manager.get(first)["status"] == "queued"
        second = (await manager.submit(request(manager, source)))["task_id"]
        assert [p.pid for p in ffmpeg_children()] == [started[0].pid]  # no slot: queued
        await wait_until(lambda: manager.get(first).get("frames_done", 0) > 0)
        assert manager.get(second)["status"] == "queued"
        await manager.cancel(first)
        await wait_until(lambda: manager.get(second).get("frames_done", 0) > 0)
        assert len(ffmpeg_children()) == 1
    finally:
        await manager.close()


async def test_cancel_or_close_before_the_run_begins(
    tmp_path: Path, clip: Callable[..., Path], slow_ffmpeg: Path
) -> None:
    """The run's task is cancelled before its first step: it never runs its own cleanup."""
    manager = PreprocessManager(make_config(tmp_path, str(slow_ffmpeg)), Events())
    await manager.start()
    source = clip("b.mp4", seconds=6, fps=16, size=(160, 120))
    cancelled = (await manager.submit(request(manager, source)))["task_id"]
    assert (await manager.cancel(cancelled))["status"] == "stopped"
    assert not ffmpeg_children() and not (manager.root / ".dpd-work" / cancelled).exists()
    assert not Path(manager.get(cancelled)["upload"]["path"]).exists()
    left = (await manager.submit(request(manager, source)))["task_id"]  # the slot is free
    assert len(ffmpeg_children()) == 1
    await manager.close()
    assert not ffmpeg_children() and manager.get(left)["status"] == "queued"
    restarted = PreprocessManager(make_config(tmp_path), Events())
    await restarted.start()
    try:
        await wait_until(lambda: done(restarted, left))
        assert restarted.get(left)["status"] == "completed"
    finally:
        await restarted.close()


async def test_a_video_file_holding_one_image_becomes_an_image(
    manager: PreprocessManager, tmp_path: Path
) -> None:
    """Named as a video, ffmpeg starts for a video; the probe finds a still image."""
    still = tmp_path / "still.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240", "-frames:v", "1", "-c:v", "mjpeg",
           str(still))  # fmt: skip
    task_id = (await manager.submit(request(manager, still)))["task_id"]
    await wait_until(lambda: done(manager, task_id))
    final = manager.get(task_id)
    assert final["status"] == "completed", final["error"]
    made = Path(final["result"]["video_path"])
    assert made.suffix == ".png" and final["plan"]["kind"] == "image"
    info = await probe_media("ffprobe", made, image=True)
    assert (info.kind, info.codec, info.width, info.height) == ("image", "png", 320, 240)
    assert os.listdir(manager.root / ".dpd-work") == []


CRASHING_DAEMON = """
import asyncio, shutil, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from dpd.events import discard_event
from dpd.preprocess.tasks import PreprocessManager, UploadRequest
from tests.preprocess.conftest import make_config

async def main():
    manager = PreprocessManager(make_config(Path({tmp!r})), discard_event)
    await manager.start()
    staged = manager.staging_path()
    staged.parent.mkdir()
    shutil.copyfile({source!r}, staged)
    await manager.submit(UploadRequest(staged, "c.mp4", "p", "wan"))

asyncio.run(main())
"""


@pytest.mark.crash
async def test_a_daemon_killed_while_probing_leaves_no_ffmpeg_and_no_task(
    tmp_path: Path, clip: Callable[..., Path]
) -> None:
    """ffprobe hangs (a stand-in that sleeps), so the daemon dies with ffmpeg started and
    the task half made: ffmpeg and the probes die with it, and the next start clears the
    task."""
    stuck = tmp_path / "bin" / "ffprobe"
    stuck.parent.mkdir()
    stuck.write_text("#!/bin/sh\nexec sleep 60\n")
    stuck.chmod(0o755)
    manager = PreprocessManager(make_config(tmp_path), Events())
    source = clip("c.mp4", seconds=3, fps=16, size=(160, 120))
    code = CRASHING_DAEMON.format(
        repo=str(Path(__file__).resolve().parents[2]), tmp=str(tmp_path), source=str(source)
    )
    env = {**os.environ, "PATH": f"{stuck.parent}:{os.environ['PATH']}"}
    daemon = subprocess.Popen([sys.executable, "-c", code], env=env)
    parent = psutil.Process(daemon.pid)
    children: list[psutil.Process] = []
    try:
        await wait_until(lambda: {"ffmpeg", "sleep"} <= names(parent), timeout=30)
        children = parent.children(recursive=True)
        assert sorted(p.name() for p in children) == ["ffmpeg", "sleep", "sleep"]
        daemon.kill()
        daemon.wait()
        await wait_until(lambda: all(gone(p) for p in children))
    finally:
        daemon.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    assert any(ID_RE.match(p.name) for p in manager.store.root.iterdir())  # half made
    restarted = PreprocessManager(make_config(tmp_path), Events())
    await restarted.start()
    try:
        assert restarted.all_tasks() == [] and not (restarted.root / ".dpd-work").exists()
        assert [p.name for p in restarted.store.root.iterdir()] == []
    finally:
        await restarted.close()


def names(process: psutil.Process) -> set[str]:
    with contextlib.suppress(psutil.Error):
        return {p.name() for p in process.children(recursive=True)}
    return set()


def gone(process: psutil.Process) -> bool:
    """Dead: reaped, or a zombie nobody reaps (its parent was the killed daemon)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    return True
