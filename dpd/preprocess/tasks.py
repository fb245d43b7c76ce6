"""The preprocessing manager: uploads become queued tasks, at most N ffmpeg runs at once.

Owns: one asyncio task per unfinished preprocessing task, the ffmpeg processes they start
(killed on cancel and on close), the work files under ``<preprocessed_root>/.dpd-work``
(removed when a run ends or is interrupted). Statuses: ``queued`` -> ``processing`` ->
``completed`` | ``failed`` | ``stopped`` (cancelled). Every status or step change is written
to state.json before it is announced; progress is announced (at most ~4/s per task) but
not written, since an interrupted task starts over anyway. ``close`` leaves unfinished
tasks as they are on disk; ``start`` re-runs them from their stored upload.
Errors: ``submit`` raises ValidationFailed (422) for unusable media and for parameters that
do not fit the model, NotFound/Conflict come from ``get``/``cancel``; a failing run never
raises out of the manager, it ends as ``failed`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpd.config import Config
from dpd.errors import Conflict, FieldError, NotFound, ValidationFailed
from dpd.events import EmitEvent
from dpd.preprocess import publish
from dpd.preprocess.plan import ClipPlan, MediaInfo, PlanError, ffmpeg_command, plan_clip
from dpd.preprocess.probe import MediaRejected, probe_media
from dpd.preprocess.taskstore import TaskStore, utc_now
from dpd.preprocess.transcode import TranscodeFailed, run_ffmpeg
from dpd.preprocess.uploads import UploadRejected, is_image_name, split_name

log = logging.getLogger("dpd.preprocess")

TERMINAL = frozenset({"completed", "failed", "stopped"})
PROGRESS_INTERVAL = 0.25  # seconds between progress events of one task
DISCARD_INLINE_BYTES = 16 << 20  # refused uploads up to this size are unlinked at once
STEP_VALIDATING, STEP_TRANSCODING, STEP_CAPTION, STEP_DONE = (
    "validating",
    "transcoding",
    "writing caption",
    "done",
)


@dataclass(frozen=True)
class UploadRequest:
    """A received upload. ``staged`` is a complete file the manager takes over."""

    staged: Path
    filename: str
    prompt: str
    model_type: str
    fps: int | None = None
    resolution: tuple[int, int] | None = None
    dataset: str | None = None
    frame_buckets: tuple[int, ...] | None = None


def concurrency(config: Config) -> int:
    configured = config.preprocess.max_concurrent
    return configured if configured > 0 else max(1, (os.cpu_count() or 2) // 2)


class PreprocessManager:
    def __init__(self, config: Config, emit: EmitEvent) -> None:
        self.config = config
        self.emit = emit
        self.store = TaskStore(config.daemon.state_dir / "preprocess")
        self.root = config.daemon.preprocessed_root
        self._slots = asyncio.Semaphore(concurrency(config))
        self._states: dict[str, dict[str, Any]] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._cancelled: set[str] = set()
        self._last_progress: dict[str, float] = {}
        self._probed: dict[str, MediaInfo] = {}  # from submit; after a restart, probed again
        self._cleanups: set[asyncio.Task[None]] = set()  # refused uploads being deleted
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every task; re-run the unfinished ones from their stored upload."""
        self._states = await asyncio.to_thread(self.store.load_all)
        await asyncio.to_thread(self.store.clear_staging)
        for task_id, state in sorted(self._states.items()):
            if state.get("status") in TERMINAL:
                continue
            if not Path(state.get("upload", {}).get("path", "")).is_file():
                await self._set(task_id, status="failed", error="the stored upload is missing")
                continue
            log.info("re-running preprocess task %s after a restart", task_id)
            await self._set(task_id, status="queued", current_step=None, progress=0)
            self._launch(task_id)

    async def close(self) -> None:
        """Kill running ffmpeg processes; unfinished tasks stay on disk for ``start``."""
        self._closing = True
        runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, *self._cleanups, return_exceptions=True)

    def staging_path(self) -> Path:
        """Where a route streams an upload before ``submit`` (same file system)."""
        return self.store.staging_path()

    def discard_staged(self, path: Path) -> None:
        """Remove an upload that will not become a task without making the answer wait: a
        big one is renamed aside at once (metadata only) and deleted in a thread, since
        freeing gigabytes keeps the file system busy for a second, on the event loop too. A
        crash in between leaves it in the staging directory, which ``start`` clears."""
        try:
            if path.stat().st_size < DISCARD_INLINE_BYTES:
                path.unlink()
                return
            aside = path.with_name(f"{path.name}.discarded")
            path.rename(aside)
        except FileNotFoundError:
            return
        cleanup = asyncio.get_running_loop().create_task(asyncio.to_thread(_unlink, aside))
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)

    # ------------------------------------------------------------------ queries

    def get(self, task_id: str) -> dict[str, Any]:
        state = self._states.get(task_id)
        if state is None:
            raise NotFound(f"preprocess task {task_id} not found", {"task_id": task_id})
        return dict(state)

    def all_tasks(self) -> list[dict[str, Any]]:
        return [dict(s) for _, s in sorted(self._states.items())]

    # ------------------------------------------------------------------ commands

    async def submit(self, request: UploadRequest) -> dict[str, Any]:
        """Validate the upload with ffprobe, then queue it. The staged file is owned by the
        manager from here on (removed when it is refused)."""
        try:
            stem, extension = split_name(request.filename)
            media = await probe_media(
                self.config.preprocess.ffprobe, request.staged, is_image_name(extension)
            )
            plan = plan_clip(
                media, request.model_type, request.fps, request.resolution, request.frame_buckets
            )
        except (UploadRejected, MediaRejected, PlanError) as err:
            self.discard_staged(request.staged)
            raise _as_validation(err) from err
        except BaseException:
            self.discard_staged(request.staged)
            raise
        task_id, _ = await asyncio.to_thread(self.store.create_task_dir)
        stored = await asyncio.to_thread(
            self.store.adopt_upload, request.staged, task_id, extension
        )
        state = self._initial_state(task_id, request, stem, stored, plan)
        self._states[task_id] = state
        self._probed[task_id] = media
        await asyncio.to_thread(self.store.write_state, state)
        self._announce_status(task_id, None)
        self._launch(task_id)
        return dict(state)

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Stop a queued or processing task: ffmpeg killed, partial output removed."""
        state = self.get(task_id)
        if state["status"] in TERMINAL:
            raise Conflict(f"preprocess task {task_id} is already {state['status']}", state)
        self._cancelled.add(task_id)
        run = self._runs.get(task_id)
        if run is not None:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        return self.get(task_id)

    # ------------------------------------------------------------------ running

    def _initial_state(
        self, task_id: str, request: UploadRequest, stem: str, stored: Path, plan: ClipPlan
    ) -> dict[str, Any]:
        dataset = request.dataset or request.model_type
        now = utc_now()
        return {
            "task_id": task_id,
            "status": "queued",
            "progress": 0,
            "current_step": None,
            "eta_seconds": None,
            "model_type": request.model_type,
            "prompt": request.prompt,
            "dataset": dataset,
            "dataset_dir": str(self.root / dataset),
            "request": {
                "fps": request.fps,
                "resolution": list(request.resolution) if request.resolution else None,
                "frame_buckets": list(request.frame_buckets) if request.frame_buckets else None,
            },
            "upload": {"filename": request.filename, "path": str(stored), "stem": stem},
            "output_stem": f"{stem}_{task_id.removeprefix('preprocess_')}",
            "plan": _plan_view(plan),
            "result": None,
            "error": None,
            "processing_time": None,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }

    def _launch(self, task_id: str) -> None:
        self._runs[task_id] = asyncio.create_task(self._run(task_id), name=f"preprocess-{task_id}")

    async def _run(self, task_id: str) -> None:
        try:
            async with self._slots:
                await self._process(task_id)
        except asyncio.CancelledError:
            await self._interrupted(task_id)
        except (MediaRejected, PlanError, TranscodeFailed, OSError) as err:
            await self._fail(task_id, str(err))
        except Exception as err:
            log.exception("preprocess task %s failed unexpectedly", task_id)
            await self._fail(task_id, f"internal error: {err}")
        finally:
            self._runs.pop(task_id, None)
            self._last_progress.pop(task_id, None)

    async def _process(self, task_id: str) -> None:
        started = time.monotonic()
        state = self._states[task_id]
        await self._set(task_id, status="processing", current_step=STEP_VALIDATING, progress=0)
        upload = Path(state["upload"]["path"])
        media = self._probed.pop(task_id, None) or await probe_media(
            self.config.preprocess.ffprobe, upload, is_image_name(upload.suffix)
        )
        request = state["request"]
        plan = plan_clip(
            media,
            state["model_type"],
            request["fps"],
            tuple(request["resolution"]) if request["resolution"] else None,
            tuple(request["frame_buckets"]) if request["frame_buckets"] else None,
        )
        work = await asyncio.to_thread(publish.fresh_work_dir, self.root, task_id)
        made = work / f"{state['output_stem']}{plan.suffix}"
        await self._set(task_id, current_step=STEP_TRANSCODING, progress=5)
        command = ffmpeg_command(self.config.preprocess.ffmpeg, str(upload), str(made), plan)
        clock = time.monotonic()
        written = await run_ffmpeg(
            command, lambda frames: self._on_frames(task_id, frames, plan, clock)
        )
        if written < plan.frames:  # the bucket would not be filled: diffusion-pipe drops it
            raise TranscodeFailed(f"ffmpeg wrote {written} frames, {plan.frames} expected")
        await self._set(task_id, current_step=STEP_CAPTION, progress=95, eta_seconds=0)
        media_path, caption_path = await asyncio.to_thread(
            publish.publish, made, Path(state["dataset_dir"]), state["output_stem"], state["prompt"]
        )
        await asyncio.to_thread(publish.remove_work_dir, self.root, task_id)
        result = _result(state, media_path, caption_path, written, plan)
        elapsed = round(time.monotonic() - started, 3)
        await self._set(
            task_id, status="completed", current_step=STEP_DONE, progress=100,
            result=result, output=result, processing_time=elapsed,
        )  # fmt: skip
        await asyncio.to_thread(self.store.remove_upload, state)

    def _on_frames(self, task_id: str, frames: int, plan: ClipPlan, clock: float) -> None:
        fraction = min(1.0, frames / max(1, plan.frames))
        elapsed = time.monotonic() - clock
        eta = round(elapsed * (1 - fraction) / fraction, 1) if fraction > 0 else None
        state = self._states[task_id]
        state.update(progress=round(5 + 90 * fraction, 1), eta_seconds=eta, frames_done=frames)
        now = time.monotonic()
        if now - self._last_progress.get(task_id, 0.0) >= PROGRESS_INTERVAL or fraction >= 1:
            self._last_progress[task_id] = now
            self._announce_progress(task_id)

    async def _interrupted(self, task_id: str) -> None:
        """Cancelled by ``cancel`` (-> stopped) or by ``close`` (left for a re-run)."""
        await asyncio.to_thread(publish.remove_work_dir, self.root, task_id)
        if task_id in self._cancelled and not self._closing:
            self._cancelled.discard(task_id)
            await self._set(task_id, status="stopped", eta_seconds=None, error="cancelled")
            await asyncio.to_thread(self.store.remove_upload, self._states[task_id])

    async def _fail(self, task_id: str, reason: str) -> None:
        log.warning("preprocess task %s failed: %s", task_id, reason)
        await asyncio.to_thread(publish.remove_work_dir, self.root, task_id)
        await self._set(task_id, status="failed", eta_seconds=None, error=reason)
        await asyncio.to_thread(self.store.remove_upload, self._states[task_id])

    # ------------------------------------------------------------------ state and events

    async def _set(self, task_id: str, **changes: Any) -> None:
        """Write the change, then announce it: status events on a status change, progress
        events on a step change."""
        state = self._states[task_id]
        previous = state.get("status")
        state.update(changes, updated_at=utc_now(), version=state.get("version", 0) + 1)
        await asyncio.to_thread(self.store.write_state, dict(state))
        if state["status"] != previous:
            self._announce_status(task_id, previous)
        elif "current_step" in changes:
            self._announce_progress(task_id)

    def _announce_status(self, task_id: str, previous: str | None) -> None:
        state = self._states[task_id]
        data = {"status": state["status"], "previous": previous}
        for key in ("current_step", "progress", "error", "result", "processing_time"):
            if state.get(key) is not None:
                data[key] = state[key]
        self.emit("preprocess", task_id, "status", data)

    def _announce_progress(self, task_id: str) -> None:
        state = self._states[task_id]
        data = {k: state.get(k) for k in ("progress", "current_step", "eta_seconds", "frames_done")}
        self.emit("preprocess", task_id, "progress", data)


def _plan_view(plan: ClipPlan) -> dict[str, Any]:
    fps: int | float = int(plan.fps) if plan.fps.denominator == 1 else float(plan.fps)
    return {
        "kind": plan.kind,
        "resolution": plan.resolution,
        "fps": fps,
        "frames": plan.frames,
        "frame_bucket": plan.bucket,
    }


def _result(
    state: dict[str, Any], media: Path, caption: Path, frames: int, plan: ClipPlan
) -> dict[str, Any]:
    view = _plan_view(plan)
    return {
        "video_path": str(media),
        "caption_path": str(caption),
        "prompt": state["prompt"],
        "dataset": state["dataset"],
        "dataset_dir": state["dataset_dir"],
        "frame_bucket": plan.bucket,
        "metadata": {
            "fps": view["fps"],
            "resolution": plan.resolution,
            "duration": round(plan.duration, 3),
            "frame_count": frames,
            "original_video": state["upload"]["path"],
            "original_filename": state["upload"]["filename"],
        },
    }


def _as_validation(err: UploadRejected | MediaRejected | PlanError) -> ValidationFailed:
    if isinstance(err, PlanError):
        return ValidationFailed(err.errors, err.errors[0].message)
    return ValidationFailed([FieldError("video", str(err))], str(err))


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
