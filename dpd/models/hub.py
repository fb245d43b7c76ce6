"""The boundary to the Hugging Face hub (or a mirror): file lists and file metadata through
huggingface_hub, file bodies through aiohttp.

The library is good at the hub's API (listings, revisions, redirects to resolve, the token
file, its error codes); its calls block, so callers run ``matching_files`` and ``metadata``
in a thread. It is slow at bodies: pure Python reading 64 KiB at a time (0.39x curl in
bench/bench_download.py), and since 1.x ``hf_hub_download`` deletes its temporary file on
any failure, so nothing resumes. ``fetch`` therefore receives the body itself, on the event
loop, into dpd's own partial file (``body.py`` reads the socket straight into its buffers;
``partial.py`` writes, hashes and flushes them in threads), resuming it with ``Range`` and
starting over when a server ignores that.

Redirects (the hub's resolve URL answers 302 to a CDN) are followed here, at most
``MAX_REDIRECTS``; the token goes only to the configured endpoint's origin, never to a CDN
or any other host a redirect names. ``scrub`` removes it from any text that leaves this
module (errors quote URLs and server messages).

Errors, translated here once: 401/403 are ``Forbidden`` (a gated repository without a usable
token), 404 ``NotFound``; a network failure, a timeout, 408, 429 or a 5xx is a
``TransientHubError`` (a ``BadGateway``, 502, when it answers a request; a download retries it
and resumes); any other answer is a ``BadGateway``. Stopping: ``TransferControl.stop`` closes
the connection in flight and the transfer raises ``TransferStopped``; a connection that
stalls ends after ``HF_HUB_DOWNLOAD_TIMEOUT`` seconds (10 by default) without a byte.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Final

import aiohttp
import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # lazy export
from yarl import URL

from dpd.errors import BadGateway, DpdError, Forbidden, NotFound
from dpd.models.body import receive_body
from dpd.models.partial import (
    HashMismatch,
    PartialFile,
    RemoteFile,
    TransferControl,
    TransferStopped,
)

__all__ = [
    "HashMismatch",
    "HubClient",
    "RemoteFile",
    "TransferControl",
    "TransferStopped",
    "TransientHubError",
    "resolve_endpoint",
    "resolve_token",
    "scrub",
]

DEFAULT_ENDPOINT: Final = "https://huggingface.co"
# aiohttp's read buffer, for a body of unknown length (``body.py`` takes the others over):
# the socket is read until this much waits for us (then TCP pushes back). Large, so that
# one event-loop wake-up moves megabytes, not 64 KiB.
READ_BUFFER: Final = 4 * 1024 * 1024
MAX_REDIRECTS: Final = 10
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE: Final = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")

# huggingface_hub's telemetry opt-out (HF_HUB_DISABLE_TELEMETRY), set for the process: with
# it on, building request headers fetches an "agent harnesses" list from the public hub once
# a day, whatever endpoint dpd is configured with. A box set up to use a mirror, or none,
# must not talk to the public hub behind the operator's back.
constants.HF_HUB_DISABLE_TELEMETRY = True


class TransientHubError(BadGateway):
    """The hub could not be reached or failed (5xx, 408, 429, timeout): worth trying again;
    a download resumes its file. Answering a request, it is a 502."""


def resolve_endpoint(configured: str, environ: dict[str, str] | None = None) -> str:
    """The config wins over ``HF_ENDPOINT``; without either, the public hub."""
    env = os.environ if environ is None else environ
    return (configured or env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def resolve_token(configured: str) -> str | None:
    """The config wins over ``HF_TOKEN`` and the token file huggingface_hub keeps."""
    return configured or get_token() or None


def scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


class HubClient:
    """Talks to one hub endpoint with one (optional) token."""

    def __init__(self, endpoint: str, token: str | None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._origin = URL(self.endpoint).origin()
        self._token = token

    def __repr__(self) -> str:  # never the token
        return f"HubClient({self.endpoint!r}, token={'set' if self._token else 'none'})"

    @property
    def _auth(self) -> str | bool:
        return self._token or False

    # ------------------------------------------------------------- metadata (blocking)

    def matching_files(self, repo: str, revision: str, patterns: tuple[str, ...]) -> list[str]:
        """Repo paths matching any glob pattern (``*`` crosses ``/``, as fnmatch does)."""
        api = HfApi(endpoint=self.endpoint, token=self._auth)
        with self._translated(repo, None):
            names = api.list_repo_files(repo, revision=revision)
        return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))

    def metadata(self, repo: str, path: str, revision: str) -> tuple[RemoteFile, str]:
        """The file's size, hash and commit, and the URL to fetch it from now."""
        url = hf_hub_url(repo, path, revision=revision, endpoint=self.endpoint)
        with self._translated(repo, path):
            meta = get_hf_file_metadata(url, token=self._auth, endpoint=self.endpoint)
        if meta.size is None or not meta.etag or not meta.commit_hash:
            raise BadGateway(
                f"the hub sent incomplete metadata for {repo}/{path}",
                {"repo": repo, "file": path},
            )
        remote = RemoteFile(repo, path, meta.commit_hash, meta.size, meta.etag)
        return remote, str(URL(url).join(URL(meta.location, encoded=True)))

    # ------------------------------------------------------------- bodies (event loop)

    async def fetch(self, remote: RemoteFile, partial: Path, control: TransferControl) -> None:
        """Bring ``partial`` to the full, verified, fsynced content of ``remote``, resuming
        it. Raises TransferStopped, TransientHubError, HashMismatch, DpdError or OSError."""
        fresh, location = await asyncio.to_thread(
            self.metadata, remote.repo, remote.path, remote.revision
        )
        if fresh.etag != remote.etag or fresh.size != remote.size:
            raise HashMismatch(f"{remote.repo}/{remote.path} changed on the hub")
        sink = await asyncio.to_thread(PartialFile.open, partial, remote, control)
        try:
            if sink.size < remote.size:
                await self._download(location, sink, control)
            else:
                sink.start()  # complete already (stopped just before the rename): verify
            await sink.finish()
        finally:
            await sink.close()

    async def _download(self, location: str, sink: PartialFile, control: TransferControl) -> None:
        remote = sink.remote
        where = {"repo": remote.repo, "file": remote.path}
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=constants.HF_HUB_ETAG_TIMEOUT,
            sock_read=constants.HF_HUB_DOWNLOAD_TIMEOUT,
        )
        try:
            async with aiohttp.ClientSession(
                timeout=timeout, read_bufsize=READ_BUFFER, auto_decompress=False, trust_env=True
            ) as session:
                response = await self._open(session, location, sink.size, where)
                try:
                    with control.interrupts(response.close):
                        if _ignored_range(response, sink, where):
                            await asyncio.to_thread(sink.restart)
                        sink.start()
                        await _receive(response, sink, control, where)
                finally:
                    response.close()
        except (aiohttp.ClientError, TimeoutError) as err:
            control.check()  # a stop closed the connection: not a network failure
            message = f"cannot fetch {remote.repo}/{remote.path}: {type(err).__name__} {err}"
            raise TransientHubError(scrub(message, self._token), where) from None
        control.check()

    async def _open(
        self, session: aiohttp.ClientSession, url: str, start: int, where: dict[str, str]
    ) -> aiohttp.ClientResponse:
        """GET ``url`` from byte ``start``, following redirects; the final answer's status
        is checked. The token is sent to the endpoint's origin only."""
        target = URL(url, encoded=True)
        for _ in range(MAX_REDIRECTS + 1):
            same_origin = target.origin() == self._origin
            headers = build_hf_headers(token=self._auth if same_origin else False)
            headers["Accept-Encoding"] = "identity"  # the bytes as stored: sizes and Range hold
            if start:
                headers["Range"] = f"bytes={start}-"
            response = await session.get(target, headers=headers, allow_redirects=False)
            if response.status not in _REDIRECTS:
                if response.status not in (200, 206):
                    response.release()
                    raise status_error(response.status, where)
                return response
            location = response.headers.get("Location", "")
            response.release()
            if not location:
                raise BadGateway("the hub sent a redirect without a Location", where)
            target = target.join(URL(location, encoded=True))
        raise BadGateway(f"more than {MAX_REDIRECTS} redirects", where)

    def _translated(self, repo: str, path: str | None) -> _Translate:
        return _Translate(repo, path, self._token)


