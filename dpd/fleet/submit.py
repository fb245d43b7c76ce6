"""The fleet commit of a validated job: its record created in ``dpd_jobs`` (FLEET.md §9.1).

A submission is acknowledged (REST 201, the spool file removed) only once ``create`` of its
key succeeded: the record is then durable on a quorum, and whichever host claims it runs it.
Task ids need no shared counter (§9.1.4): the create settles uniqueness. REST and CLI ids
are random; a spool file's ids are derived from its identity, so a re-ingest after a crash
or a lost reply computes the same id and finds its own record.

Errors: the queue unreachable or without quorum → ``ServiceUnavailable`` (503; spool files
stay in incoming/); a client task id held by another submission → ``Conflict`` (409), for
the spool (REST answers 200 with the existing task, as on one host).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from dpd.fleet.kv import TRANSIENT, Bucket, KeyExists, OutcomeUnknown, Unavailable, WrongLast
from dpd.fleet.records import Constraints, Identity, JobRecord, SubmittedBy, enc
from dpd.fleet.transitions import submit as t1_submit
from dpd.jobs.spec import JobSpec
from dpd.spool.store import Submission

ID_CANDIDATES: Final = 64  # generated ids tried before giving up (a full hour of ids)


class QueueUnavailable(Exception):
    """The record could not be created now (no NATS, no quorum, a reply lost for good)."""


@dataclass(frozen=True)
class Committed:
    record: JobRecord
    created: bool  # False: the id existed (its record is the existing one)


def constraints_for(spec: JobSpec, node: str, domain: str) -> Constraints:
    """Explicit GPUs pin a job to the host it was submitted on (§9.1.1 step 1)."""
    return Constraints(
        required_gpus=spec.required_gpus,
        filesystem_domain=domain,
        node=node if spec.gpu_ids else None,
        gpu_ids=tuple(spec.gpu_ids) if spec.gpu_ids else None,
        min_memory_mb=spec.min_memory_mb,
    )


def identity_of(submission: Submission) -> Identity:
    return Identity(
        submission.name if submission.source == "spool" else "",
        submission.sha256,
        submission.uid,
        submission.inode,
        submission.mtime_ns,
    )


def random_ids(now: float) -> Iterator[str]:
    """REST and CLI: the submitter's date and hour, six random digits."""
    hour = datetime.fromtimestamp(now, UTC).strftime("train_%Y%m%d_%H")
    for _ in range(ID_CANDIDATES):
        yield f"{hour}{secrets.randbelow(1_000_000):06d}"


def spool_ids(submission: Submission) -> Iterator[str]:
    """A spool file's candidates: the hour of its mtime, digits from its identity."""
    mtime = (submission.mtime_ns or 0) / 1e9
    hour = datetime.fromtimestamp(mtime, UTC).strftime("train_%Y%m%d_%H")
    for k in range(ID_CANDIDATES):
        digest = hashlib.sha256(f"{submission.key}:{k}".encode()).hexdigest()
        yield f"{hour}{int(digest, 16) % 1_000_000:06d}"


async def commit(
    jobs: Bucket,
    spec: JobSpec,
    submission: Submission,
    node: str,
    domain: str,
    now: float,
    key_id: str | None = None,
) -> Committed:
    """T1: create the job's record. With the client's task id, an existing record is
    returned with ``created`` False; a generated id that is taken tries the next one,
    except that a spool file finding a record of its own identity has found its own
    earlier commit."""
    by = SubmittedBy(node, submission.source, key_id, identity_of(submission))
    constraints = constraints_for(spec, node, domain)
    if spec.task_id is not None:
        candidates: Iterator[str] = iter([spec.task_id])
    elif submission.source == "spool":
        candidates = spool_ids(submission)
    else:
        candidates = random_ids(now)
    for task_id in candidates:
        job = spec.with_task_id(task_id)
        record = t1_submit(task_id, constraints, job.to_dict(), by, now, spec.priority)
        try:
            await jobs.create_or_reclaim(enc(task_id), record.to_json())
        except KeyExists as taken:
            existing = JobRecord.from_json(taken.entry.value)
            if spec.task_id is not None:
                return Committed(existing, False)
            if submission.source == "spool" and existing.submitted_by.identity == by.identity:
                return Committed(existing, False)
            continue
        except (Unavailable, OutcomeUnknown, WrongLast, *TRANSIENT) as err:
            raise QueueUnavailable(str(err)) from err
        return Committed(record, True)
    raise QueueUnavailable(f"no free task id among {ID_CANDIDATES} candidates")
