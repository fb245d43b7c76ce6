"""The boundary to the Hugging Face hub (or a mirror): file lists, file metadata and
resumable, verified transfers, through huggingface_hub. Every call here blocks: callers run
them in a thread (``asyncio.to_thread``).

Why not ``hf_hub_download``: since huggingface_hub 1.x it downloads into a process-unique
temporary file and deletes it on any failure, so a transfer cut by a network error (after the
library's own five in-call retries) or by a daemon restart starts again from byte zero. dpd
keeps its own partial file instead and hands it to the library's ``http_get`` with
``resume_size``, which sends ``Range`` and copes with servers that ignore it.

What is trusted: nothing the wire says about content. Every byte goes through
``VerifyingWriter``, which hashes as it writes (SHA-256 for LFS files, whose ETag is their
SHA-256; the git blob SHA-1 for small files, whose ETag is that); a file is good only when
its size and digest match the hub's metadata. Resuming re-reads the partial file once to
seed the hash.

Stopping: ``TransferControl.stop`` makes the next ``write`` raise ``TransferStopped``; a
transfer stops within one chunk (``CHUNK_BYTES``) or, on a stalled connection, when the
library's read timeout (``HF_HUB_DOWNLOAD_TIMEOUT``, 10 s) fires.

The token: given to the library only, never put in a message. ``scrub`` removes it from any
text that leaves this module (errors from the library quote URLs and server messages).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final

import httpx2
from huggingface_hub import HfApi, constants, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from dpd.errors import Forbidden, InternalError, NotFound

DEFAULT_ENDPOINT: Final = "https://huggingface.co"
# The library's default (10 MiB) is also its write granularity: progress, cancellation and
# what a crash can lose all move in steps of it. 1 MiB keeps them fine-grained at no
# measurable cost in throughput (bench/bench_download.py).
CHUNK_BYTES: Final = 1024 * 1024
_SHA256: Final = re.compile(r"^[0-9a-f]{64}$")
_HASH_READ: Final = 8 * 1024 * 1024


class TransferStopped(Exception):
    """The transfer was asked to stop (cancel or daemon shutdown); the partial file stays."""


class TransientHubError(Exception):
    """A network failure the library gave up on; trying again later resumes the file."""


class HashMismatch(Exception):
    """The bytes received do not match the hub's size or hash: never installed."""


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    path: str  # inside the repository
    revision: str  # the commit the metadata came from: downloads pin it
    size: int
    etag: str  # SHA-256 (LFS) or git blob SHA-1

    @property
    def is_lfs(self) -> bool:
        return bool(_SHA256.match(self.etag))


@dataclass
class TransferControl:
    """Shared between the event loop and the transfer thread of one download."""

    file_bytes: int = 0  # bytes of the current file on disk so far
    transferred: int = 0  # bytes received by this process (for speed: resumes do not count)
    _stop: threading.Event = field(default_factory=threading.Event)
    reason: str = ""

    def stop(self, reason: str) -> None:
        self.reason = reason
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def check(self) -> None:
        if self._stop.is_set():
            raise TransferStopped(self.reason)


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
        self._token = token
        constants.DOWNLOAD_CHUNK_SIZE = CHUNK_BYTES

    def __repr__(self) -> str:  # never the token
        return f"HubClient({self.endpoint!r}, token={'set' if self._token else 'none'})"

    @property
    def _auth(self) -> str | bool:
        return self._token or False

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
            raise InternalError(
                f"the hub sent incomplete metadata for {repo}/{path}",
                {"repo": repo, "file": path},
            )
        remote = RemoteFile(repo, path, meta.commit_hash, meta.size, meta.etag)
        return remote, meta.location

    def fetch(self, remote: RemoteFile, partial: Path, control: TransferControl) -> None:
        """Bring ``partial`` to the full, verified content of ``remote``, resuming it."""
        fresh, location = self.metadata(remote.repo, remote.path, remote.revision)
        if fresh.etag != remote.etag or fresh.size != remote.size:
            raise HashMismatch(f"{remote.repo}/{remote.path} changed on the hub")
        partial.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "ab") as handle:
            writer = VerifyingWriter(handle, partial, remote, control)
            try:
                if writer.done < remote.size:
                    self._transfer(location, writer, remote)
                handle.flush()
                writer.verify()
                os.fsync(handle.fileno())
            finally:
                writer.close()

    def _transfer(self, location: str, writer: VerifyingWriter, remote: RemoteFile) -> None:
        headers = build_hf_headers(token=self._auth)
        with self._translated(remote.repo, remote.path):
            try:
                http_get(
                    location,
                    writer,  # type: ignore[arg-type]
                    resume_size=writer.done,
                    headers=headers,
                    expected_size=remote.size,
                    displayed_filename=remote.path,
                    tqdm_class=SilentProgress,  # type: ignore[arg-type]
                )
            except (httpx2.TransportError, httpx2.StreamError) as err:
                raise TransientHubError(scrub(str(err), self._token)) from None
            except OSError as err:
                if err.errno is None:  # the library's size-consistency check
                    raise TransientHubError(scrub(str(err), self._token)) from None
                raise

    def _translated(self, repo: str, path: str | None) -> _Translate:
        return _Translate(repo, path, self._token)


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
    if isinstance(err, GatedRepoError) or _status(err) in (401, 403):
        return Forbidden(
            f"the hub refused access to {where['repo']}: a gated or private repository needs "
            "a token with access (models.hf_token or HF_TOKEN)",
            {**where, "hub_status": _status(err)},
        )
    if isinstance(err, (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError)):
        return NotFound(f"not found on the hub: {label}", {**where, "hub_status": _status(err)})
    if isinstance(err, HfHubHTTPError):
        status = _status(err)
        if status == 404:
            return NotFound(f"not found on the hub: {label}", {**where, "hub_status": 404})
        if status is not None and (status >= 500 or status in (408, 429)):
            return TransientHubError(f"the hub answered {status} for {label}")
        return InternalError(f"the hub answered {status} for {label}", {**where})
    if isinstance(err, (httpx2.TransportError, httpx2.StreamError)):
        return TransientHubError(scrub(f"cannot reach the hub for {label}: {err}", token))
    return None  # ours (DpdError, TransferStopped, ...) or unexpected: unchanged


