"""Group commit: several jobs made durable together (``JobStore.create_jobs``,
``ingest_files``), and what a crash at each step of it leaves behind."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpd.errors import Conflict
from dpd.jobs.dpconfig import ConfigRenderError
from dpd.jobs.spec import JobSpec, validate_job
from dpd.spool import jobdir
from dpd.spool import store as store_module
from dpd.spool.atomic import DurabilityError
from dpd.spool.ingest import Outcome, ingest_files
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission
from tests.jobfiles import job_document

JOB_FILES = ["config.toml", "dataset.toml", "events.jsonl", "job.json", "state.json"]


def spec_for(data_root: Path, **overrides: object) -> JobSpec:
    return validate_job(job_document(data_root, **overrides), data_roots=[data_root])


def drop(layout: SpoolLayout, name: str, data_root: Path, **overrides: object) -> None:
    path = layout.incoming / name
    path.write_text(json.dumps(job_document(data_root, **overrides)))
    old = path.stat().st_mtime - 10
    os.utime(path, (old, old))  # settled: not being written


def assert_complete(layout: SpoolLayout, task_id: str) -> dict:
    job_dir = layout.job_dir(task_id)
    assert sorted(os.listdir(job_dir)) == JOB_FILES
    state = json.loads((job_dir / "state.json").read_text())
    assert state["status"] == "queued" and state["task_id"] == task_id
    return state


# ------------------------------------------------------------------ create_jobs


def test_one_result_per_request_in_order(store: JobStore, data_root: Path) -> None:
    store.create_job(spec_for(data_root, task_id="old"), Submission("rest"))
    results = store.create_jobs(
        [
            (spec_for(data_root), Submission("rest")),
            (spec_for(data_root, task_id="a"), Submission("rest")),
            (spec_for(data_root, task_id="a", priority=3), Submission("rest")),
            (spec_for(data_root, task_id="old"), Submission("rest")),
            (spec_for(data_root, description="last"), Submission("rest")),
        ]
    )
    first, second, same_id, taken, last = results
    assert isinstance(first, dict) and first["task_id"].startswith("train_")
    assert isinstance(second, dict) and second["task_id"] == "a"
    assert isinstance(same_id, Conflict) and isinstance(taken, Conflict)
    assert isinstance(last, dict) and last["description"] == "last"
    assert store.get("a")["priority"] == 0
    for state in (first, second, last):
        assert_complete(store.layout, state["task_id"])
    assert [s["submitted_seq"] for s in (first, second, last)] == sorted(
        s["submitted_seq"] for s in (first, second, last)
    )
    assert len(store.task_ids()) == 4
    assert not [n for n in os.listdir(store.layout.jobs) if n.startswith(".")]


def test_a_config_that_cannot_render_refuses_only_its_job(store: JobStore, data_root: Path) -> None:
    good = spec_for(data_root, task_id="good")
    bad = dataclasses.replace(
        spec_for(data_root, task_id="bad"), config={**good.config, "lr": float("nan")}
    )
    refused, accepted = store.create_jobs([(bad, Submission("rest")), (good, Submission("rest"))])
    assert isinstance(refused, ConfigRenderError)
    assert isinstance(accepted, dict)
    assert sorted(os.listdir(store.layout.jobs)) == ["good"]


def test_a_generated_id_taken_by_a_stray_directory_takes_the_next_number(
    store: JobStore, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stray = store.layout.jobs / "train_taken"
    stray.mkdir()
    (stray / "something").write_text("not ours")
    ids: Iterator[str] = iter(["train_taken", "train_free"])
    monkeypatch.setattr(store, "_generate_id", lambda: next(ids))
    (result,) = store.create_jobs([(spec_for(data_root), Submission("rest"))])
    assert isinstance(result, dict) and result["task_id"] == "train_free"
    assert (
        json.loads((store.layout.job_dir("train_free") / "job.json").read_text())["spec"]["task_id"]
        == "train_free"
    )
    assert os.listdir(stray) == ["something"]


def test_a_batch_shares_its_fsyncs(
    store: JobStore, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: every file and directory of the batch synced in one call, then one
    fsync of jobs/ for all the renames."""
    synced: list[int] = []
    dir_syncs: list[Path] = []
    real_fsync_all, real_fsync_dir = jobdir.fsync_all, store_module.fsync_dir
    monkeypatch.setattr(
        jobdir, "fsync_all", lambda fds: (synced.append(len(fds)), real_fsync_all(fds))
    )
    monkeypatch.setattr(
        store_module, "fsync_dir", lambda path: (dir_syncs.append(Path(path)), real_fsync_dir(path))
    )
    results = store.create_jobs([(spec_for(data_root), Submission("rest")) for _ in range(5)])
    assert all(isinstance(r, dict) for r in results)
    assert synced == [5 * (len(JOB_FILES) + 1)]  # five files and the directory, per job
    assert dir_syncs == [store.layout.jobs]


