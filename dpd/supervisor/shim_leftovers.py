"""A job's processes seen from its shim (``shimproc`` is the daemon's side): the leftovers
found, signalled and waited for, and the shim's one diagnostics channel. Standard library
plus ``proctree``: the shim's RSS is budgeted (bench/bench_shim.py)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from dpd.supervisor import proctree
from dpd.supervisor.shim_protocol import Launch

POLL_INTERVAL = 0.05
KILL_WAIT = 5.0


def log(message: str) -> None:
    """One line to the shim's stderr (shim.log): the only diagnostics channel it has.
    A raw write, not print: the SIGTERM handler logs too, and a buffered stream entered
    twice (handler during a print) raises."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with contextlib.suppress(OSError):
        os.write(2, f"{stamp} shim[{os.getpid()}]: {message}\n".encode())


def reap_children() -> None:
    while True:
        try:
            reaped, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped == 0:
            return


def find_leftovers(launch: Launch, pgid: int) -> list[int]:
    """Live processes of the job: our descendants, the trainer's group, the marker holders."""
    reap_children()
    table = proctree.snapshot()
    found = set(proctree.descendants(os.getpid(), table))
    found.update(proctree.group_members(pgid, table))
    found.update(launch.mark.processes(table.keys()))
    found.discard(os.getpid())
    return sorted(found)


def wait_until_empty(probe: Callable[[], list[int]], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    remaining = probe()
    while remaining and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        remaining = probe()
    return remaining


def signal_all(pids: list[int], pgid: int, signum: int) -> None:
    for target in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signum)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
