"""The job page's cache of series, markers and alerts (dpd.http.jobcache) against real
files: every answer equals what a plain scan of the files gives now, after appends, a torn
last line, a resume, a file replaced (rotated), cut or rewritten, and eviction."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dpd.http.jobcache import JobCache, marker_lines
from dpd.http.routes.job_dashboard import read_records
from dpd.jobs import series
from dpd.spool import layout as names
from dpd.spool.appendscan import AppendScan
from dpd.spool.jsontail import field_bytes, record_bytes


def step_records(first: int, last: int, metric: str = "loss", run: int = 1) -> list[dict[str, Any]]:
    return [
        {"type": "step", "metric": metric, "step": s, "epoch": 1 + s // 100,
         "value": 1.0 / s + run, "timestamp": f"2026-12-07T00:{s // 60 % 60:02d}:00.000Z",
         "offset": s}
        for s in range(first, last + 1)
    ]  # fmt: skip


def append(path: Path, records: list[dict[str, Any]], torn: bytes = b"") -> None:
    with open(path, "ab") as handle:
        handle.write(b"".join(record_bytes(r) + b"\n" for r in records) + torn)


def scanned(job_dir: Path, kind: str, max_points: int) -> series.Thinned:
    """What the route answered before the cache: a plain scan of metrics.jsonl."""
    record_type, metric = series.SERIES[kind]
    needles = (field_bytes("type", record_type), field_bytes("metric", metric))
    records = [
        r
        for r in read_records(job_dir / names.METRICS_FILE, needles)
        if r.get("type") == record_type and r.get("metric") == metric
    ]
    return series.thin(records, max_points)


def scanned_resumes(job_dir: Path) -> list[dict[str, Any]]:
    events = read_records(job_dir / names.EVENTS_FILE, ())
    return series.resume_markers(e for e in events if e.get("type") in ("status", "progress"))


def event(seq: int, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "task_id": "t", "node": "n", "seq": seq, "timestamp": seq, "data": data}


def assert_fresh(cache: JobCache, job_dir: Path) -> None:
    for kind in ("step_loss", "lr", "epoch_loss"):
        for max_points in (2, 100, 100_000):
            assert cache.series(job_dir, kind, max_points) == scanned(job_dir, kind, max_points)


# ------------------------------------------------------------------ series


def test_appends_after_the_first_read_are_answered(tmp_path: Path) -> None:
    metrics = tmp_path / names.METRICS_FILE
    append(metrics, step_records(1, 500) + step_records(1, 500, "lr"))
    cache = JobCache()
    assert_fresh(cache, tmp_path)
    assert cache.series(tmp_path, "step_loss", 2000).total == 500
    append(metrics, step_records(501, 800), torn=b'{"type":"step","metric":"loss","st')
    assert cache.series(tmp_path, "step_loss", 2000).total == 800  # the torn line waits
    assert_fresh(cache, tmp_path)
    with open(metrics, "ab") as handle:  # the write in progress completes
        handle.write(b'ep":801,"epoch":9,"value":0.5,"timestamp":"x"}\n')
    answer = cache.series(tmp_path, "step_loss", 2000)
    assert answer.total == 801 and answer.points[-1] == {
        "step": 801, "value": 0.5, "epoch": 9, "t": "x"
    }  # fmt: skip
    assert_fresh(cache, tmp_path)


def test_a_resumed_run_appends_lower_steps_and_a_resume_marker(tmp_path: Path) -> None:
    metrics, events = tmp_path / names.METRICS_FILE, tmp_path / names.EVENTS_FILE
    append(events, [event(1, "status", {"status": "running"})])
    append(events, [event(2, "progress", {"current_step": s}) for s in (None, 100, 300)])
    append(metrics, step_records(1, 300))
    cache = JobCache()
    assert cache.marker_facts(tmp_path)[0] == []
    assert_fresh(cache, tmp_path)
    # stopped at 300, resumed from the checkpoint at step 200
    append(events, [event(6, "status", {"status": "stopped"}),
                    event(7, "status", {"status": "queued"}),
                    event(8, "status", {"status": "running"}),
                    event(9, "progress", {"current_step": None})])  # fmt: skip
    append(metrics, step_records(200, 400, run=2))
    resumes, _ = cache.marker_facts(tmp_path)
    assert resumes == [{"step": 300, "kind": "resume", "run": 2, "name": "run 2"}]
    assert resumes == scanned_resumes(tmp_path)
    assert cache.series(tmp_path, "step_loss", 100_000).total == 501
    assert_fresh(cache, tmp_path)


def test_a_replaced_cut_or_rewritten_file_is_read_again(tmp_path: Path) -> None:
    metrics = tmp_path / names.METRICS_FILE
    append(metrics, step_records(1, 1000))
    cache = JobCache()
    assert cache.series(tmp_path, "step_loss", 50).total == 1000
    # rotated: another file, longer, takes the name
    fresh = tmp_path / "metrics.new"
    append(fresh, step_records(1, 1200, run=7))
    os.replace(fresh, metrics)
    assert cache.series(tmp_path, "step_loss", 50).total == 1200
    assert_fresh(cache, tmp_path)
    # cut shorter in place
    cache.series(tmp_path, "step_loss", 50)
    with open(metrics, "r+b") as handle:
        handle.truncate(len(b"".join(record_bytes(r) + b"\n" for r in step_records(1, 10, run=7))))
    assert cache.series(tmp_path, "step_loss", 50).total == 10
    assert_fresh(cache, tmp_path)
    # rewritten in place, same inode, longer: the bytes before the old end changed
    with open(metrics, "r+b") as handle:
        handle.truncate(0)
        handle.write(b"".join(record_bytes(r) + b"\n" for r in step_records(1, 30, run=9)))
    assert cache.series(tmp_path, "step_loss", 100).points[0]["value"] == 10.0
    assert_fresh(cache, tmp_path)
    metrics.unlink()
    assert cache.series(tmp_path, "step_loss", 50).total == 0


def test_a_thinned_answer_is_kept_until_its_series_grows(tmp_path: Path) -> None:
    metrics = tmp_path / names.METRICS_FILE
    append(metrics, step_records(1, 5000))
    cache = JobCache()
    first = cache.series(tmp_path, "step_loss", 100)
    assert cache.series(tmp_path, "step_loss", 100) is first
    append(metrics, step_records(5001, 5001))
    assert cache.series(tmp_path, "step_loss", 100).points[-1]["step"] == 5001


def test_entries_beyond_the_memory_bound_are_dropped_and_read_again(tmp_path: Path) -> None:
    dirs = [tmp_path / f"job{n}" for n in range(3)]
    for number, job_dir in enumerate(dirs):
        job_dir.mkdir()
        append(job_dir / names.METRICS_FILE, step_records(1, 1000, run=number))
    cache = JobCache(max_bytes=50_000)  # about one job of 1000 points
    for job_dir in dirs + dirs:
        assert cache.series(job_dir, "step_loss", 100) == scanned(job_dir, "step_loss", 100)
        assert len(cache) <= 2
    append(dirs[0] / names.METRICS_FILE, step_records(1001, 1100))
    assert cache.series(dirs[0], "step_loss", 100).total == 1100
    few = JobCache(max_jobs=2)
    for job_dir in dirs:
        few.alert_events(job_dir)
    assert len(few) == 2


def test_alerts_appended_after_the_first_read_are_listed(tmp_path: Path) -> None:
    events = tmp_path / names.EVENTS_FILE
    cache = JobCache()
    assert cache.alert_events(tmp_path) == []
    alert = event(1, "alert", {"kind": "nan_loss", "message": "NaN", "step": 3, "value": None})
    append(events, [event(0, "log", {"lines": ['"type":"alert"']}), alert])
    assert cache.alert_events(tmp_path) == [alert]
    append(events, [event(2, "alert", {"kind": "stalled"})])
    assert [a["seq"] for a in cache.alert_events(tmp_path)] == [1, 2]


# ------------------------------------------------------------------ pure parts


FLOATS = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.booleans()
)
RECORDS = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "step": st.one_of(st.integers(0, 10**6), st.none()),
            "epoch": st.one_of(st.integers(1, 9), st.none()),
            "value": FLOATS,
            "timestamp": st.sampled_from(["a", "b", None]),
        },
    ),
    max_size=60,
)


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=200, deadline=None)
@given(RECORDS, st.integers(2, 70))
def test_columns_thin_as_the_records_do(records: list[dict[str, Any]], max_points: int) -> None:
    columns = series.Columns()
    columns.extend(records[: len(records) // 2])
    for record in records[len(records) // 2 :]:
        columns.append(record)
    got, want = series.thin_columns(columns, max_points), series.thin(records, max_points)
    assert (got.thinned, got.total) == (want.thinned, want.total)
    for a, b in zip(got.points, want.points, strict=True):
        assert same(a, b) or all(
            a[k] == b[k] or (isinstance(a[k], float) and math.isclose(a[k], b[k])) for k in b
        ), (a, b)


STEPS = st.one_of(st.none(), st.integers(0, 500))
EVENTS = st.lists(
    st.one_of(
        st.builds(lambda s: ("progress", {"current_step": s}), STEPS),
        st.builds(lambda s: ("progress", {"phase": s}), st.text(max_size=3)),
        st.builds(lambda s: ("status", {"status": s}), st.sampled_from(["running", "stopped"])),
        st.builds(lambda s: ("log", {"lines": [s]}), st.text(max_size=5)),
        st.just(("alert", {"kind": "stalled"})),
        # a type named deeper in a line is not the event's
        st.builds(lambda s: ("note", {"type": "progress", "current_step": s}), STEPS),
        st.just(("note", {"type": "status", "data": {"status": "running"}})),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(EVENTS, st.integers(1, 5))
def test_marker_lines_keep_what_the_markers_need(kinds: list[Any], blocks: int) -> None:
    lines = [record_bytes(event(n, kind, data)) for n, (kind, data) in enumerate(kinds)]
    fold = series.ResumeFold()
    size = max(1, len(lines) // blocks)
    for start in range(0, len(lines), size):
        for line in marker_lines(b"\n".join(lines[start : start + size])):
            fold.add(json.loads(line))
    events = [json.loads(line) for line in lines]
    assert fold.found == series.resume_markers(
        e for e in events if e["type"] in ("status", "progress")
    )


def test_only_a_records_own_type_makes_it_a_status_or_progress_event() -> None:
    kinds = [
        ("status", {"status": "running"}),
        ("progress", {"current_step": 40}),
        ("note", {"type": "progress", "current_step": 99}),
        ("note", {"type": "status", "status": "running"}),
        ("status", {"status": "running"}),
    ]
    block = b"\n".join(record_bytes(event(n, k, d)) for n, (k, d) in enumerate(kinds))
    fold = series.ResumeFold()
    for line in marker_lines(block):
        fold.add(json.loads(line))
    assert fold.found == [{"step": 40, "kind": "resume", "run": 2, "name": "run 2"}]


def test_a_scan_reads_only_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    seen: list[Any] = []
    scan = AppendScan(path, seen.extend, seen.clear)
    assert scan.refresh() is False
    append(path, [{"n": 1}, {"n": 2}], torn=b'{"n":')
    assert scan.refresh() is True and seen == [{"n": 1}, {"n": 2}]
    assert scan.refresh() is False
    with open(path, "ab") as handle:
        handle.write(b'3}\nnot json\n{"n":4}\n')
    assert scan.refresh() is True and seen == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert scan.rereads == 0
