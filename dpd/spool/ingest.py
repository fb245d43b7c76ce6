"""Turning one file dropped into ``incoming/`` into a job, or into a rejection.

The order is Postfix's pickup → cleanup (reliability.md SP2): read the file through one
descriptor, validate, make the job durable, and only then remove the file. A crash before
the removal leaves the file in incoming/; ingesting it again finds the job it already
became (same name, content, owner, inode and mtime) and just removes it.

Several files waiting at once are ingested as one batch (``ingest_files``): their jobs are
made durable together (``JobStore.create_jobs``: one fsync of ``jobs/`` for all), then their
files removed together (one fsync of ``incoming/``). Nothing of the order above changes: no
file is removed before its job is durable.

A rejected file goes to ``rejected/<name>`` beside ``<name>.error.json``, which holds the same
envelope a REST caller would get. The reason is written first, the file moved second, so a
crash in between only repeats the rejection.

Not trusted: the file and its name. Opened with O_NOFOLLOW|O_NONBLOCK, must be a regular
file with one link, at most MAX_JOB_FILE_BYTES. A file still being written (a writer holds
it open, or it changed in the last moments and does not parse yet) is deferred, never
half-read. A second hard link is refused once it has stood for SETTLE_SECONDS (until then
it may be a writer's link-then-unlink): the owner of the file is who the job is submitted
as, so a link to another user's file must not pass for their submission. A name that is
not UTF-8 is rejected before the file is read (no job record can hold it) and moved to
rejected/ under a printable name (its bytes backslash-escaped); it never holds up the
other files of its batch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dpd.crashpoints import crash_point
from dpd.envelope import error_envelope
from dpd.errors import (
    BadRequest,
    DpdError,
    InsufficientResources,
    PayloadTooLarge,
    ServiceUnavailable,
)
from dpd.jobs.spec import JobSpec, parse_job_document, validate_job
from dpd.spool.atomic import fsync_dir, write_json_atomic
from dpd.spool.layout import SpoolLayout, document_format
from dpd.spool.store import JobStore, Submission

log = logging.getLogger("dpd.spool")

MAX_JOB_FILE_BYTES = 1 << 20
# A file that does not parse and changed less than this long ago may still be written.
SETTLE_SECONDS = 2.0


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    ALREADY_ACCEPTED = "already_accepted"  # re-ingested after a crash: same drop, same job
    REJECTED = "rejected"
    DEFERRED = "deferred"  # not ready (still being written, linked twice): try again later
    NO_ROOM = "no_room"  # the spool's file system is short of room: left for a later scan
    GONE = "gone"  # vanished before we read it


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    name: str
    task_id: str | None = None
    error: DpdError | None = None
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Drop:
    data: bytes
    stat: os.stat_result


class _NotReady(Exception):
    pass


def ingest_file(
    layout: SpoolLayout, store: JobStore, name: str, data_roots: Sequence[Path]
) -> IngestResult:
    """Ingest ``incoming/<name>``. Blocking: run it in a worker thread."""
    (result,) = ingest_files(layout, store, [name], data_roots)
    return result


# makes validated jobs durable: the store (one host) or the fleet's commit (FLEET.md §9.1.1)
CreateJobs = Callable[[Sequence[tuple[JobSpec, Submission]]], list[dict[str, Any] | DpdError]]


def ingest_files(
    layout: SpoolLayout,
    store: JobStore,
    names: Sequence[str],
    data_roots: Sequence[Path],
    create: CreateJobs | None = None,
) -> list[IngestResult]:
    """Ingest several ``incoming/`` files as one batch; one result per name, in order (a
    name given twice is ingested once). Blocking: run it in a worker thread. A failed write
    raises for the whole batch; every file it had not yet removed stays in incoming/.
    ``create`` replaces ``store.create_jobs`` (fleet mode); its ``ServiceUnavailable``
    leaves the batch in incoming/, deferred (the watcher looks again shortly)."""
    results: dict[str, IngestResult] = {}
    valid: list[_Valid] = []
    for name in dict.fromkeys(names):
        examined = _examine(layout, store, name, data_roots)
        if isinstance(examined, _Valid):
            valid.append(examined)
        else:
            results[name] = examined
    created: list[dict[str, Any] | DpdError] = []
    if valid:
        try:
            created = (create or store.create_jobs)([(v.spec, v.submission) for v in valid])
        except (InsufficientResources, ServiceUnavailable) as err:
            log.warning("%s; %s stay in incoming/", err.message, ", ".join(v.name for v in valid))
            # no room: a later scan; the fleet queue unreachable: looked at again shortly
            no_room = isinstance(err, InsufficientResources)
            waiting = Outcome.NO_ROOM if no_room else Outcome.DEFERRED
            results.update((v.name, IngestResult(waiting, v.name)) for v in valid)
            valid = []
    for checked, outcome in zip(valid, created, strict=True):
        if isinstance(outcome, DpdError):
            results[checked.name] = _reject(layout, checked.name, outcome)
        else:
            task_id = outcome["task_id"]
            results[checked.name] = IngestResult(
                Outcome.ACCEPTED, checked.name, task_id, state=outcome
            )
    done = (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED)
    if any(r.outcome is Outcome.ACCEPTED for r in results.values()):
        crash_point("commit_unlink")  # FL6: committed, the files still in incoming/
    _remove_drops(layout, [r.name for r in results.values() if r.outcome in done])
    for result in results.values():
        if result.outcome is Outcome.ACCEPTED:
            log.info("accepted %s as task %s", result.name, result.task_id)
    return [results[name] for name in names]


@dataclass(frozen=True)
class _Valid:
    """A file that parsed and validated: what it asks for and where it came from."""

    name: str
    spec: JobSpec
    submission: Submission


def _examine(
    layout: SpoolLayout, store: JobStore, name: str, data_roots: Sequence[Path]
) -> IngestResult | _Valid:
    """Read and validate one file; a result if that settles it (gone, not ready, already a
    job, rejected), else the job it asks for."""
    if printable_name(name) != name:
        refused = BadRequest("the file name is not valid UTF-8; rename it and drop it again")
        return _reject(layout, name, refused)
    path = layout.incoming / name
    try:
        drop = _read_drop(path)
    except FileNotFoundError:
        return IngestResult(Outcome.GONE, name)
    except _NotReady:
        return IngestResult(Outcome.DEFERRED, name)
    except DpdError as err:
        return _reject(layout, name, err)
    submission = Submission(
        source="spool",
        name=name,
        sha256=hashlib.sha256(drop.data).hexdigest(),
        uid=drop.stat.st_uid,
        inode=drop.stat.st_ino,
        mtime_ns=drop.stat.st_mtime_ns,
    )
    existing = store.find_submission(submission)
    if existing is not None:
        return IngestResult(Outcome.ALREADY_ACCEPTED, name, existing)
    try:
        doc = parse_job_document(drop.data, document_format(name))
        spec = validate_job(doc, data_roots=data_roots, source="spool")
    except BadRequest as err:
        if _recently_changed(drop.stat):
            return IngestResult(Outcome.DEFERRED, name)
        return _reject(layout, name, err)
    except DpdError as err:
        return _reject(layout, name, err)
    return _Valid(name, spec, submission)


def _read_drop(path: Path) -> _Drop:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise FileNotFoundError(path) from err
        if err.errno == errno.ELOOP:
            raise BadRequest("a job file must be a regular file, not a symbolic link") from err
        raise BadRequest(f"cannot open the job file: {err.strerror}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest("a job file must be a regular file")
        if info.st_nlink > 1:
            _check_links(info)
        if _has_writer(fd):
            raise _NotReady()
        if info.st_size > MAX_JOB_FILE_BYTES:
            raise PayloadTooLarge(
                f"job file is {info.st_size} bytes; the limit is {MAX_JOB_FILE_BYTES}"
            )
        return _Drop(_read_all(fd, MAX_JOB_FILE_BYTES + 1), info)
    finally:
        os.close(fd)


def _check_links(info: os.stat_result) -> None:
    """A file with several links: _NotReady while a writer may be between its link and
    unlink (the link count changed recently), else BadRequest."""
    if time.time() - info.st_ctime < SETTLE_SECONDS:
        raise _NotReady()
    raise BadRequest(
        f"a job file must have exactly one link, this one has {info.st_nlink} (a hard link "
        "into incoming/ would be submitted as the file's owner): copy the file instead"
    )


def _has_writer(fd: int) -> bool:
    """True if another process holds the file open for writing. A read lease is refused
    with EAGAIN exactly then; where leases are not permitted we cannot tell (False)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as err:
        return err.errno == errno.EAGAIN
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    if len(data) > MAX_JOB_FILE_BYTES:
        raise PayloadTooLarge(f"job file exceeds {MAX_JOB_FILE_BYTES} bytes")
    return data