def _status(err: Exception) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


class VerifyingWriter:
    """The file object ``http_get`` writes to: counts, checks for stop, and hands each chunk
    to ``_Behind`` for hashing and write-back (call ``close`` when done with it)."""

    def __init__(
        self, handle: BinaryIO, path: Path, remote: RemoteFile, control: TransferControl
    ) -> None:
        self._handle = handle
        self._path = path
        self._remote = remote
        self._control = control
        if handle.tell() > remote.size:
            handle.truncate(0)
        self._behind = self._seed()

    @property
    def done(self) -> int:
        return self._handle.tell()

    def write(self, data: bytes) -> int:
        self._control.check()
        written = self._handle.write(data)
        self._behind.feed(data)
        self._control.file_bytes += len(data)
        self._control.transferred += len(data)
        return written

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        """The library truncates when a server ignored Range: the hash restarts with it."""
        result = self._handle.truncate(size)
        self._handle.seek(0, os.SEEK_END)
        self._behind.finish()
        self._behind = self._seed()
        return result

    def flush(self) -> None:
        self._handle.flush()

    def verify(self) -> None:
        digest = self._behind.finish()
        size = self._handle.tell()
        if size != self._remote.size or digest != self._remote.etag:
            raise HashMismatch(
                f"{self._remote.repo}/{self._remote.path}: got {size} bytes with hash "
                f"{digest}, expected {self._remote.size} bytes with hash {self._remote.etag}"
            )

    def close(self) -> None:
        self._behind.finish()

    def _seed(self) -> _Behind:
        """Start the hash over and feed it what the partial file already holds."""
        digest = _new_hash(self._remote)
        self._handle.flush()
        remaining = self._handle.tell()
        with open(self._path, "rb") as reader:
            while remaining > 0:
                block = reader.read(min(_HASH_READ, remaining))
                if not block:
                    break
                digest.update(block)
                remaining -= len(block)
        self._control.file_bytes = self._handle.tell()
        return _Behind(self._handle.fileno(), digest)


class _Behind:
    """Hashing and write-back behind the transfer thread, each in a thread of its own.

    hashlib and fdatasync release the GIL, so the network thread keeps receiving while they
    run; and flushing every ``SYNC_EVERY`` bytes leaves little for the final fsync (the
    kernel would otherwise hold gigabytes dirty until then). A failed background fdatasync
    is never retried: ``finish`` raises it, the file is not trusted.
    """

    SYNC_EVERY: Final = 64 * 1024 * 1024

    def __init__(self, fd: int, digest: Any) -> None:
        self._fd = fd
        self._digest = digest
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        self._sync_wanted = threading.Event()
        self._closing = False
        self._unsynced = 0
        self._sync_error: OSError | None = None
        self._result: str | None = None
        self._hasher = threading.Thread(target=self._hash_loop, daemon=True)
        self._syncer = threading.Thread(target=self._sync_loop, daemon=True)
        self._hasher.start()
        self._syncer.start()

    def feed(self, data: bytes) -> None:
        self._chunks.put(data)
        self._unsynced += len(data)
        if self._unsynced >= self.SYNC_EVERY:
            self._unsynced = 0
            self._sync_wanted.set()

    def finish(self) -> str:
        """Wait for both threads; the hex digest of everything fed."""
        if self._result is None:
            self._chunks.put(None)
            self._hasher.join()
            self._closing = True
            self._sync_wanted.set()
            self._syncer.join()
            self._result = self._digest.hexdigest()
        if self._sync_error is not None:
            raise self._sync_error
        return self._result

    def _hash_loop(self) -> None:
        while (data := self._chunks.get()) is not None:
            self._digest.update(data)

    def _sync_loop(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._closing:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as err:
                self._sync_error = err
                return


def _new_hash(remote: RemoteFile) -> Any:
    if remote.is_lfs:
        return hashlib.sha256()
    # A git blob id: SHA-1 over a header naming the size, then the content.
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % remote.size)
    return digest


class SilentProgress:
    """Stands in for tqdm in ``http_get``: progress is counted by ``VerifyingWriter``."""

    def __init__(self, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> SilentProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass
