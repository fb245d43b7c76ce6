"""A local stand-in for the Hugging Face hub: exactly the endpoints huggingface_hub calls for
dpd's downloads, served by aiohttp on 127.0.0.1, faithful to the real hub's answers.

- ``HEAD|GET /{repo}/resolve/{revision}/{path}``: small files answer 200 with ``ETag`` (git
  blob SHA-1), ``Content-Length`` and ``X-Repo-Commit``; LFS files answer 302 to an absolute
  CDN URL with ``X-Linked-Size``, ``X-Linked-Etag`` (their SHA-256) and ``X-Repo-Commit``.
  Errors carry ``X-Error-Code`` as the hub does: ``GatedRepo`` (401 without a matching
  ``Authorization: Bearer``), ``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``.
- ``GET /cdn/{sha256}``: the bytes, honouring ``Range`` (206 + ``Content-Range``).
- ``GET /api/models/{repo}/tree/{revision}``: the recursive file list (JSON).

Test controls: ``ignore_range`` answers 200 with the whole file (as some CDNs do);
``cut_once[path] = n`` drops the connection after byte n of the next
transfer; ``hold_at[path] = n`` stops sending at byte n until ``release()``;
``wrong_hash`` advertises a false SHA-256 for a path; ``fail[path] = status`` answers every
resolve request for it with that status, ``fail_body_once[path] = status`` the next body
request; ``redirect_get`` sends a small file's GET (not its HEAD) to the CDN host, as a
mirror may; ``chunked`` sends a body without Content-Length (chunked encoding);
``served[path]`` counts bytes sent; ``requests`` lists (method, host, path, Authorization)
of every request. ``serve_hub(hub, ssl_context)`` serves HTTPS.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

LFS_THRESHOLD = 1024  # the real hub uses LFS for big and binary files; here: > 1 KiB
SEND_CHUNK = 256 * 1024


@dataclass
class HubFile:
    content: bytes | Path
    sha256: str | None = None  # given for huge sparse files nobody downloads

    @property
    def size(self) -> int:
        return self.content.stat().st_size if isinstance(self.content, Path) else len(self.content)

    def read(self, start: int, end: int) -> bytes:
        if isinstance(self.content, Path):
            with open(self.content, "rb") as handle:
                handle.seek(start)
                return handle.read(end - start)
        return self.content[start:end]


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    commit: str
    token: str | None = None  # gated: requests need this Bearer token


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    url: str = ""
    served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests: list[tuple[str, str, str, str | None]] = field(default_factory=list)
    cut_once: dict[str, int] = field(default_factory=dict)
    hold_at: dict[str, int] = field(default_factory=dict)
    wrong_hash: set[str] = field(default_factory=set)
    ignore_range: set[str] = field(default_factory=set)  # answer 200 + everything, as some CDNs
    fail: dict[str, int] = field(default_factory=dict)
    fail_body_once: dict[str, int] = field(default_factory=dict)
    redirect_get: set[str] = field(default_factory=set)
    chunked: set[str] = field(default_factory=set)
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _hashes: dict[str, str] = field(default_factory=dict)

    def add_repo(
        self, repo: str, files: dict[str, bytes | Path], token: str | None = None
    ) -> HubRepo:
        commit = hashlib.sha1(repo.encode()).hexdigest()
        self.repos[repo] = HubRepo({p: HubFile(c) for p, c in files.items()}, commit, token)
        return self.repos[repo]

    @property
    def cdn_url(self) -> str:
        """The same server named another way: like the real hub's CDN, another host, so the
        library stops at the redirect and reads the metadata from it."""
        return self.url.replace("127.0.0.1", "localhost")

    def release(self) -> None:
        self._released.set()

    def sha256(self, repo: str, path: str) -> str:
        key = f"{repo}/{path}"
        given = self.repos[repo].files[path].sha256
        if given is not None:
            return given
        if key not in self._hashes:
            digest = hashlib.sha256()
            file = self.repos[repo].files[path]
            for start in range(0, file.size, 8 << 20):
                digest.update(file.read(start, min(file.size, start + (8 << 20))))
            self._hashes[key] = digest.hexdigest()
        return self._hashes[key]

    def git_sha1(self, repo: str, path: str) -> str:
        data = self.repos[repo].files[path].read(0, self.repos[repo].files[path].size)
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", r"/api/models/{org}/{name}/tree/{revision}", self._tree)
        app.router.add_get(r"/cdn/{sha}", self._cdn)
        app.router.add_route("*", r"/{org}/{name}/resolve/{revision}/{path:.+}", self._resolve)
        return app

    # ------------------------------------------------------------- handlers

    def _record(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization")
        self.requests.append((request.method, request.host, request.path, auth))
        return auth

    def sent_to_cdn(self) -> list[str | None]:
        """The Authorization header of every request the CDN host received."""
        host = self.cdn_url.removeprefix("http://")
        return [auth for _, on, _, auth in self.requests if on == host]

    def _repo(self, request: web.Request) -> tuple[str, HubRepo]:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        auth = self._record(request)
        repo = self.repos.get(repo_id)
        if repo is None:
            raise _hub_error(404, "RepoNotFound", "Repository not found")
        if repo.token is not None and auth != f"Bearer {repo.token}":
            raise _hub_error(401, "GatedRepo", "Access to this model is restricted.")
        revision = request.match_info["revision"]
        if revision not in ("main", repo.commit):
            raise _hub_error(404, "RevisionNotFound", "Invalid rev id")
        return repo_id, repo

    async def _tree(self, request: web.Request) -> web.Response:
        repo_id, repo = self._repo(request)
        entries = []
        for path, file in sorted(repo.files.items()):
            entry: dict[str, object] = {
                "type": "file",
                "path": path,
                "size": file.size,
                "oid": self.git_sha1(repo_id, path),
            }
            if file.size > LFS_THRESHOLD:
                lfs = {"oid": self.sha256(repo_id, path), "size": file.size, "pointerSize": 134}
                entry["lfs"] = lfs
            entries.append(entry)
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id, repo = self._repo(request)
        path = request.match_info["path"]
        file = repo.files.get(path)
        if file is None:
            raise _hub_error(404, "EntryNotFound", f"{path} does not exist")
        if path in self.fail:
            return web.Response(status=self.fail[path], text="upstream trouble")
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if file.size > LFS_THRESHOLD:
            sha = self.sha256(repo_id, path)
            advertised = "0" * 64 if path in self.wrong_hash else sha
            headers |= {
                "X-Linked-Size": str(file.size),
                "X-Linked-Etag": f'"{advertised}"',
                "ETag": f'"{advertised}"',
                "Location": f"{self.cdn_url}/cdn/{sha}?repo={repo_id}&path={path}",
            }
            raise web.HTTPFound(headers["Location"], headers=headers)
        headers["ETag"] = f'"{self.git_sha1(repo_id, path)}"'
        if request.method == "GET" and path in self.redirect_get:
            sha = self.git_sha1(repo_id, path)
            raise web.HTTPFound(f"{self.cdn_url}/cdn/{sha}?repo={repo_id}&path={path}")
        if request.method == "HEAD":
            headers["Content-Length"] = str(file.size)
            return web.Response(status=200, headers=headers)
        return await self._send(request, path, file, headers)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        repo_id, path = request.query["repo"], request.query["path"]
        file = self.repos[repo_id].files[path]
        if path in self.fail_body_once:
            return web.Response(status=self.fail_body_once.pop(path), text="CDN trouble")
        fast = (
            isinstance(file.content, Path)
            and path not in self.cut_once
            and path not in self.hold_at
        )
        if fast:  # sendfile, Range handled by aiohttp: what a CDN does (bytes not counted)
            return web.FileResponse(file.content)
        return await self._send(request, path, file, {"Accept-Ranges": "bytes"})

    async def _send(
        self, request: web.Request, path: str, file: HubFile, headers: dict[str, str]
    ) -> web.StreamResponse:
        start, end = _byte_range(request.headers.get("Range"), file.size)
        ranged = "Range" in request.headers and path not in self.ignore_range
        if not ranged:
            start, end = 0, file.size
        status = 206 if ranged else 200
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{file.size}"
        response = web.StreamResponse(status=status, headers=headers)
        if path not in self.chunked:
            response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        await self._stream(request, response, path, file, start, end)
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        path: str,
        file: HubFile,
        start: int,
        end: int,
    ) -> None:
        cut = self.cut_once.pop(path, None)
        hold = self.hold_at.get(path)
        position = start
        while position < end:
            stop = min(end, position + SEND_CHUNK)
            for limit in (cut, hold):
                if limit is not None and position < limit < stop:
                    stop = limit
            if cut is not None and position >= cut:
                assert request.transport is not None
                request.transport.abort()  # the connection drops mid-body
                return
            if hold is not None and position >= hold and not self._released.is_set():
                await self._released.wait()
            chunk = file.read(position, stop)
            await response.write(chunk)
            self.served[path] += len(chunk)
            position = stop
        await response.write_eof()


def _hub_error(status: int, code: str, message: str) -> web.HTTPException:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    kind = web.HTTPUnauthorized if status == 401 else web.HTTPNotFound
    return kind(headers=headers, text=message)


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """``[start, end)`` from a single-range header; the whole file without one."""
    match = _RANGE.match(header or "")
    if match is None:
        return 0, size
    start = int(match.group(1))
    end = int(match.group(2)) + 1 if match.group(2) else size
    return min(start, size), min(end, size)


@asynccontextmanager
async def serve_hub(
    hub: FakeHub, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[FakeHub]:
    """Run the hub on a free port of 127.0.0.1 (HTTPS with ``ssl_context``) until the block
    ends."""
    runner = web.AppRunner(hub.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hub.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield hub
    finally:
        hub.release()
        await runner.cleanup()


def write_file(path: Path, size: int, seed: int = 1) -> Path:
    """A file of ``size`` pseudo-random bytes (incompressible, so no transfer shortcut)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(str(seed).encode()).digest() * 32768  # 1 MiB pattern
    with open(path, "wb") as handle:
        remaining = size
        while remaining > 0:
            handle.write(block[: min(len(block), remaining)])
            remaining -= min(len(block), remaining)
    return path