def _recently_changed(info: os.stat_result) -> bool:
    return time.time() - info.st_mtime < SETTLE_SECONDS


def _remove_drops(layout: SpoolLayout, names: Sequence[str]) -> None:
    """Remove files whose jobs are durable; one fsync of incoming/ for all of them."""
    if not names:
        return
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(layout.incoming / name)
    fsync_dir(layout.incoming)


def printable_name(name: str) -> str:
    """``name`` if it is UTF-8 (what os.listdir decoded without surrogate escapes), else
    its bytes with the undecodable ones written ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _reject(layout: SpoolLayout, name: str, err: DpdError) -> IngestResult:
    target = _free_name(layout.rejected, printable_name(name))
    write_json_atomic(layout.rejected / f"{target}.error.json", error_envelope(err), 0o640)
    with contextlib.suppress(FileNotFoundError):
        os.rename(layout.incoming / name, layout.rejected / target)
    fsync_dir(layout.rejected)
    fsync_dir(layout.incoming)
    log.warning("rejected %s: %s (%d)", printable_name(name), err.message, err.code)
    return IngestResult(Outcome.REJECTED, name, error=err)


def _free_name(directory: Path, name: str) -> str:
    """``name``, or ``name.<n>`` if a rejection of that name is already there."""
    candidate = name
    counter = 1
    while (directory / candidate).exists() or (directory / f"{candidate}.error.json").exists():
        candidate = f"{name}.{counter}"
        counter += 1
    return candidate
