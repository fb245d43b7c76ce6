"""The one way a job enters dpd, from a spool file or from ``POST /training/start``.

Every submission takes the same four steps, in this order: validate, make the job durable
(``JobStore.create_jobs``: state.json and the first ``queued`` event written with it), announce
that first event, wake the scheduler. Nothing is announced before it is durable, so a
subscriber never hears of a job a crash could lose; a crash after the write and before the
announcement is repaired at start (``JobStore.take_unannounced``).

The intake knows the store and two callables, not the event bus or the supervisor: it sits
in the spool package, below both (README, Layout). Blocking work (reading and validating
files, fsyncs, reading the first events back) runs in worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from dpd.errors import DpdError
from dpd.jobs.spec import JobSpec, parse_job_document, validate_job
from dpd.spool.ingest import IngestResult, Outcome, ingest_files
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission

# fleet mode (FLEET.md §9.1.1): jobs are committed to the fleet queue, not to this spool
Commit = Callable[
    [Sequence[tuple[JobSpec, Submission]]], Coroutine[Any, Any, list[dict[str, Any] | DpdError]]
]
Announce = Callable[[dict[str, Any]], None]  # fan out an event the store already persisted
Wake = Callable[[], None]  # tell the scheduler there is new work


class JobIntake:
    """Validate, write, announce, wake: for a batch of spool files (``ingest``) and for one
    REST submission (``validate`` then ``submit``)."""

    def __init__(
        self,
        layout: SpoolLayout,
        store: JobStore,
        data_roots: Sequence[Path],
        announce: Announce,
        wake: Wake,
    ) -> None:
        self.layout = layout
        self.store = store
        self.data_roots = data_roots
        self._announce = announce
        self._wake = wake
        self.commit: Commit | None = None  # set in fleet mode: the fleet agent's commit

    def _fleet_create(
        self, loop: asyncio.AbstractEventLoop, commit: Commit
    ) -> Callable[[Sequence[tuple[JobSpec, Submission]]], list[dict[str, Any] | DpdError]]:
        """The fleet commit as ingest's blocking ``create`` (it runs in a worker thread)."""
        return lambda pairs: asyncio.run_coroutine_threadsafe(commit(pairs), loop).result()

    async def ingest(self, names: Sequence[str]) -> list[IngestResult]:
        """Ingest ``incoming/`` files as one batch (``dpd.spool.ingest``); one result per name.
        In fleet mode the jobs go to the fleet queue; the host that claims one announces it."""
        if self.commit is not None:
            create = self._fleet_create(asyncio.get_running_loop(), self.commit)
            return await asyncio.to_thread(
                ingest_files, self.layout, self.store, names, self.data_roots, create
            )
        results = await asyncio.to_thread(
            ingest_files, self.layout, self.store, names, self.data_roots
        )
        await self._announce_new(
            [r.task_id for r in results if r.outcome is Outcome.ACCEPTED and r.task_id]
        )
        return results

    async def validate(self, body: bytes, document_format: str = "json") -> JobSpec:
        """Parse and validate a submitted document; ``BadRequest``/``ValidationFailed``. In a
        thread: validation resolves paths and looks at the dataset directories on disk."""
        return await asyncio.to_thread(self._validate, body, document_format)

    def _validate(self, body: bytes, document_format: str) -> JobSpec:
        return validate_job(parse_job_document(body, document_format), data_roots=self.data_roots)

    async def submit(self, spec: JobSpec, submission: Submission) -> dict[str, Any]:
        """Make one validated job durable, announce it and wake the scheduler; its state.
        ``Conflict`` if its task_id is taken, ``InsufficientResources`` if the spool is full."""
        state = await asyncio.to_thread(self.store.create_job, spec, submission)
        await self._announce_new([state["task_id"]])
        return state

    async def _announce_new(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        for event in await asyncio.to_thread(_first_events, self.store, task_ids):
            self._announce(event)
        self._wake()


def _first_events(store: JobStore, task_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The events new jobs were written with, in job order (blocking: reads the files)."""
    return [event for task_id in task_ids for event in store.read_events(task_id)]
