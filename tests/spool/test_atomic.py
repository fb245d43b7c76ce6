from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpd.spool import atomic
from dpd.spool.atomic import (
    DurabilityError,
    append_line,
    create_file,
    fsync_all,
    write_atomic,
    write_json_atomic,
    write_new_file,
)
from dpd.spool.jsontail import json_lines_backwards


def test_write_atomic_replaces_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_atomic(target, b"old")
    write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_fsync_keeps_the_old_content_and_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, {"status": "queued"})
    calls = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(DurabilityError):
        write_json_atomic(target, {"status": "running"})
    assert len(calls) == 1  # never retried: a second fsync may lie (fsyncgate)
    assert json.loads(target.read_text()) == {"status": "queued"}
    assert os.listdir(tmp_path) == ["state.json"]


def test_append_line_and_torn_tail_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    append_line(path, b'{"seq": 1}')
    append_line(path, b'{"seq": 2}')
    with path.open("ab") as f:
        f.write(b'{"seq": 3, "da')  # a crash in the middle of a write
    assert list(json_lines_backwards(path)) == [{"seq": 2}, {"seq": 1}]


def test_garbled_line_in_the_middle_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n{"a": 2}\n')
    assert list(json_lines_backwards(path)) == [{"a": 2}, {"a": 1}]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_syscall_order_is_temp_fsync_rename_fsync_dir(tmp_path: Path) -> None:
    """reliability.md F2: temp create (O_EXCL|O_NOFOLLOW) -> write -> fsync -> rename ->
    fsync of the directory, observed in the real system calls."""
    script = (
        "from dpd.spool.atomic import write_atomic; "
        f"write_atomic({str(tmp_path / 'state.json')!r}, b'{{}}')"
    )
    trace = tmp_path / "trace"
    result = subprocess.run(
        [
            "strace",
            "-f",
            "-o",
            str(trace),
            "-e",
            "trace=openat,write,fsync,rename,close",
            sys.executable,
            "-c",
            script,
        ],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0 and b"ptrace" in result.stderr:
        pytest.skip("ptrace is not permitted here")
    assert result.returncode == 0, result.stderr
    calls = [
        line
        for line in trace.read_text().splitlines()
        if str(tmp_path) in line or re.search(r"\bfsync\(|\bwrite\(", line)
    ]
    text = "\n".join(calls)
    open_match = re.search(r'openat\(.*\.state\.json\.\w+\.tmp".*O_EXCL.*= (\d+)', text)
    assert open_match, text
    fd = open_match.group(1)
    order = [
        r"openat\(.*\.state\.json\..*O_EXCL",
        rf"write\({fd},",
        rf"fsync\({fd}\)",
        r"rename\(.*\.tmp\", \".*state\.json\"",
        rf"openat\(.*\"{re.escape(str(tmp_path))}\", O_RDONLY.*O_DIRECTORY",
        r"fsync\(\d+\)",
    ]
    position = 0
    for pattern in order:
        match = re.compile(pattern).search(text, position)
        assert match, f"{pattern!r} not found after position {position} in\n{text}"
        position = match.end()


def test_create_file_refuses_an_existing_name_and_fsync_all_syncs_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fds = [create_file(tmp_path / f"f{index}", b"data %d" % index, 0o600) for index in range(5)]
    with pytest.raises(FileExistsError):
        create_file(tmp_path / "f0", b"again")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    try:
        fsync_all(fds)
    finally:
        for fd in fds:
            os.close(fd)
    assert sorted(synced) == sorted(fds)
    assert (tmp_path / "f3").read_bytes() == b"data 3"
    assert (tmp_path / "f3").stat().st_mode & 0o777 == 0o600


def test_fsync_all_reports_a_failure_after_trying_every_descriptor_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fds = [create_file(tmp_path / f"f{index}", b"x") for index in range(4)]
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if fd == fds[1]:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    try:
        with pytest.raises(DurabilityError):
            fsync_all(fds)
    finally:
        for fd in fds:
            os.close(fd)  # fsync_all closes nothing: each is still open here
    assert sorted(calls) == sorted(fds)  # none retried


def test_start_writeback_is_only_a_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(atomic, "_sync_file_range", None)  # not Linux/glibc
    write_new_file(tmp_path / "a", b"content")
    assert (tmp_path / "a").read_bytes() == b"content"
