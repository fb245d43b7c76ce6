from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from dpd.spool.ingest import Outcome, ingest_file
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore
from tests.jobfiles import job_document


def drop(layout: SpoolLayout, name: str, content: str | bytes, age: float = 10.0) -> Path:
    path = layout.incoming / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    old = path.stat().st_mtime - age
    os.utime(path, (old, old))  # settled: not being written
    return path


def rejection(layout: SpoolLayout, name: str) -> dict:
    return json.loads((layout.rejected / f"{name}.error.json").read_text())


def test_valid_json_becomes_a_job_and_leaves_incoming(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    drop(layout, "cats.json", json.dumps(job_document(data_root)))
    result = ingest_file(layout, store, "cats.json", [data_root])
    assert result.outcome is Outcome.ACCEPTED
    assert os.listdir(layout.incoming) == []
    job_dir = layout.job_dir(result.task_id)
    assert json.loads((job_dir / "state.json").read_text())["status"] == "queued"
    assert json.loads((job_dir / "job.json").read_text())["submission"]["name"] == "cats.json"


def test_a_drop_waits_in_incoming_while_the_spool_is_short_of_room(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    drop(layout, "cats.json", json.dumps(job_document(data_root, task_id="cats")))
    store.min_free = shutil.disk_usage(layout.root).free + 2**40
    result = ingest_file(layout, store, "cats.json", [data_root])
    assert result.outcome is Outcome.NO_ROOM
    assert os.listdir(layout.incoming) == ["cats.json"]
    assert os.listdir(layout.rejected) == [] and store.task_ids() == []
    store.min_free = 0  # room again: the next scan takes it
    assert ingest_file(layout, store, "cats.json", [data_root]).outcome is Outcome.ACCEPTED
    assert os.listdir(layout.incoming) == [] and store.task_ids() == ["cats"]


def test_valid_yaml_becomes_a_job(layout: SpoolLayout, store: JobStore, data_root: Path) -> None:
    drop(layout, "cats.yaml", yaml.safe_dump(job_document(data_root, task_id="yaml-job")))
    result = ingest_file(layout, store, "cats.yaml", [data_root])
    assert result.outcome is Outcome.ACCEPTED and result.task_id == "yaml-job"


def test_malformed_file_is_rejected_with_a_400_envelope(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    drop(layout, "broken.json", '{"model_type": "sdxl",')
    result = ingest_file(layout, store, "broken.json", [data_root])
    assert result.outcome is Outcome.REJECTED
    envelope = rejection(layout, "broken.json")
    assert envelope["code"] == 400 and set(envelope) == {"code", "message", "data", "timestamp"}
    assert (layout.rejected / "broken.json").exists()
    assert store.task_ids() == []


def test_invalid_job_lists_every_problem_with_422(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    doc = job_document(data_root)
    doc["model_type"] = "no-such-model"
    doc["config"]["epochs"] = "many"
    doc["dataset"]["directories"][0]["path"] = "/etc"
    drop(layout, "bad.json", json.dumps(doc))
    assert ingest_file(layout, store, "bad.json", [data_root]).outcome is Outcome.REJECTED
    envelope = rejection(layout, "bad.json")
    assert envelope["code"] == 422
    fields = {e["field"] for e in envelope["data"]["errors"]}
    assert {"model_type", "config.epochs", "dataset.directories[0].path"} <= fields
    assert store.task_ids() == []


def test_duplicate_task_id_is_a_conflict(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    drop(layout, "a.json", json.dumps(job_document(data_root, task_id="same")))
    drop(layout, "b.json", json.dumps(job_document(data_root, task_id="same", priority=3)))
    assert ingest_file(layout, store, "a.json", [data_root]).outcome is Outcome.ACCEPTED
    assert ingest_file(layout, store, "b.json", [data_root]).outcome is Outcome.REJECTED
    assert rejection(layout, "b.json")["code"] == 409
    assert store.get("same")["priority"] == 0


class Crash(BaseException):
    pass


def test_crash_between_job_durable_and_file_removed_gives_one_job(
    layout: SpoolLayout,
    store: JobStore,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drop(layout, "cats.json", json.dumps(job_document(data_root)))

    def crash(*args: object) -> None:
        raise Crash()

    monkeypatch.setattr("dpd.spool.ingest._remove_drops", crash)
    with pytest.raises(Crash):
        ingest_file(layout, store, "cats.json", [data_root])
    monkeypatch.undo()
    assert (layout.incoming / "cats.json").exists()
    restarted = JobStore(layout, tmp_path / "outputs", "n")
    (task_id,) = restarted.load()
    result = ingest_file(layout, restarted, "cats.json", [data_root])
    assert result.outcome is Outcome.ALREADY_ACCEPTED and result.task_id == task_id
    assert restarted.task_ids() == [task_id]
    assert os.listdir(layout.incoming) == []


def test_a_new_drop_of_identical_content_is_a_new_job(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    text = json.dumps(job_document(data_root))
    drop(layout, "cats.json", text)
    first = ingest_file(layout, store, "cats.json", [data_root])
    drop(layout, "cats.json", text, age=5)
    second = ingest_file(layout, store, "cats.json", [data_root])
    assert first.outcome is second.outcome is Outcome.ACCEPTED
    assert first.task_id != second.task_id


def test_symlink_and_special_files_are_rejected(
    layout: SpoolLayout, store: JobStore, data_root: Path, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(job_document(data_root)))
    (layout.incoming / "link.json").symlink_to(target)
    assert ingest_file(layout, store, "link.json", [data_root]).outcome is Outcome.REJECTED
    assert "symbolic link" in rejection(layout, "link.json")["message"]
    os.mkfifo(layout.incoming / "pipe.json")
    assert ingest_file(layout, store, "pipe.json", [data_root]).outcome is Outcome.REJECTED
    assert store.task_ids() == []


def test_oversize_file_is_rejected(layout: SpoolLayout, store: JobStore, data_root: Path) -> None:
    drop(layout, "huge.json", b" " * (1 << 20 + 1) + b"{}")
    assert ingest_file(layout, store, "huge.json", [data_root]).outcome is Outcome.REJECTED
    assert rejection(layout, "huge.json")["code"] == 413


def test_file_still_open_for_writing_is_deferred(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    text = json.dumps(job_document(data_root))
    with (layout.incoming / "slow.json").open("w") as writer:
        writer.write(text[:20])
        writer.flush()
        assert ingest_file(layout, store, "slow.json", [data_root]).outcome is Outcome.DEFERRED
        writer.write(text[20:])
    assert ingest_file(layout, store, "slow.json", [data_root]).outcome is Outcome.ACCEPTED


def test_recently_changed_unparseable_file_is_deferred_not_rejected(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    drop(layout, "fresh.json", '{"model_type": ', age=0)
    assert ingest_file(layout, store, "fresh.json", [data_root]).outcome is Outcome.DEFERRED
    assert (layout.incoming / "fresh.json").exists()


def test_vanished_file_is_gone(layout: SpoolLayout, store: JobStore, data_root: Path) -> None:
    assert ingest_file(layout, store, "nothing.json", [data_root]).outcome is Outcome.GONE


@pytest.mark.parametrize("name", ["x.json", "x.json.1"])
def test_rejections_never_overwrite_each_other(
    layout: SpoolLayout, store: JobStore, data_root: Path, name: str
) -> None:
    for _ in range(2):
        drop(layout, "x.json", "not json")
        ingest_file(layout, store, "x.json", [data_root])
    assert (layout.rejected / name).exists()
    assert (layout.rejected / f"{name}.error.json").exists()
