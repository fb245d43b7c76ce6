"""Model downloads: planned and checked up front, run in the background, resumed after a
network failure or a daemon restart, verified before anything is marked installed.

Owns: ``<state_dir>/downloads/dl_<id>.json`` (one record per download, rewritten atomically
at every status change and finished file), partial files under
``<models_root>/.dpd/partial/`` and the component manifests under
``<models_root>/.dpd/manifests/``.

Guarantees:
- ``submit`` answers only after the whole plan is known: every file's size and hash from the
  hub (so a missing file is a 404 and a gated repository a 403 before anything starts) and
  enough free disk space for what is left to fetch (else 507).
- A file reaches its final path only after its size and hash matched (``hub.py``), through
  a rename; a component's manifest (what makes it "installed") is written after its last file.
- After a crash or restart, ``start`` resumes every download whose record says
  ``downloading``, each file from the bytes its partial file holds.

Failures: a network error is retried with ``retry_delays`` (each retry resumes); then, like
a hash mismatch or an answer from the hub that will not change (401, 404), the download is
``failed`` with a message free of the token. Cancelling closes the connection in flight
and removes the partial files.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dpd.config import Config
from dpd.errors import Conflict, DpdError, InsufficientResources, NotFound
from dpd.events import EmitEvent, discard_event
from dpd.models.catalog import Catalog, Component, manifest_path
from dpd.models.hub import (
    HashMismatch,
    HubClient,
    RemoteFile,
    TransferControl,
    TransferStopped,
    TransientHubError,
    resolve_endpoint,
    resolve_token,
)
from dpd.models.progress import (
    CANCELLED,
    COMPLETED,
    DOWNLOADING,
    FAILED,
    FINISHED,
    LiveFigures,
    SpeedMeter,
    download_view,
    event_payload,
)
from dpd.models.requests import DownloadRequest, parse_download_request
from dpd.spool.atomic import fsync_dir, write_json_atomic

log = logging.getLogger("dpd.models")

PENDING: Final = "pending"
PARTIAL_DIR: Final = Path(".dpd") / "partial"
DISK_RESERVE_BYTES: Final = 64 * 1024 * 1024  # never fill the disk to the last byte


# Plans and records; a name of its own because DownloadManager.list shadows ``list``.
Records = list[dict[str, Any]]


@dataclass
class _Running:
    control: TransferControl = field(default_factory=TransferControl)
    meter: SpeedMeter = field(default_factory=SpeedMeter)
    current: tuple[str, str] | None = None
    task: asyncio.Task[None] | None = None
    last_event: dict[str, Any] | None = None


class DownloadManager:
    def __init__(
        self,
        catalog: Catalog,
        hub: HubClient,
        models_root: Path,
        state_dir: Path,
        emit: EmitEvent = discard_event,
        *,
        retry_delays: tuple[float, ...] = (2.0, 10.0, 30.0),
        event_interval: float = 0.25,
    ) -> None:
        self.catalog = catalog
        self.hub = hub
        self.models_root = Path(models_root)
        self.records_dir = Path(state_dir) / "downloads"
        self._emit = emit
        self._retry_delays = retry_delays
        self._event_interval = event_interval
        self._records: dict[str, dict[str, Any]] = {}
        self._running: dict[str, _Running] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ticker: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, config: Config, catalog: Catalog, emit: EmitEvent = discard_event
    ) -> DownloadManager:
        """Endpoint and token: the config wins over HF_ENDPOINT / HF_TOKEN."""
        hub = HubClient(
            resolve_endpoint(config.models.hf_endpoint), resolve_token(config.models.hf_token)
        )
        return cls(catalog, hub, config.daemon.models_root, config.daemon.state_dir, emit)

    # ------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Load every record and resume the unfinished downloads."""
        for record in await asyncio.to_thread(self._load_records):
            self._records[record["download_id"]] = record
            if record["status"] == DOWNLOADING:
                log.info("resuming model download %s", record["download_id"])
                self._launch(record)
        self._ticker = asyncio.create_task(self._tick_loop(), name="dpd.models.progress")

    async def close(self, timeout: float = 5.0) -> None:
        """Pause every transfer (records stay ``downloading``: the next start resumes)."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        tasks = [run.task for run in self._running.values() if run.task is not None]
        for run in self._running.values():
            run.control.stop("shutdown")
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("a model download did not pause within %.0fs", timeout)
                task.cancel()

    # ------------------------------------------------------------- the operations

    async def submit(self, body: Any) -> dict[str, Any]:
        """Check, plan and start a download; raises 422/403/404/409/507 as dpd errors."""
        request = parse_download_request(self.catalog, body)
        components = await asyncio.to_thread(self._plan, request)
        self._check_conflicts(components)
        await asyncio.to_thread(self._check_space, components)
        now = _now()
        record: dict[str, Any] = {
            "download_id": self._new_id(),
            "model_id": request.model.id,
            "version": request.version,
            "status": DOWNLOADING,
            "error": None,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
            "components": components,
        }
        self._records[record["download_id"]] = record
        await self._persist(record)
        log.info("model download %s of %s started", record["download_id"], record["model_id"])
        self._launch(record)
        return self.get(record["download_id"])

    def get(self, download_id: str) -> dict[str, Any]:
        record = self._records.get(download_id)
        if record is None:
            raise NotFound("no such download", {"download_id": download_id})
        return download_view(record, self._live(download_id))

    def list(self) -> list[dict[str, Any]]:
        ordered = sorted(self._records.values(), key=lambda r: r["created_at"], reverse=True)
        return [self.get(r["download_id"]) for r in ordered]

    async def cancel(self, download_id: str) -> dict[str, Any]:
        view = self.get(download_id)
        record = self._records[download_id]
        if record["status"] in FINISHED:
            raise Conflict(f"the download is already {record['status']}", view)
        run = self._running.get(download_id)
        if run is not None:
            run.control.stop("cancel")
        await self._finish(record, CANCELLED, None)
        if run is None:
            await asyncio.to_thread(self._remove_partials, record)
        return self.get(download_id)

    async def wait(self, download_id: str) -> dict[str, Any]:
        """Until the download's task ends (tests and the CLI's local use)."""
        run = self._running.get(download_id)
        if run is not None and run.task is not None:
            await asyncio.shield(run.task)
        return self.get(download_id)

    # ------------------------------------------------------------- planning (threads)

    def _plan(self, request: DownloadRequest) -> Records:
        return [self._plan_component(request.model.id, c) for c in request.components]

    def _plan_component(self, model_id: str, component: Component) -> dict[str, Any]:
        paths = list(component.files)
        if component.include:
            matched = self.hub.matching_files(component.repo, component.revision, component.include)
            if not matched:
                raise NotFound(
                    f"no file of {component.repo} matches {', '.join(component.include)}",
                    {"repo": component.repo, "component": component.name},
                )
            paths += matched
        installed = _manifest_etags(self.models_root, model_id, component.name)
        files = []
        for path in dict.fromkeys(paths):
            remote, _ = self.hub.metadata(component.repo, path, component.revision)
            dest = _inside(self.models_root / component.dir, path)
            files.append(
                {
                    "path": path,
                    "revision": remote.revision,
                    "size": remote.size,
                    "etag": remote.etag,
                    "dest": str(dest),
                    "done": installed.get(path) == remote.etag and _has_size(dest, remote.size),
                }
            )
        done = all(f["done"] for f in files)
        return {
            "name": component.name,
            "repo": component.repo,
            "dir": component.dir,
            "path": str(self.models_root / component.path),
            "status": COMPLETED if done else PENDING,
            "files": files,
        }

    def _check_conflicts(self, components: Records) -> None:
        wanted = {f["dest"] for c in components for f in c["files"] if not f["done"]}
        for other in self._records.values():
            if other["status"] != DOWNLOADING:
                continue
            busy = {f["dest"] for c in other["components"] for f in c["files"]}
            if wanted & busy:
                raise Conflict(
                    "these model files are already being downloaded",
                    {"download_id": other["download_id"]},
                )

    def _check_space(self, components: Records) -> None:
        required = sum(
            f["size"] - _file_size(self._partial_path(f))
            for c in components
            for f in c["files"]
            if not f["done"]
        )
        where = _existing_ancestor(self.models_root)
        free = shutil.disk_usage(where).free
        if required + DISK_RESERVE_BYTES > free:
            raise InsufficientResources(
                "not enough free disk space for this download",
                {
                    "required_bytes": required,
                    "free_bytes": free,
                    "path": str(self.models_root),
                    "recommended_action": "free space under models_root or pick fewer components",
                },
            )

    # ------------------------------------------------------------- running

    def _launch(self, record: dict[str, Any]) -> None:
        run = _Running()
        self._running[record["download_id"]] = run
        run.task = asyncio.create_task(self._run(record, run), name=record["download_id"])

    async def _run(self, record: dict[str, Any], run: _Running) -> None:
        download_id = record["download_id"]
        try:
            self._publish(record, force=True)
            for component in record["components"]:
                if component["status"] != COMPLETED:
                    await self._fetch_component(record, component, run)
            await self._finish(record, COMPLETED, None)
            log.info("model download %s completed", download_id)
        except TransferStopped:
            if run.control.reason == "cancel":
                await asyncio.to_thread(self._remove_partials, record)
            log.info("model download %s stopped (%s)", download_id, run.control.reason)
        except (DpdError, TransientHubError, HashMismatch, OSError) as err:
            message = err.message if isinstance(err, DpdError) else str(err)
            log.warning("model download %s failed: %s", download_id, message)
            await self._finish(record, FAILED, message)
        except Exception:
            log.exception("model download %s failed", download_id)
            await self._finish(record, FAILED, "internal error")
        finally:
            self._running.pop(download_id, None)

    async def _fetch_component(
        self, record: dict[str, Any], component: dict[str, Any], run: _Running
    ) -> None:
        component["status"] = DOWNLOADING
        await self._persist(record)
        try:
            for entry in component["files"]:
                if entry["done"]:
                    continue
                run.current = (component["name"], entry["path"])
                await self._fetch_file(component["repo"], entry, run)
                entry["done"] = True
                await self._persist(record)
            await asyncio.to_thread(self._write_manifest, record["model_id"], component)
        except (DpdError, TransientHubError, HashMismatch, OSError):
            component["status"] = FAILED
            raise
        component["status"] = COMPLETED
        await self._persist(record)

    async def _fetch_file(self, repo: str, entry: dict[str, Any], run: _Running) -> None:
        remote = RemoteFile(repo, entry["path"], entry["revision"], entry["size"], entry["etag"])
        partial = self._partial_path(entry)
        for delay in (*self._retry_delays, None):
            run.control.check()
            try:
                await self.hub.fetch(remote, partial, run.control)
                break
            except HashMismatch:
                await asyncio.to_thread(partial.unlink, True)
                raise
            except TransientHubError as err:
                if delay is None:
                    raise
                log.warning("%s/%s: %s; resuming in %.0fs", repo, entry["path"], err, delay)
                await _sleep_unless_stopped(run.control, delay)
        run.control.check()
        await asyncio.to_thread(_install, partial, Path(entry["dest"]))

    async def _finish(self, record: dict[str, Any], status: str, error: str | None) -> None:
        if record["status"] in FINISHED:
            return  # cancelled meanwhile: the first verdict stands
        record["status"] = status
        record["error"] = error
        record["finished_at"] = _now()
        await self._persist(record)
        self._publish(record, force=True)

    # ------------------------------------------------------------- progress events

    def _live(self, download_id: str) -> LiveFigures | None:
        run = self._running.get(download_id)
        if run is None:
            return None
        return LiveFigures(run.current, run.control.file_bytes, run.meter.rate())

    def _publish(self, record: dict[str, Any], force: bool = False) -> None:
        run = self._running.get(record["download_id"])
        payload = event_payload(download_view(record, self._live(record["download_id"])))
        if run is not None:
            if not force and payload == run.last_event:
                return
            run.last_event = payload
        self._emit("models", record["download_id"], "progress", payload)

    async def _tick_loop(self) -> None:
        """Samples speed and publishes changed progress at most every ``event_interval``."""
        while True:
            await asyncio.sleep(self._event_interval)
            now = time.monotonic()
            for download_id, run in list(self._running.items()):
                run.meter.add(now, run.control.transferred)
                record = self._records[download_id]
                if record["status"] == DOWNLOADING:
                    self._publish(record)

    # ------------------------------------------------------------- disk

    async def _persist(self, record: dict[str, Any]) -> None:
        """Records are written one at a time per download, newest state last."""
        lock = self._locks.setdefault(record["download_id"], asyncio.Lock())
        async with lock:
            record["updated_at"] = _now()
            snapshot = copy.deepcopy(record)
            path = self.records_dir / f"{record['download_id']}.json"
            await asyncio.to_thread(_write_record, path, snapshot)

    def _load_records(self) -> Records:
        records = []
        for path in sorted(self.records_dir.glob("dl_*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                _ = (record["download_id"], record["status"], record["components"])
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("ignoring unreadable download record %s: %s", path, err)
                continue
            records.append(record)
        return records

    def _new_id(self) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d_%H%M")
        number = 1
        while f"dl_{stamp}{number:04d}" in self._records:
            number += 1
        return f"dl_{stamp}{number:04d}"

    def _partial_path(self, entry: dict[str, Any]) -> Path:
        """Keyed by content and destination: a new download of the same file resumes it."""
        where = hashlib.sha256(entry["dest"].encode()).hexdigest()[:12]
        return self.models_root / PARTIAL_DIR / f"{entry['etag']}-{where}.incomplete"

    def _remove_partials(self, record: dict[str, Any]) -> None:
        for component in record["components"]:
            for entry in component["files"]:
                if not entry["done"]:
                    self._partial_path(entry).unlink(missing_ok=True)

    def _write_manifest(self, model_id: str, component: dict[str, Any]) -> None:
        path = manifest_path(self.models_root, model_id, component["name"])
        path.parent.mkdir(parents=True, exist_ok=True)
        files = [
            {k: f[k] for k in ("path", "size", "etag", "revision")} for f in component["files"]
        ]
        write_json_atomic(path, {"repo": component["repo"], "installed_at": _now(), "files": files})


# ----------------------------------------------------------------- small helpers


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)


def _install(partial: Path, dest: Path) -> None:
    """The verified partial file becomes the model file in one rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, dest)
    fsync_dir(dest.parent)


def _inside(base: Path, repo_path: str) -> Path:
    """A repo path under ``base``; a hub listing cannot make dpd write elsewhere."""
    target = (base / repo_path).resolve()
    if not target.is_relative_to(base.resolve()):
        raise NotFound(f"refusing repository path {repo_path!r}", {"file": repo_path})
    return base / repo_path


def _manifest_etags(models_root: Path, model_id: str, component: str) -> dict[str, str]:
    try:
        data = json.loads(manifest_path(models_root, model_id, component).read_text())
        return {f["path"]: f["etag"] for f in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _has_size(path: Path, size: int) -> bool:
    return _file_size(path) == size and path.is_file()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


async def _sleep_unless_stopped(control: TransferControl, delay: float) -> None:
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        control.check()
        await asyncio.sleep(min(0.1, deadline - time.monotonic()))
    control.check()
