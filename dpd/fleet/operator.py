"""What an operator changes in the registry: drain and node-down (FLEET.md §9.3, §7.2).

- ``drain``: the node claims nothing new (its own placement and every peer's read
  ``draining``); its running jobs finish. Undone with ``on=False``.
- ``node_down``: the operator asserts the host is dead. Its held jobs (``node_state: lost``)
  become T10(c) for every reaper, hence requeued per policy. Refused while the node's alive
  key exists (read from the stream leader): a host that heartbeats is not dead, and marking
  it down would let its trainings run twice (§12 case 20). Cleared by the node itself when
  it registers on a new boot.

Both are CAS writes on ``dpd_nodes.node.<n>``; both raise ``NotFound`` for an unknown node.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dpd.errors import Conflict, NotFound
from dpd.fleet.kv import Bucket, Entry
from dpd.fleet.records import NodeRecord, RecordError, iso, node_key


def _record(entry: Entry | None, node: str) -> NodeRecord:
    if entry is None:
        raise NotFound(f"node {node!r} is not registered in the fleet")
    return NodeRecord.from_json(entry.value)


def _key(node: str) -> str:
    try:
        return node_key(node)
    except RecordError as err:
        raise NotFound(str(err)) from err


async def drain(nodes: Bucket, node: str, on: bool) -> NodeRecord:
    """Set or clear ``draining``; the record as written."""
    written: list[NodeRecord] = []

    def fn(entry: Entry | None) -> bytes | None:
        record = _record(entry, node)
        new = dataclasses.replace(record, draining=on)
        written[:] = [new]
        return None if record.draining == on else new.to_json()

    await nodes.cas_update(_key(node), fn)
    return written[0]


async def node_down(
    nodes: Bucket, alive: Bucket, node: str, by: str, reason: str, now: float
) -> NodeRecord:
    """Mark ``node`` down (``{"by", "at", "reason"}``) unless it is heartbeating."""
    key = _key(node)
    current = await alive.leader_get(key)
    if current is not None and current.present:
        raise Conflict(
            f"node {node!r} is heartbeating: it is not down (stop its dpd first, or wait "
            "until the fleet shows it lost)"
        )
    down: dict[str, Any] = {"by": by, "at": iso(now), "reason": reason}
    written: list[NodeRecord] = []

    def fn(entry: Entry | None) -> bytes | None:
        new = dataclasses.replace(_record(entry, node), down=down)
        written[:] = [new]
        return new.to_json()

    await nodes.cas_update(key, fn)
    return written[0]