def _ignored_range(
    response: aiohttp.ClientResponse, sink: PartialFile, where: dict[str, str]
) -> bool:
    """Whether the body starts at byte 0 although the partial file holds bytes (a server
    that ignores Range); raises when the answer does not fit the file."""
    size = sink.remote.size
    encoding = response.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity":
        raise BadGateway(f"the hub sent the file encoded ({encoding})", where)
    if response.status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != sink.size:
            raise TransientHubError("the hub answered another range than asked", where)
        if int(match.group(3)) != size:
            raise HashMismatch(f"{where['repo']}/{where['file']} changed on the hub")
        return False
    if response.content_length is not None and response.content_length != size:
        raise HashMismatch(f"{where['repo']}/{where['file']} changed on the hub")
    return sink.size > 0


async def _receive(
    response: aiohttp.ClientResponse,
    sink: PartialFile,
    control: TransferControl,
    where: dict[str, str],
) -> None:
    """Receive the body into the partial file, checking stop and size."""
    size = sink.remote.size
    if not await receive_body(response, sink, constants.HF_HUB_DOWNLOAD_TIMEOUT):
        async for piece in response.content.iter_any():  # length unknown: aiohttp reads
            control.check()
            await sink.feed(piece)
    control.check()
    if sink.size != size:
        raise TransientHubError(f"the connection ended after {sink.size} of {size} bytes", where)


