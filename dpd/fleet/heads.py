"""Status changes made outside an owner, published to stream ``DPD`` (FLEET.md §9.7).

A cancel through any host (T8), a reaper's failure or requeue (T10, T11, T4b) and a resume
through another host (T12) are numbered inside their CAS (``transitions._announce``: the
event joins the record's ``log_head`` with ``seq := seq + 1``). The node that made the
change publishes its events after the write, under ``Nats-Msg-Id <task_id>:<seq>`` like
every job event, so a repeat is dropped by the stream. Before such a CAS the announcer
raises the record's seq to the last seq the stream holds for the task (``seq_floor``): an
owner publishes more than it writes into the record, and an announcement must not take a
seq that one of its events already has.

Where this differs from §9.7: ``head_published`` is not written (a second CAS for every
change, and one for every submission); instead each node remembers what it published and
publishes only announcements younger than the stream's duplicate window, so a restart that
publishes them again is deduplicated by the stream. An announcement whose node died between
the CAS and the publish is not published (the record, and so ``GET``, still shows it). The
submitter's ``queued`` (seq 1, T1) is not published either: seq 1 of the first owner's
events.jsonl is that same ``queued``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NATS

from dpd.events.jetstream import DUPLICATE_WINDOW
from dpd.events.subjects import MSG_ID_HEADER, encode_payload, job_subject, message_id
from dpd.fleet.records import JobRecord
from dpd.fleet.views import last_seq

log = logging.getLogger("dpd.fleet")

# announcements older than this are left alone: a second publish could outlive the dedup
FRESH: Final = DUPLICATE_WINDOW - 20.0
PUBLISH_TIMEOUT: Final = 5.0


def announced(
    records: Iterable[JobRecord], node: str, now: float, sent: set[tuple[str, int]]
) -> list[dict[str, Any]]:
    """The events of ``records``' log heads that ``node`` announced, that it has not
    published yet and that are still within the stream's dedup window, oldest first."""
    out = []
    for record in records:
        for event in record.log_head:
            seq = int(event.get("seq", 0))
            if seq <= 1 or event.get("node") != node or (record.task_id, seq) in sent:
                continue
            if now - float(event.get("timestamp", 0)) > FRESH:
                continue
            out.append(event)
    return sorted(out, key=lambda e: (e["task_id"], int(e["seq"])))


def with_floor(record: JobRecord, floor: int) -> JobRecord:
    """The record with its seq raised to ``floor`` (an announcement numbers after it)."""
    return record if floor <= record.seq else dataclasses.replace(record, seq=floor)


async def seq_floor(nc: NATS | None, prefix: str, task_id: str, timeout: float = 5.0) -> int:
    """The last seq stream ``DPD`` holds for the task; 0 when it cannot be read (logged:
    the announcement then numbers after the record's seq alone)."""
    if nc is None:
        return 0
    try:
        return await last_seq(nc, prefix, task_id, timeout)
    except (nats.errors.Error, TimeoutError, OSError) as err:  # JetStream's errors too
        log.warning("%s: the stream's last seq could not be read (%r)", task_id, err)
        return 0


class HeadPublisher:
    """Publishes this node's announcements (one instance per agent)."""

    def __init__(self, node: str, prefix: str) -> None:
        self.node = node
        self.prefix = prefix
        self.sent: set[tuple[str, int]] = set()
        self.published = 0

    async def publish(self, nc: NATS, records: list[JobRecord]) -> int:
        """Publish what is due; returns how many. A failed publish is tried again on the
        next call (the stream drops a repeat of one that did land)."""
        js = nc.jetstream(timeout=PUBLISH_TIMEOUT)
        done = 0
        for event in announced(records, self.node, time.time(), self.sent):
            try:
                await js.publish(
                    job_subject(self.prefix, event["task_id"], event["type"]),
                    encode_payload(event),
                    headers={MSG_ID_HEADER: message_id(event)},
                )
            except (nats.errors.Error, TimeoutError) as err:
                log.warning("%s: announcement seq %s not published yet (%r)",
                            event["task_id"], event["seq"], err)  # fmt: skip
                break
            self.sent.add((event["task_id"], int(event["seq"])))
            done += 1
        live = {r.task_id for r in records}
        self.sent = {key for key in self.sent if key[0] in live}
        self.published += done
        return done
