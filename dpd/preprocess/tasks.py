"""The preprocessing manager: uploads become queued tasks, at most N ffmpeg runs at once.

Owns: one asyncio task per unfinished preprocessing task, the ffmpeg processes they start
(killed on cancel and on close), the work files under ``<preprocessed_root>/.dpd-work``
(removed when a run ends or is interrupted, and at start). Statuses: ``queued`` ->
``processing`` -> ``completed`` | ``failed`` | ``stopped`` (cancelled). Every status or
step change is written to state.json before it is announced; progress is announced (at
most ~4/s per task) but not written, since an interrupted task starts over anyway.
``close`` leaves unfinished tasks as they are on disk; ``start`` re-runs them from their
stored upload.
While a slot is free, submit starts ffmpeg before it probes the upload, so that ffmpeg's
start (exec, linking, opening the input: tens of milliseconds) overlaps the probes: the
task directory is created and the upload moved in first, ffmpeg waits for its filter chain
(the only part that depends on the plan) on stdin, and a refused upload is undone whole
(ffmpeg killed, then its work directory, the task directory and the upload removed).
Otherwise (no slot free, or the kind of output not known from the name) submit probes
first and the run starts ffmpeg once it has a slot, as after a restart.
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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpd.config import Config
from dpd.errors import Conflict, FieldError, NotFound, ValidationFailed
from dpd.events import EmitEvent
from dpd.preprocess import publish
from dpd.preprocess.plan import (
    ClipPlan,
    MediaInfo,
    PlanError,
    expected_kind,
    ffmpeg_command,
    filter_chain,
    output_suffix,
    plan_clip,
)
from dpd.preprocess.probe import MediaRejected, probe_media
from dpd.preprocess.taskstore import TaskStore, utc_now
from dpd.preprocess.transcode import Transcode, TranscodeFailed, start_transcode
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


@dataclass(frozen=True)
class Started:
    """A running ffmpeg, the plan its filter chain came from and the file it writes."""

    transcode: Transcode
    plan: ClipPlan
    made: Path


@dataclass
class _Undo:
    """What a submit that started ffmpeg has made so far, for ``_abandon``."""

    staged: Path
    task_id: str | None = None
    stored: Path | None = None
    transcode: Transcode | None = None


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
        self._handed: dict[str, Started] = {}  # ffmpeg started at submit, its run not begun
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every task; re-run the unfinished ones from their stored upload."""
        self._states = await asyncio.to_thread(self.store.load_all)
        await asyncio.to_thread(self.store.clear_staging)
        await asyncio.to_thread(publish.clear_work_dirs, self.root)
        for task_id, state in sorted(self._states.items()):
            if state.get("status") in TERMINAL:
                continue
            upload = Path(state.get("upload", {}).get("path", ""))
            if not await asyncio.to_thread(upload.is_file):
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
        for task_id in list(self._handed):
            await self._reclaim_unbegun(task_id)

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
        manager from here on (removed when it is refused). With a slot free and the kind of
        output known from the name, ffmpeg starts alongside the probes."""
        try:
            stem, extension = split_name(request.filename)
        except UploadRejected as err:
            self.discard_staged(request.staged)
            raise _as_validation(err) from err
        kind = expected_kind(request.model_type, is_image_name(extension))
        if kind is None or self._slots.locked():
            return await self._submit_then_start(request, stem, extension)
        await self._slots.acquire()  # free: taken at once, and handed to the run
        return await self._submit_started(request, stem, extension, kind)

    async def _submit_then_start(
        self, request: UploadRequest, stem: str, extension: str
    ) -> dict[str, Any]:
        """Probe and plan, then create the task; its run starts ffmpeg once a slot frees."""
        try:
            media = await probe_media(
                self.config.preprocess.ffprobe, request.staged, is_image_name(extension)
            )
            plan = self._plan(media, request)
        except (MediaRejected, PlanError) as err:
            self.discard_staged(request.staged)
            raise _as_validation(err) from err
        except BaseException:
            self.discard_staged(request.staged)
            raise
        task_id, _ = await asyncio.to_thread(self.store.create_task_dir)
        stored = await asyncio.to_thread(
            self.store.adopt_upload, request.staged, task_id, extension
        )
        state = await self._record(task_id, request, stem, stored, plan)
        self._probed[task_id] = media
        self._announce_status(task_id, None)
        self._launch(task_id)
        return dict(state)

    async def _submit_started(
        self, request: UploadRequest, stem: str, extension: str, kind: str
    ) -> dict[str, Any]:
        """Create the task, start ffmpeg on its upload, probe and plan meanwhile, then hand
        ffmpeg its filter chain. Holds a slot on entry; any failure undoes it all."""
        made_so_far = _Undo(request.staged)
        try:
            task_id, stored, work = await asyncio.to_thread(
                self._create_started_task, request.staged, extension
            )
            made_so_far.task_id, made_so_far.stored = task_id, stored
            made = work / f"{_output_stem(stem, task_id)}{output_suffix(kind)}"
            transcode = made_so_far.transcode = await self._start_ffmpeg(stored, made, kind)
            media = await self._probe_and_sync(task_id, stored, is_image_name(extension))
            plan = self._plan(media, request)
            if plan.kind != kind:  # a video file holding a single image: started wrong
                await transcode.stop()
                made = made.with_suffix(plan.suffix)
                transcode = made_so_far.transcode = await self._start_ffmpeg(
                    stored, made, plan.kind
                )
            transcode.send_filters(filter_chain(plan))
            state = await self._record(task_id, request, stem, stored, plan)
        except BaseException as err:
            await self._abandon(made_so_far)
            if isinstance(err, MediaRejected | PlanError):
                raise _as_validation(err) from err
            raise
        self._announce_status(task_id, None)
        self._launch(task_id, Started(transcode, plan, made))
        return dict(state)

    async def _probe_and_sync(self, task_id: str, stored: Path, image: bool) -> MediaInfo:
        """Probe the stored upload while its task directory is fsynced: the fsyncs wait for
        the disk, the probes for the CPU. Both end before this returns or raises (the probe's
        refusal first)."""
        media, synced = await asyncio.gather(
            probe_media(self.config.preprocess.ffprobe, stored, image),
            asyncio.to_thread(self.store.sync_task_dir, task_id),
            return_exceptions=True,
        )
        if isinstance(media, BaseException):
            raise media
        if isinstance(synced, BaseException):
            raise synced
        return media

    def _create_started_task(self, staged: Path, extension: str) -> tuple[str, Path, Path]:
        """(id, stored upload, work directory) of a new task that has no state yet, not
        fsynced (blocking). The upload moves first, so that ffmpeg and the probes open it
        where it stays."""
        task_id, _ = self.store.create_task_dir(sync=False)
        stored: Path | None = None
        try:
            stored = self.store.adopt_upload(staged, task_id, extension, sync=False)
            return task_id, stored, publish.fresh_work_dir(self.root, task_id)
        except BaseException:
            self.store.abandon_task(task_id, stored, staged)
            raise

    async def _abandon(self, made_so_far: _Undo) -> None:
        """Undo ``_submit_started``: ffmpeg killed first, then its output and the task
        directory removed, the upload discarded, the slot given back. Interrupted, it leaves
        files that ``start`` clears."""
        task_id, staged = made_so_far.task_id, made_so_far.staged
        try:
            if made_so_far.transcode is not None:
                await made_so_far.transcode.stop()
            if task_id is not None:
                self._states.pop(task_id, None)
                await asyncio.to_thread(self._remove_task, task_id, made_so_far.stored, staged)
        finally:
            self._slots.release()
            self.discard_staged(staged)

    def _remove_task(self, task_id: str, stored: Path | None, staged: Path) -> None:
        publish.remove_work_dir(self.root, task_id)
        self.store.abandon_task(task_id, stored, staged)

    def _plan(self, media: MediaInfo, request: UploadRequest) -> ClipPlan:
        return plan_clip(
            media, request.model_type, request.fps, request.resolution, request.frame_buckets
        )

    async def _record(
        self, task_id: str, request: UploadRequest, stem: str, stored: Path, plan: ClipPlan
    ) -> dict[str, Any]:
        """Write the new task's first state: from here on it exists."""
        state = self._initial_state(task_id, request, stem, stored, plan)
        self._states[task_id] = state
        await asyncio.to_thread(self.store.write_state, state)
        return state

    async def _start_ffmpeg(self, source: Path, made: Path, kind: str) -> Transcode:
        command = ffmpeg_command(self.config.preprocess.ffmpeg, str(source), str(made), kind)
        return await start_transcode(command)

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
            await self._reclaim_unbegun(task_id)
        if self._states[task_id]["status"] not in TERMINAL:  # the run never began
            self._runs.pop(task_id, None)
            await self._interrupted(task_id)
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
            "output_stem": _output_stem(stem, task_id),
            "plan": _plan_view(plan),
            "result": None,
            "error": None,
            "processing_time": None,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }

    def _launch(self, task_id: str, started: Started | None = None) -> None:
        """Run the task; ``started``: its ffmpeg runs already, in a slot taken for it. It is
        handed over through ``_handed``: a task cancelled before its first step never runs
        its coroutine, and then ``_reclaim_unbegun`` stops that ffmpeg."""
        if started is not None:
            self._handed[task_id] = started
        run = self._run(task_id)
        self._runs[task_id] = asyncio.create_task(run, name=f"preprocess-{task_id}")

    async def _reclaim_unbegun(self, task_id: str) -> None:
        """After a run was cancelled: if it never began, kill its ffmpeg, free its slot."""
        started = self._handed.pop(task_id, None)
        if started is not None:
            self._runs.pop(task_id, None)
            try:
                await started.transcode.stop()
            finally:
                self._slots.release()

    async def _run(self, task_id: str) -> None:
        started = self._handed.pop(task_id, None)
        try:
            async with self._slot(taken=started is not None):
                await self._process(task_id, started)
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

    @contextlib.asynccontextmanager
    async def _slot(self, taken: bool) -> AsyncIterator[None]:
        """One of the N ffmpeg slots, for one run; ``taken``: submit took it already."""
        if not taken:
            await self._slots.acquire()
        try:
            yield
        finally:
            self._slots.release()

    async def _process(self, task_id: str, started: Started | None) -> None:
        begun = time.monotonic()
        state = self._states[task_id]
        try:
            if started is None:
                started = await self._start(task_id, state)
            else:
                await self._set(
                    task_id, status="processing", current_step=STEP_TRANSCODING, progress=5
                )
            plan, clock = started.plan, time.monotonic()
            written = await started.transcode.finish(
                lambda frames: self._on_frames(task_id, frames, plan, clock)
            )
        finally:
            if started is not None:  # ffmpeg is killed whatever interrupted the run
                await started.transcode.stop()
        if written < plan.frames:  # the bucket would not be filled: diffusion-pipe drops it
            raise TranscodeFailed(f"ffmpeg wrote {written} frames, {plan.frames} expected")
        await self._set(task_id, current_step=STEP_CAPTION, progress=95, eta_seconds=0)
        media_path, caption_path = await asyncio.to_thread(
            publish.publish,
            started.made,
            Path(state["dataset_dir"]),
            state["output_stem"],
            state["prompt"],
        )
        await asyncio.to_thread(publish.remove_work_dir, self.root, task_id)
        result = _result(state, media_path, caption_path, written, plan)
        elapsed = round(time.monotonic() - begun, 3)
        await self._set(
            task_id, status="completed", current_step=STEP_DONE, progress=100,
            result=result, output=result, processing_time=elapsed,
        )  # fmt: skip
        await asyncio.to_thread(self.store.remove_upload, state)

    async def _start(self, task_id: str, state: dict[str, Any]) -> Started:
        """Probe (again after a restart) and plan, then start ffmpeg with its chain."""
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
        transcode = await self._start_ffmpeg(upload, made, plan.kind)
        transcode.send_filters(filter_chain(plan))
        return Started(transcode, plan, made)

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


def _output_stem(stem: str, task_id: str) -> str:
    return f"{stem}_{task_id.removeprefix('preprocess_')}"


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
