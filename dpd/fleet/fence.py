"""The requeue policy's self-fencing, daemon side (FLEET.md §9.4; phase 4). Pure.

In ``node_loss = "requeue"`` mode a node's claims carry its fence contract (``owner.fence``:
the mode and ``deadline_s``, the longest its trainer can outlive its last lease renewal), so
that reapers elsewhere wait long enough before they requeue its jobs (T10(b)). The node keeps
its side of the contract twice: its shims read the lease file and stop their trainers
(``dpd.supervisor.lease``), and the daemon, while it runs, stops every fleet run it owns once
``now - last_ok > fence_after`` on CLOCK_BOOTTIME (``to_fence``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dpd.config import Config, fence_deadline
from dpd.fleet.records import Fence, FenceMode
from dpd.supervisor import lease

REQUEUE = "requeue"


def claim_fence(config: Config) -> Fence:
    """What this node writes into each claim: hold, or requeue with its deadline."""
    if config.fleet.node_loss != REQUEUE:
        return Fence()
    return Fence(FenceMode.REQUEUE, fence_deadline(config))


def lease_ran_out(last_ok: float | None, now: float, fence_after: float) -> bool:
    """The daemon fence's test: no successful heartbeat sent within ``fence_after`` (BOOTTIME
    seconds). No lease at all (never heartbeated on this boot) counts as run out."""
    return lease.expired(last_ok, now, fence_after)


def to_fence(states: Iterable[dict[str, Any]], running: Iterable[str]) -> list[str]:
    """The fleet jobs of these state.json documents that have a run supervised here."""
    live = set(running)
    return sorted(
        s["task_id"]
        for s in states
        if isinstance(s.get("fleet"), dict) and s.get("task_id") in live
    )
