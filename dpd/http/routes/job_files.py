"""A training's saved files: ``GET /training/{id}/files`` lists what its output directory
holds (saved models, DeepSpeed checkpoints, the rest), and ``GET /training/{id}/files/{path}``
streams one of them (aiohttp's FileResponse: Range requests, ETag, sendfile).

Not trusted: the path. It is resolved (symlinks followed) and must name a regular file
inside the task's own output directory; anything else is 404, so no request can read
outside it. The listing is bounded (``MAX_FILES``) and says when it was cut.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from dpd.errors import NotFound
from dpd.http.common import envelope_response, principal
from dpd.services import SERVICES
from dpd.supervisor import outputs

PREFIX: Final = "/api/v1/training"
MAX_FILES: Final = 5000


def setup(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/{{task_id}}/files", list_files)
    app.router.add_get(f"{PREFIX}/{{task_id}}/files/{{path:.+}}", download_file)


def file_kind(relative: Path) -> str:
    """``model`` inside epochN/stepN, ``checkpoint`` inside global_stepN, else ``other``."""
    for part in relative.parts[:-1]:
        if outputs.MODEL_DIR_RE.match(part):
            return "model"
        if outputs.CHECKPOINT_RE.match(part):
            return "checkpoint"
    return "other"


def list_output_files(root: Path) -> tuple[list[dict[str, Any]], bool]:
    """Every regular file under ``root`` (blocking), sorted by path; True if cut short."""
    found: list[dict[str, Any]] = []
    if not root.is_dir():
        return found, False
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            relative = path.relative_to(root)
            found.append(
                {
                    "path": relative.as_posix(),
                    "kind": file_kind(relative),
                    "size": info.st_size,
                    "mtime": int(info.st_mtime),
                }
            )
            if len(found) >= MAX_FILES:
                return found, True
    return found, False


def confined_output_file(root: Path, relative: str) -> Path:
    """The regular file ``relative`` names inside ``root``; NotFound otherwise."""
    if not relative or Path(relative).is_absolute():
        raise NotFound(f"no file {relative!r}")
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        raise NotFound(f"no file {relative!r} in the task's output directory")
    return candidate


def _output_dir(request: web.Request) -> Path:
    state = request.app[SERVICES].store.get(request.match_info["task_id"])
    return Path(state["output_dir"])


async def list_files(request: web.Request) -> web.Response:
    principal(request)
    root = _output_dir(request)
    files, truncated = await asyncio.to_thread(list_output_files, root)
    return envelope_response(
        {"task_id": request.match_info["task_id"], "files": files, "truncated": truncated}
    )


async def download_file(request: web.Request) -> web.StreamResponse:
    principal(request)
    root = _output_dir(request)
    path = await asyncio.to_thread(confined_output_file, root, request.match_info["path"])
    disposition = f"attachment; filename*=UTF-8''{quote(path.name, safe='')}"
    return web.FileResponse(
        path,
        headers={
            "Content-Disposition": disposition,
            "Content-Type": "application/octet-stream",
            "X-Content-Type-Options": "nosniff",
        },
    )
