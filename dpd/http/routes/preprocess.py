"""Preprocessing routes (api.md §1): upload, status, stop.

``POST /preprocess/upload`` reads the multipart body part by part: the ``video`` part goes
straight to a staging file as it arrives (never whole in memory; aiohttp's client_max_size
does not apply to streamed parts, so the ``http.max_upload_mb`` limit is enforced here while
reading: 413, partial file removed), the text parts are small and capped. The upload is then
validated with ffprobe (422 with the reason) and queued: 202 with ``task_id``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from dpd.config import Config
from dpd.errors import BadRequest, FieldError, PayloadTooLarge, ValidationFailed
from dpd.http.common import envelope_response
from dpd.http.routing import Route, add_routes
from dpd.preprocess.plan import parse_frame_buckets, parse_resolution
from dpd.preprocess.tasks import PreprocessManager, UploadRequest
from dpd.preprocess.uploads import (
    UploadRejected,
    UploadTooLarge,
    check_dataset_name,
    split_name,
    stream_to_file,
)

PREFIX = "/api/v1/preprocess"
MANAGER: web.AppKey[PreprocessManager] = web.AppKey("dpd.preprocess.manager", PreprocessManager)
UPLOAD_LIMIT: web.AppKey[int] = web.AppKey("dpd.preprocess.upload_limit", int)
TEXT_LIMIT = 64 * 1024
CHUNK = 1 << 20  # upper bound per read; aiohttp hands over what it has buffered
TEXT_FIELDS = ("prompt", "model_type", "fps", "resolution", "dataset", "frame_buckets")
HIDDEN = ("version",)


def setup(app: web.Application, manager: PreprocessManager, config: Config) -> None:
    app[MANAGER] = manager
    app[UPLOAD_LIMIT] = config.http.max_upload_mb * 1024 * 1024
    add_routes(app, ROUTES)


def task_view(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k not in HIDDEN}


async def upload(request: web.Request) -> web.Response:
    manager = request.app[MANAGER]
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("expected multipart/form-data with a 'video' file part")
    staged: Path | None = None
    try:
        staged, filename, fields = await _read_parts(request, manager)
        upload_request = _build_request(staged, filename, fields)
    except BaseException:
        if staged is not None:
            manager.discard_staged(staged)
        raise
    state = await manager.submit(upload_request)
    return envelope_response(task_view(state), 202, "preprocessing queued")


async def _read_parts(
    request: web.Request, manager: PreprocessManager
) -> tuple[Path | None, str, dict[str, str]]:
    reader = await request.multipart()
    staged: Path | None = None
    filename = ""
    fields: dict[str, str] = {}
    try:
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            if part.name == "video":
                if staged is not None:
                    raise BadRequest("only one 'video' part per upload")
                filename = part.filename or ""
                _check_filename(filename)
                staged = manager.staging_path()
                await stream_to_file(_chunks(part), staged, request.app[UPLOAD_LIMIT])
            elif part.name in TEXT_FIELDS:
                fields[part.name] = await _read_text(part)
            else:
                await part.release()
    except UploadTooLarge as err:
        raise PayloadTooLarge(str(err), {"max_upload_mb": err.limit // (1 << 20)}) from err
    except ValueError as err:  # aiohttp's multipart reader at a body cut short: "after EOF"
        if staged is not None:
            manager.discard_staged(staged)
        raise BadRequest("the multipart body ends before its closing boundary") from err
    except BaseException:
        if staged is not None:
            manager.discard_staged(staged)
        raise
    return staged, filename, fields


def _check_filename(filename: str) -> None:
    try:
        split_name(filename)
    except UploadRejected as err:
        raise ValidationFailed([FieldError("video", str(err))], str(err)) from err


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


async def _read_text(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(8192):
        data += chunk
        if len(data) > TEXT_LIMIT:
            raise BadRequest(f"form field {part.name!r} is longer than {TEXT_LIMIT} bytes")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError) as err:
        raise BadRequest(f"form field {part.name!r} is not valid text") from err


def _build_request(staged: Path | None, filename: str, fields: dict[str, str]) -> UploadRequest:
    """Check every field and report every problem at once (422)."""
    errors: list[FieldError] = []
    if staged is None:
        errors.append(FieldError("video", "a 'video' file part is required"))
    prompt = fields.get("prompt", "").strip()
    if not prompt:
        errors.append(FieldError("prompt", "a non-empty prompt is required"))
    model_type = fields.get("model_type", "").strip()
    if not model_type:
        errors.append(FieldError("model_type", "required (e.g. wan, hunyuan-video, flux)"))
    fps = _optional(errors, "fps", fields, _parse_fps)
    resolution = _optional(errors, "resolution", fields, parse_resolution)
    dataset = _optional(errors, "dataset", fields, _parse_dataset)
    buckets = _optional(errors, "frame_buckets", fields, parse_frame_buckets)
    if errors or staged is None:
        raise ValidationFailed(errors, errors[0].message)
    return UploadRequest(staged, filename, prompt, model_type, fps, resolution, dataset, buckets)


def _optional(errors: list[FieldError], name: str, fields: dict[str, str], parse: Any) -> Any:
    text = fields.get(name, "").strip()
    if not text:
        return None
    try:
        return parse(text)
    except ValueError as err:
        errors.append(FieldError(name, str(err)))
        return None


def _parse_fps(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= 240):
        raise ValueError(f"expected an integer from 1 to 240, got {text!r}")
    return int(text)


def _parse_dataset(text: str) -> str:
    try:
        return check_dataset_name(text)
    except UploadRejected as err:
        raise ValueError(str(err)) from err


async def status(request: web.Request) -> web.Response:
    state = request.app[MANAGER].get(request.match_info["task_id"])
    return envelope_response(task_view(state))


async def stop(request: web.Request) -> web.Response:
    state = await request.app[MANAGER].cancel(request.match_info["task_id"])
    return envelope_response(task_view(state), 200, "preprocessing stopped")


ROUTES = (
    Route("POST", f"{PREFIX}/upload", upload, permission="preprocessing", rate="preprocess"),
    Route("GET", f"{PREFIX}/status/{{task_id}}", status, permission="preprocessing"),
    Route("POST", f"{PREFIX}/stop/{{task_id}}", stop, permission="preprocessing"),
)
