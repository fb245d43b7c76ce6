"""``dpd serve`` end to end: files dropped like a user would, a real daemon process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.daemon_harness import DaemonProcess
from tests.jobfiles import job_document, make_data_root
from tests.waiting import wait_for


@pytest.fixture
def daemon(tmp_path: Path):
    process = DaemonProcess(tmp_path)
    make_data_root(process.data)
    yield process
    process.stop(signal.SIGKILL)


def queued(daemon: DaemonProcess, task_id: str) -> bool:
    state = daemon.job_state(task_id)
    return bool(state and state["status"] == "queued")


def test_dropped_json_and_yaml_become_queued_jobs(daemon: DaemonProcess) -> None:
    daemon.start()
    daemon.drop("a.json", job_document(daemon.data, task_id="job-a"))
    (daemon.incoming / ".b.tmp").write_text(
        yaml.safe_dump(job_document(daemon.data, task_id="job-b"))
    )
    (daemon.incoming / ".b.tmp").rename(daemon.incoming / "b.yml")
    wait_for(lambda: queued(daemon, "job-a") and queued(daemon, "job-b"))
    wait_for(lambda: os.listdir(daemon.incoming) == [])
    for task_id in ("job-a", "job-b"):
        job_dir = daemon.spool / "jobs" / task_id
        assert {"job.json", "state.json", "config.toml", "dataset.toml"} <= set(os.listdir(job_dir))
    assert daemon.stop() == 0


def test_bad_files_are_rejected_with_the_rest_envelope(daemon: DaemonProcess) -> None:
    daemon.start()
    daemon.drop("broken.json", "{ not json")
    invalid = job_document(daemon.data)
    invalid["config"]["optimizer"] = {"lr": "fast"}
    daemon.drop("invalid.json", invalid)
    daemon.drop("first.json", job_document(daemon.data, task_id="dup"))
    wait_for(lambda: queued(daemon, "dup"))
    daemon.drop("second.json", job_document(daemon.data, task_id="dup"))
    rejected = daemon.spool / "rejected"
    names = ("broken.json", "invalid.json", "second.json")
    # The error file is written before the drop is moved beside it: once a rejected file is
    # there, its reason is too.
    wait_for(lambda: all((rejected / n).exists() for n in names))
    assert all((rejected / f"{n}.error.json").exists() for n in names)
    codes = {n: json.loads((rejected / f"{n}.error.json").read_text())["code"] for n in names}
    assert codes == {"broken.json": 400, "invalid.json": 422, "second.json": 409}
    fields = {
        e["field"]
        for e in json.loads((rejected / "invalid.json.error.json").read_text())["data"]["errors"]
    }
    assert "config.optimizer.type" in fields and "config.optimizer.lr" in fields
    assert daemon.job_ids() == ["dup"]


def test_dot_files_and_partial_names_are_ignored(daemon: DaemonProcess) -> None:
    daemon.start()
    for name in (".hidden.json", "x.json.tmp", "x.json.part", "notes.txt"):
        (daemon.incoming / name).write_text(json.dumps(job_document(daemon.data)))
    daemon.drop("real.json", job_document(daemon.data, task_id="real"))
    # the file goes only after its job is durable: wait for both
    wait_for(lambda: queued(daemon, "real") and not (daemon.incoming / "real.json").exists())
    assert sorted(os.listdir(daemon.incoming)) == [
        ".hidden.json",
        "notes.txt",
        "x.json.part",
        "x.json.tmp",
    ]
    assert daemon.job_ids() == ["real"]


def test_slow_writer_is_never_half_read(daemon: DaemonProcess) -> None:
    daemon.start()
    text = json.dumps(job_document(daemon.data, task_id="slow"))
    with (daemon.incoming / "slow.json").open("w") as writer:
        for start in range(0, len(text), 40):
            writer.write(text[start : start + 40])
            writer.flush()
            time.sleep(0.03)
    wait_for(lambda: queued(daemon, "slow"))
    assert not (daemon.spool / "rejected" / "slow.json").exists()


def test_files_present_before_start_are_ingested(daemon: DaemonProcess) -> None:
    daemon.incoming.mkdir(parents=True)
    for index in range(3):
        path = daemon.incoming / f"early{index}.json"
        path.write_text(json.dumps(job_document(daemon.data, task_id=f"early{index}")))
        os.utime(path, (time.time() - 60, time.time() - 60))
    daemon.start()
    wait_for(lambda: all(queued(daemon, f"early{i}") for i in range(3)))


@pytest.mark.crash
def test_kill_9_during_ingestion_loses_nothing_and_duplicates_nothing(
    daemon: DaemonProcess,
) -> None:
    daemon.start()
    count = 60
    for index in range(count):
        daemon.drop(f"job{index:03d}.json", job_document(daemon.data, description=f"drop {index}"))
    wait_for(lambda: len(os.listdir(daemon.incoming)) < count, interval=0.002)  # under way
    daemon.kill9()
    daemon.start()
    wait_for(lambda: os.listdir(daemon.incoming) == [], timeout=20)
    descriptions = sorted(daemon.job_state(t)["description"] for t in daemon.job_ids())
    assert descriptions == sorted(f"drop {i}" for i in range(count))
    assert not [n for n in os.listdir(daemon.spool / "jobs") if n.startswith(".")]
    assert os.listdir(daemon.spool / "rejected") == []


def test_sigterm_stops_cleanly_and_a_restart_keeps_jobs(daemon: DaemonProcess) -> None:
    daemon.start()
    daemon.drop("keep.json", job_document(daemon.data, task_id="keep"))
    wait_for(lambda: queued(daemon, "keep"))
    assert daemon.stop(signal.SIGTERM) == 0
    assert "stopped" in daemon.log()
    daemon.start()
    assert daemon.job_ids() == ["keep"]


def status_events(daemon: DaemonProcess, task_id: str) -> list[dict]:
    path = daemon.spool / "jobs" / task_id / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e["type"] == "status"]


def test_a_status_the_crash_left_unannounced_is_announced_once_at_start(
    daemon: DaemonProcess,
) -> None:
    """kill -9 between the durable state write and the event's append: the restarted
    daemon announces the status state.json holds, so subscribers don't wait forever."""
    daemon.start()
    daemon.drop("quiet.json", job_document(daemon.data, task_id="quiet"))
    wait_for(lambda: queued(daemon, "quiet"))
    daemon.kill9()
    state_path = daemon.spool / "jobs" / "quiet" / "state.json"
    state = json.loads(state_path.read_text())
    state.update(status="stopped", stopped_at=state["updated_at"])
    state_path.write_text(json.dumps(state))  # what the crash left: state ahead of events
    assert [e["data"]["status"] for e in status_events(daemon, "quiet")] == ["queued"]

    daemon.start()
    events = wait_for(
        lambda: len(status_events(daemon, "quiet")) == 2 and status_events(daemon, "quiet")
    )
    assert events[1]["data"] == {"status": "stopped", "previous": "queued", "recovered": True}
    assert events[1]["seq"] == events[0]["seq"] + 1
    assert daemon.stop(signal.SIGTERM) == 0
    daemon.start()  # announced once: a second start finds events and state agreeing
    assert len(status_events(daemon, "quiet")) == 2


def test_bad_configuration_stops_start_up_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "dpd.toml"
    config.write_text("[http]\nport = 'x'\n")
    result = subprocess.run(
        [sys.executable, "-m", "dpd", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        "dpd: configuration error: [http] port: expected an integer, got 'x'"
    ]


def test_journal_format_when_under_systemd(daemon: DaemonProcess) -> None:
    daemon.env["JOURNAL_STREAM"] = "8:12345"
    daemon.start()
    daemon.stop()
    lines = [line for line in daemon.log().splitlines() if line]
    assert lines and all(line.startswith("<") and line[2] == ">" for line in lines)
    assert any(line.startswith("<6>INFO dpd.daemon: dpd ready") for line in lines)
