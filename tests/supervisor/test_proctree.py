"""/proc readings against real processes: identity by start time, groups, trees, markers."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from uuid import uuid4

import pytest

from dpd.supervisor import proctree
from tests.waiting import wait_for


@pytest.fixture
def marked_tree() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """sh (own session) with two sleeping children, all carrying a unique marker."""
    marker = uuid4().hex
    env = {**os.environ, "PROCTREE_TEST": marker}
    shell = subprocess.Popen(
        ["sh", "-c", "sleep 30 & sleep 30 & wait"], env=env, start_new_session=True
    )
    wait_for(lambda: len(proctree.processes_with_env("PROCTREE_TEST", marker)) == 3)
    yield shell, marker
    os.killpg(shell.pid, signal.SIGKILL)
    shell.wait()
    wait_for(lambda: not proctree.processes_with_env("PROCTREE_TEST", marker))


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    fields = ["S", "1", "42", "42"] + ["0"] * 15 + ["98765", "0"]
    stat = proctree.parse_stat(7, "7 (odd) name (x)) " + " ".join(fields))
    assert (stat.state, stat.ppid, stat.pgid, stat.session) == ("S", 1, 42, 42)
    assert stat.start_time == 98765 and not stat.is_zombie


def test_start_time_identifies_a_process() -> None:
    me = proctree.start_time(os.getpid())
    assert me is not None and me > 0
    assert proctree.is_same_process(os.getpid(), me)
    assert not proctree.is_same_process(os.getpid(), me + 1)
    assert not proctree.is_same_process(0, me)


def test_zombies_and_reaped_processes_are_gone() -> None:
    child = subprocess.Popen(["true"])
    recorded = proctree.read_stat(child.pid)
    assert recorded is not None
    wait_for(lambda: (proctree.read_stat(child.pid) or recorded).is_zombie)
    assert proctree.start_time(child.pid) is None  # a zombie, not yet reaped
    child.wait()
    assert proctree.read_stat(child.pid) is None
    assert not proctree.is_same_process(child.pid, recorded.start_time)


def test_group_descendants_and_marker(
    marked_tree: tuple[subprocess.Popen[bytes], str],
) -> None:
    shell, marker = marked_tree
    table = proctree.snapshot()
    members = proctree.group_members(shell.pid, table)
    assert len(members) == 3 and shell.pid in members
    below = proctree.descendants(shell.pid, table)
    assert len(below) == 2 and shell.pid not in below
    assert proctree.processes_with_env("PROCTREE_TEST", marker) == members
    assert proctree.processes_with_env("PROCTREE_TEST", marker[:-1]) == []  # exact entry only
    assert not proctree.has_env(os.getpid(), "PROCTREE_TEST", marker)


def test_boot_id_is_stable() -> None:
    assert proctree.boot_id() == proctree.boot_id() != ""