def test_a_failed_fsync_fails_the_whole_batch_and_leaves_nothing(
    store: JobStore, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fds: list[int]) -> None:
        raise DurabilityError(5, "fsync failed: Input/output error")

    monkeypatch.setattr(jobdir, "fsync_all", failing)
    with pytest.raises(DurabilityError):
        store.create_jobs([(spec_for(data_root), Submission("rest")) for _ in range(3)])
    assert os.listdir(store.layout.jobs) == []
    assert store.task_ids() == []


# ------------------------------------------------------------------ ingest_files


def test_a_batch_of_files_becomes_jobs_and_leaves_incoming(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    for index in range(4):
        drop(layout, f"job{index}.json", data_root, description=f"drop {index}")
    (layout.incoming / "broken.json").write_text("{")
    os.utime(layout.incoming / "broken.json", (0, 0))
    drop(layout, "dup.json", data_root, task_id="job-x")
    drop(layout, "dup2.json", data_root, task_id="job-x")
    names = ["job0.json", "broken.json", "job1.json", "dup.json", "job2.json", "dup2.json"]
    names += ["gone.json", "job3.json", "job0.json"]
    results = ingest_files(layout, store, names, [data_root])
    assert [r.name for r in results] == names
    outcomes = {r.name: r.outcome for r in results}
    assert outcomes == {
        "job0.json": Outcome.ACCEPTED,
        "job1.json": Outcome.ACCEPTED,
        "job2.json": Outcome.ACCEPTED,
        "job3.json": Outcome.ACCEPTED,
        "dup.json": Outcome.ACCEPTED,
        "dup2.json": Outcome.REJECTED,
        "broken.json": Outcome.REJECTED,
        "gone.json": Outcome.GONE,
    }
    assert results[0] == results[-1]  # a name given twice is one job
    assert os.listdir(layout.incoming) == []
    descriptions = sorted(store.get(t)["description"] for t in store.task_ids())
    assert descriptions == sorted([f"drop {i}" for i in range(4)] + ["cats LoRA"])
    assert json.loads((layout.rejected / "dup2.json.error.json").read_text())["code"] == 409


def test_files_of_a_batch_already_accepted_are_only_removed(
    layout: SpoolLayout,
    store: JobStore,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for index in range(3):
        drop(layout, f"job{index}.json", data_root)
    monkeypatch.setattr("dpd.spool.ingest._remove_drops", lambda layout, names: None)
    ingest_files(layout, store, ["job0.json", "job1.json"], [data_root])  # "crash" here
    monkeypatch.undo()
    restarted = JobStore(layout, tmp_path / "outputs", "n")
    assert len(restarted.load()) == 2
    results = ingest_files(layout, restarted, ["job0.json", "job1.json", "job2.json"], [data_root])
    assert [r.outcome for r in results] == [
        Outcome.ALREADY_ACCEPTED,
        Outcome.ALREADY_ACCEPTED,
        Outcome.ACCEPTED,
    ]
    assert len(restarted.task_ids()) == 3
    assert os.listdir(layout.incoming) == []


# ------------------------------------------------------------------ crashes

# Each fault point SIGKILLs the ingesting process the n-th time it is reached.
CHILD = """
import os, signal, sys
from pathlib import Path
from dpd.spool import ingest, jobdir, store
from dpd.spool.layout import SpoolLayout

layout = SpoolLayout(Path(sys.argv[1]))
job_store = store.JobStore(layout, Path(sys.argv[2]), "child")
job_store.load()
target, count = sys.argv[3], int(sys.argv[4])
module_name, *path = target.split(".")
owner = {"jobdir": jobdir, "store": store, "ingest": ingest, "os": os}[module_name]
for attribute in path[:-1]:
    owner = getattr(owner, attribute)
real = getattr(owner, path[-1])
seen = [0]

def wrapper(*args, **kwargs):
    seen[0] += 1
    if seen[0] == count:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(owner, path[-1], wrapper)
names = sorted(n for n in os.listdir(layout.incoming) if not n.startswith("."))
ingest.ingest_files(layout, job_store, names, [Path(sys.argv[5])])
"""

FAULT_POINTS = [
    ("jobdir.create_file", 8),  # second job half written
    ("jobdir.fsync_all", 1),  # every directory written, nothing synced
    ("jobdir.JobDirBuild.place", 3),  # two of four renamed, jobs/ not synced
    ("store.fsync_dir", 1),  # all renamed, jobs/ not synced
    ("ingest._remove_drops", 1),  # jobs durable, no file removed
    ("os.unlink", 3),  # two files removed, incoming/ not synced
    ("ingest.fsync_dir", 1),  # all removed, incoming/ not synced
]


@pytest.mark.crash
@pytest.mark.parametrize(("point", "count"), FAULT_POINTS)
def test_a_crash_anywhere_in_a_batch_loses_nothing_and_duplicates_nothing(
    layout: SpoolLayout, data_root: Path, tmp_path: Path, point: str, count: int
) -> None:
    for index in range(4):
        drop(layout, f"job{index}.json", data_root, description=f"drop {index}")
    arguments = [str(layout.root), str(tmp_path / "outputs"), point, str(count), str(data_root)]
    process = subprocess.run(
        [sys.executable, "-c", CHILD, *arguments],
        capture_output=True,
        check=False,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()
    restarted = JobStore(layout, tmp_path / "outputs", "n")
    restarted.load()
    assert not [n for n in os.listdir(layout.jobs) if n.startswith(".")]
    names = sorted(os.listdir(layout.incoming))
    results = ingest_files(layout, restarted, names, [data_root])
    assert all(r.outcome in (Outcome.ACCEPTED, Outcome.ALREADY_ACCEPTED) for r in results)
    assert os.listdir(layout.incoming) == []
    descriptions = sorted(restarted.get(t)["description"] for t in restarted.task_ids())
    assert descriptions == [f"drop {i}" for i in range(4)]
    assert sorted(os.listdir(layout.jobs)) == sorted(restarted.task_ids())
    for task_id in restarted.task_ids():
        assert_complete(layout, task_id)


# ------------------------------------------------------------------ system calls

STRACE_CHILD = """
import sys
from pathlib import Path
from dpd.spool.ingest import ingest_files
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore
layout = SpoolLayout(Path(sys.argv[1]))
store = JobStore(layout, Path(sys.argv[2]), "child")
store.load()
results = ingest_files(layout, store, ["a.json", "b.json", "c.json"], [Path(sys.argv[3])])
assert all(r.outcome == "accepted" for r in results), results
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_batch_syscall_order(layout: SpoolLayout, data_root: Path, tmp_path: Path) -> None:
    """Every file and directory of the batch is fsynced before the first rename into jobs/;
    jobs/ is fsynced once, after the last rename and before the first file is removed;
    incoming/ is fsynced once, after the last removal."""
    for name in ("a.json", "b.json", "c.json"):
        drop(layout, name, data_root)
    trace = tmp_path / "trace"
    strace = ["strace", "-f", "-o", str(trace), "-e", "trace=openat,fsync,rename,unlink,close"]
    arguments = [str(layout.root), str(tmp_path / "outputs"), str(data_root)]
    result = subprocess.run(
        [*strace, sys.executable, "-c", STRACE_CHILD, *arguments],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0 and b"ptrace" in result.stderr:
        pytest.skip("ptrace is not permitted here")
    assert result.returncode == 0, result.stderr
    events = completed_calls(trace.read_text())
    jobs, incoming = str(layout.jobs), str(layout.incoming)
    renames = [i for i, (call, path) in enumerate(events) if call == "rename" and jobs in path]
    unlinks = [i for i, (call, path) in enumerate(events) if call == "unlink" and incoming in path]
    new_syncs = [i for i, (call, path) in enumerate(events) if call == "fsync" and "/.new-" in path]
    assert len(renames) == 3 and len(unlinks) == 3
    assert len(new_syncs) == 3 * (len(JOB_FILES) + 1)
    assert max(new_syncs) < min(renames)
    # (load() fsyncs jobs/ too, before the batch)
    (jobs_sync,) = [i for i, e in enumerate(events) if e == ("fsync", jobs) and i > min(renames)]
    assert max(renames) < jobs_sync < min(unlinks)
    (incoming_sync,) = [i for i, e in enumerate(events) if e == ("fsync", incoming)]
    assert max(unlinks) < incoming_sync


def completed_calls(trace: str) -> list[tuple[str, str]]:
    """(call, path) for each call in the order it returned, across threads; an fsync
    names the path its descriptor was opened with."""
    fd_paths: dict[str, str] = {}
    unfinished: dict[str, str] = {}
    events: list[tuple[str, str]] = []
    for line in trace.splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        resumed = re.match(r"<\.\.\. (\w+) resumed>(.*)", rest)
        if resumed:
            rest = unfinished.pop(pid, "") + resumed.group(2)
        elif rest.endswith("<unfinished ...>"):
            unfinished[pid] = rest.removesuffix("<unfinished ...>")
            continue
        call = re.match(r"(\w+)\((.*)\)\s+=\s+(-?\d+)", rest)
        if not call or int(call.group(3)) < 0:
            continue
        name, args, value = call.groups()
        if name == "openat":
            fd_paths[value] = re.search(r'"([^"]*)"', args).group(1)  # type: ignore[union-attr]
        elif name == "fsync":
            events.append(("fsync", fd_paths.get(args.strip(), "?")))
        elif name in ("rename", "unlink"):
            events.append((name, re.findall(r'"([^"]*)"', args)[-1]))
    return events
