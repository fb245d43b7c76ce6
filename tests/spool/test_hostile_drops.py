"""Hostile drops: a name that is not UTF-8, a hard link, YAML the daemon must read as
YAML 1.2 (numbers), with dates, or built as an alias bomb. None may hold back another
file, none stays in incoming/ for ever, and each refusal leaves its reason in rejected/."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from dpd.spool import ingest
from dpd.spool.ingest import Outcome, ingest_file, ingest_files
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore
from tests.jobfiles import job_document
from tests.spool.test_ingest import drop, rejection


def drop_bytes_name(layout: SpoolLayout, raw_name: bytes, content: str) -> None:
    path = os.fsencode(layout.incoming) + b"/" + raw_name
    with open(path, "w") as handle:
        handle.write(content)
    os.utime(path, (1, 1))  # settled long ago


def test_names_that_are_not_utf8_are_rejected_and_hold_back_nothing(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    drop_bytes_name(layout, b"cats\xff.json", json.dumps(job_document(data_root)))
    drop_bytes_name(layout, b"\xc3(broken.yaml", "{not yaml: [")
    drop(layout, "good.json", json.dumps(job_document(data_root, task_id="good")))
    names = sorted(os.listdir(layout.incoming))
    results = {r.name: r for r in ingest_files(layout, store, names, [data_root])}
    assert results["good.json"].outcome is Outcome.ACCEPTED
    assert store.task_ids() == ["good"]
    assert os.listdir(layout.incoming) == []
    rejected = sorted(os.listdir(layout.rejected))
    assert rejected == [
        "\\xc3(broken.yaml",
        "\\xc3(broken.yaml.error.json",
        "cats\\xff.json",
        "cats\\xff.json.error.json",
    ]
    for name in ("cats\\xff.json", "\\xc3(broken.yaml"):
        envelope = rejection(layout, name)
        assert envelope["code"] == 400 and "not valid UTF-8" in envelope["message"]


def test_a_hard_link_is_refused_once_settled_and_the_other_link_is_kept(
    layout: SpoolLayout,
    store: JobStore,
    data_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = tmp_path / "mine.json"
    original.write_text(json.dumps(job_document(data_root)))
    os.link(original, layout.incoming / "linked.json")
    # Just linked: a writer may be about to unlink its temporary name.
    assert ingest_file(layout, store, "linked.json", [data_root]).outcome is Outcome.DEFERRED
    monkeypatch.setattr(ingest, "SETTLE_SECONDS", 0.0)  # the link has stood long enough
    with caplog.at_level(logging.WARNING, "dpd.spool"):
        result = ingest_file(layout, store, "linked.json", [data_root])
    assert result.outcome is Outcome.REJECTED
    envelope = rejection(layout, "linked.json")
    assert envelope["code"] == 400 and "exactly one link" in envelope["message"]
    assert "exactly one link" in caplog.text
    assert os.listdir(layout.incoming) == [] and store.task_ids() == []
    assert original.exists()


def test_yaml_drops_read_numbers_as_yaml_1_2_and_dates_as_strings(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    doc = job_document(data_root, task_id="sci")
    doc["config"]["optimizer"].pop("lr")
    text = json.dumps(doc)  # JSON is YAML; add the values as a user writes them
    yaml_text = (text[:-1] + ', "description": 2026-01-02}').replace(
        '"type": "adamw_optimi"', '"type": "adamw_optimi", "lr": 5e-5, "eps": 1E-8'
    )
    drop(layout, "sci.yaml", yaml_text)
    result = ingest_file(layout, store, "sci.yaml", [data_root])
    assert result.outcome is Outcome.ACCEPTED, result.error
    state = store.get("sci")
    assert state["config"]["optimizer"]["lr"] == 5e-5
    assert state["config"]["optimizer"]["eps"] == 1e-8
    assert state["description"] == "2026-01-02"


def test_a_yaml_alias_bomb_drop_is_rejected(
    layout: SpoolLayout, store: JobStore, data_root: Path
) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    drop(layout, "bomb.yaml", "\n".join(lines))
    assert ingest_file(layout, store, "bomb.yaml", [data_root]).outcome is Outcome.REJECTED
    envelope = rejection(layout, "bomb.yaml")
    assert envelope["code"] == 400 and "too large" in envelope["message"]