class _Translate:
    """Turns the library's errors into dpd's, with messages free of the token."""

    def __init__(self, repo: str, path: str | None, token: str | None) -> None:
        self.where = {"repo": repo, **({"file": path} if path else {})}
        self.token = token

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: BaseException | None, tb: Any) -> None:
        if err is None or not isinstance(err, Exception):
            return
        translated = translate_hub_error(err, self.where, self.token)
        if translated is not None:
            raise translated from None


def translate_hub_error(
    err: Exception, where: dict[str, str], token: str | None
) -> Exception | None:
    """The dpd error for a library error, or None to let it through unchanged."""
    label = "/".join(where.values())
    if isinstance(err, GatedRepoError):
        return status_error(401 if _status(err) is None else _status(err), where)
    if isinstance(err, (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError)):
        return NotFound(f"not found on the hub: {label}", {**where, "hub_status": _status(err)})
    if isinstance(err, HfHubHTTPError):
        return status_error(_status(err), where)
    if isinstance(err, (httpx2.TransportError, httpx2.StreamError)):
        return TransientHubError(scrub(f"cannot reach the hub for {label}: {err}", token), where)
    return None  # ours (DpdError, TransferStopped, ...) or unexpected: unchanged


def status_error(status: int | None, where: dict[str, str]) -> DpdError:
    """The dpd error for an HTTP status the hub (or its CDN) answered."""
    label = "/".join(where.values())
    data = {**where, "hub_status": status}
    if status in (401, 403):
        return Forbidden(
            f"the hub refused access to {where['repo']}: a gated or private repository needs "
            "a token with access (models.hf_token or HF_TOKEN)",
            data,
        )
    if status == 404:
        return NotFound(f"not found on the hub: {label}", data)
    if status is None or status >= 500 or status in (408, 429):
        return TransientHubError(f"the hub answered {status} for {label}", data)
    return BadGateway(f"the hub answered {status} for {label}", data)


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)
