"""The shim's part in fleet mode: the fence of requeue mode (FLEET.md §9.4: the trainer
stopped, staged, once the daemon's lease has run out, even with the daemon dead or paused)
and the run lock on the task's shared output dir (§10.2)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import time
from pathlib import Path

from dpd.supervisor import lease
from dpd.supervisor.lease import FenceOrder
from dpd.supervisor.shim_leftovers import (
    KILL_WAIT,
    find_leftovers,
    log,
    signal_all,
    wait_until_empty,
)
from dpd.supervisor.shim_protocol import Launch

FENCED = "fenced"


def reaped(pid: int) -> int | None:
    """Reap every ended child without blocking; ``pid``'s wait status once it has ended."""
    while True:
        try:
            child, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if child == 0:
            return None
        if child == pid:
            return status


def wait_fenced(launch: Launch, order: FenceOrder, pid: int) -> tuple[int, bool]:
    """Wait for the trainer like ``wait_for``, reading the lease every ``order.check``
    seconds; once it has run out, stop the trainer, staged. (wait status, fenced)."""
    pidfd = os.pidfd_open(pid)
    stages: lease.Stages | None = None
    save_quit: Path | None = None
    next_check = time.monotonic()
    try:
        while True:
            status = reaped(pid)
            if status is not None:
                return status, stages is not None
            now = time.monotonic()
            if stages is None and now >= next_check:
                next_check = now + order.check
                last = lease.read(order.lease)
                if lease.expired(last, lease.boottime(), order.after):
                    log(f"fleet lease {last} ran out ({order.after:g} s): stopping the trainer")
                    stages = lease.Stages(order, now)
            while stages is not None and (step := stages.due(now)) is not None:
                save_quit = fence_step(launch, order, pid, step) or save_quit
            due = stages.next_at() if stages is not None else next_check
            wait = order.check if due is None else min(order.check, max(0.0, due - now))
            select.select([pidfd], [], [], wait)
    finally:
        os.close(pidfd)
        if save_quit is not None:  # a stale save_quit would end a resumed run at once
            with contextlib.suppress(OSError):
                save_quit.unlink()


def fence_step(launch: Launch, order: FenceOrder, pid: int, step: str) -> Path | None:
    """One step of the fenced trainer's staged stop; the save_quit file it created."""
    if step == lease.SAVE_QUIT:
        from dpd.supervisor.outputs import latest_run_dir  # only a fencing shim pays for it

        run_dir = latest_run_dir(Path(order.output_dir)) if order.output_dir else None
        if run_dir is None:
            return None
        path = run_dir / "save_quit"
        with contextlib.suppress(OSError):
            path.touch()
            log(f"fence: {path} created")
            return path
        return None
    if step == lease.TERM:
        log("fence: SIGTERM to the trainer's process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    elif step == lease.KILL:
        log("fence: SIGKILL to every process of the job")
        signal_all(find_leftovers(launch, pid), pid, signal.SIGKILL)
    elif step == lease.GIVEN_UP:
        log(f"fence: the trainer survived SIGKILL for {order.kill_timeout:g} s")
    return None


def kill_leftovers(launch: Launch, pgid: int) -> int:
    """A fenced run's leftovers get no grace: SIGKILL, then wait for them to go."""
    remaining = find_leftovers(launch, pgid)
    if not remaining:
        return 0
    log(f"fence: {len(remaining)} leftover process(es) {remaining}: sending SIGKILL")
    signal_all(remaining, pgid, signal.SIGKILL)
    survivors = wait_until_empty(lambda: find_leftovers(launch, pgid), KILL_WAIT)
    if survivors:
        log(f"processes {survivors} survived SIGKILL (uninterruptible?)")
    return len(remaining)


DUPLICATE_PREVENTED = "duplicate_prevented"


def take_run_lock(path: str) -> int | None:
    """flock the run lock without waiting; the descriptor is inherited by the trainer's
    runner (the lock outlives a killed shim while the trainer lives). None: held elsewhere;
    -1: no lock could be taken here (best effort: the trainer starts)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:  # best effort: no lock is no reason not to train
        log(f"run lock {path} not taken ({err})")
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as err:  # a filesystem without flock (nolock NFS): best effort
        log(f"run lock {path} not supported here ({err})")
    os.set_inheritable(fd, True)
    return fd
