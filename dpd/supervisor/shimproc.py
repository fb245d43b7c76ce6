"""A job's processes seen from the daemon: is its shim alive, signal its group, sweep its
marked strays — small blocking helpers (call them in a thread), no state.

Identity is pid + /proc start time + boot id, never a bare pid; a process group is
signalled only if one of its members carries the job's marker (``JobMark``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path

from dpd.supervisor import proctree
from dpd.supervisor.shim_protocol import LOCK_FILE, JobMark
from dpd.supervisor.shim_records import ExitStatus, ShimInfo


def shim_lock_held(job_dir: Path) -> bool:
    """True while a shim lives for this job dir. Probing takes the lock for an instant, so a
    shim starting at that very moment would refuse: call it only when no spawn is under way."""
    try:
        fd = os.open(Path(job_dir) / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def is_alive(info: ShimInfo) -> bool:
    """The recorded shim still runs (same boot, same pid, same start time)."""
    return info.boot_id == proctree.boot_id() and proctree.is_same_process(
        info.shim_pid, info.shim_start_time
    )


def signal_group(pgid: int, mark: JobMark, signum: int) -> bool:
    """killpg only if the group still holds a process of this job: a group id whose members
    are all gone could name someone else's group after pid reuse."""
    members = proctree.group_members(pgid)
    if not any(mark.carried_by(pid) for pid in members):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
    return True


def kill_marked(mark: JobMark) -> list[int]:
    """SIGKILL every process carrying the job's markers; returns those signalled."""
    found = mark.processes()
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def open_shim_pidfd(info: ShimInfo) -> int | None:
    """A pidfd of the recorded shim, readable once it has ended (so its end is noticed at
    once, without polling), or None: the shim is gone already, the pid now names another
    process, or pidfds are unavailable. The caller closes it. Blocking (/proc read)."""
    try:
        pidfd = os.pidfd_open(info.shim_pid)
    except OSError:
        return None
    # checked after opening: the pidfd pins the process, whatever happens to the pid
    if not is_alive(info):
        os.close(pidfd)
        return None
    return pidfd


def job_alive(info: ShimInfo) -> bool:
    return is_alive(info) or bool(info.mark.processes())


def touch(path: Path) -> None:
    path.touch(exist_ok=True)


def unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except OSError:
        return ""


def resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def lost_status(run: int | None, reason: str, killed: int = 0) -> ExitStatus:
    return ExitStatus(None, None, time.time(), reason, killed, run)
