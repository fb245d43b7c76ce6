"""What /proc says about the processes of a job: identity, groups, descendants, env markers.

Both the daemon (stop, sweep, re-attach) and the shim (orphan cleanup) use this module, so it
imports the standard library only: the shim must stay small (its RSS is budgeted).

Identity is never a bare pid (reliability.md §6.4, PS3): a pid is "the one we recorded" only
if ``/proc/<pid>/stat`` field 22 (start time in clock ticks since boot) matches and the boot
id is the same. Zombies count as gone: they hold no memory or GPU and cannot be signalled.

Every function here reads /proc synchronously; the daemon calls the scanning ones through
``asyncio.to_thread``. A process may vanish between a read and the next; every read treats
that as "not there" rather than as an error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

PROC = "/proc"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that supervision needs."""

    pid: int
    state: str
    ppid: int
    pgid: int
    session: int
    start_time: int

    @property
    def is_zombie(self) -> bool:
        return self.state in ("Z", "X")


def parse_stat(pid: int, text: str) -> ProcStat:
    """Parse one /proc/<pid>/stat line. The command name (field 2) may hold spaces and
    parentheses, so fields are counted from the last ')'."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(
        pid=pid,
        state=rest[0],
        ppid=int(rest[1]),
        pgid=int(rest[2]),
        session=int(rest[3]),
        start_time=int(rest[19]),
    )


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"{PROC}/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    try:
        return parse_stat(pid, text)
    except (ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) ``pid`` in clock ticks since boot, or None."""
    stat = read_stat(pid)
    if stat is None or stat.is_zombie:
        return None
    return stat.start_time


def is_same_process(pid: int, recorded_start_time: int) -> bool:
    """True only if ``pid`` is alive and is the very process whose start time was recorded;
    a reused pid (same number, other start time) is a different process."""
    return pid > 0 and start_time(pid) == recorded_start_time


def boot_id() -> str:
    """This boot's random id: a recorded start time is only comparable within one boot."""
    try:
        with open(BOOT_ID_PATH) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def all_pids() -> Iterator[int]:
    for name in os.listdir(PROC):
        if name.isdigit():
            yield int(name)


def snapshot() -> dict[int, ProcStat]:
    """Every live (non-zombie) process, read once: groups and trees are computed from it."""
    table: dict[int, ProcStat] = {}
    for pid in all_pids():
        stat = read_stat(pid)
        if stat is not None and not stat.is_zombie:
            table[pid] = stat
    return table


def group_members(pgid: int, table: dict[int, ProcStat] | None = None) -> list[int]:
    """Live processes of process group ``pgid`` (those that did not call setsid)."""
    table = snapshot() if table is None else table
    return sorted(pid for pid, stat in table.items() if stat.pgid == pgid)


def descendants(root: int, table: dict[int, ProcStat] | None = None) -> list[int]:
    """Live processes below ``root`` in the parent tree (``root`` excluded)."""
    table = snapshot() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found: list[int] = []
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return sorted(found)


def environ(pid: int) -> list[bytes]:
    """The ``name=value`` entries ``pid`` was started with; none if it cannot be read."""
    try:
        with open(f"{PROC}/{pid}/environ", "rb") as handle:
            return handle.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def has_env(pid: int, name: str, value: str) -> bool:
    """True if ``pid`` was started with ``name=value`` in its environment (exact entry)."""
    return f"{name}={value}".encode() in environ(pid)


def processes_where(carries: Callable[[int], bool], pids: Iterable[int] | None = None) -> list[int]:
    """Live processes for which ``carries(pid)`` holds (the calling process excluded).

    Markers are environment entries: every descendant of a trainer inherits them, including
    those that left its process group with setsid, so this finds strays a group kill misses."""
    me = os.getpid()
    candidates = all_pids() if pids is None else pids
    return sorted(
        pid for pid in candidates if pid != me and carries(pid) and start_time(pid) is not None
    )


def processes_with_env(name: str, value: str, pids: Iterable[int] | None = None) -> list[int]:
    """Live processes carrying the entry ``name=value``."""
    return processes_where(lambda pid: has_env(pid, name, value), pids)
