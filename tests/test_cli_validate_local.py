"""``dpd submit`` validates the job file with the daemon's validator before sending: every
field error printed as ``field: message``, exit status 1, no traceback, no daemon needed;
YAML 1.2 numbers reach the daemon (and the job) as numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from dpd.cli.validate_local import check_job_file
from tests.daemon_harness import DaemonProcess
from tests.jobfiles import job_document
from tests.test_cli_remote import dpd
from tests.test_client import start_daemon

INVALID_YAML = """\
model_type: sdxl
priority: lots
config:
  epochs: -1
  optimizer: {type: adamw_optimi, lr: 5e-5}
  model: {checkpoint_path: relative/model.safetensors, dtype: bfloat16}
dataset:
  resolutions: [512]
  directories: [{path: /nowhere/cats, num_repeats: 1}]
"""


def test_an_invalid_file_lists_every_field_error_without_a_daemon(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(INVALID_YAML)
    refused = dpd(None, "submit", str(job))  # no daemon listens: nothing is sent
    assert refused.returncode == EXIT_FAILURE, refused.stderr
    assert "Traceback" not in refused.stderr
    lines = refused.stderr.splitlines()
    assert lines[0].startswith("dpd: error 422: ")
    assert sorted(lines[1:]) == sorted(
        [
            "priority: expected an integer, got 'lots'",
            "config.epochs: must be >= 1, got -1",
            "config.model.checkpoint_path: must be an absolute path, got "
            "'relative/model.safetensors'",
            "config.save: one of save_every_n_epochs, save_every_n_steps, "
            "save_every_n_examples is required",
        ]
    )
    as_json = dpd(None, "submit", str(job), "--json")
    assert as_json.returncode == EXIT_FAILURE
    assert len(json.loads(as_json.stdout)["data"]["errors"]) == 4


def test_unreadable_files_exit_2_without_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_type: [unclosed")
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines))
    for path in (broken, bomb, tmp_path / "absent.yaml", tmp_path):
        result = dpd(None, "submit", str(path))
        assert result.returncode == EXIT_USAGE, (path, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith("dpd: ")


def test_the_local_check_needs_no_file_system_but_checks_path_form(tmp_path: Path) -> None:
    doc = job_document(tmp_path / "not-created")  # valid in form, absent on this machine
    checked = check_job_file("job.json", json.dumps(doc).encode())
    assert checked.errors == () and checked.unreadable is None
    assert checked.document == doc
    doc["dataset"]["directories"][0]["path"] = "cats\x00"
    bad = check_job_file("job.json", json.dumps(doc).encode())
    assert [e.field for e in bad.errors] == ["dataset.directories[0].path"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    running = start_daemon(tmp_path_factory.mktemp("submit"))
    yield running
    running.stop(signal.SIGTERM)


def test_scientific_notation_in_yaml_reaches_the_job_as_numbers(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    doc = job_document(daemon.data, task_id="sci-yaml")
    doc["config"]["optimizer"] = {"type": "adamw_optimi", "lr": "LR", "eps": "EPS"}
    text = json.dumps(doc).replace('"LR"', "5e-5").replace('"EPS"', "1E-8")
    job = tmp_path / "job.yaml"
    job.write_text(text)  # JSON written with exponents, read as YAML
    result = dpd(daemon, "submit", str(job), "--queue")
    assert result.returncode == EXIT_OK, result.stderr
    shown = dpd(daemon, "show", "sci-yaml", "--json")
    optimizer = json.loads(shown.stdout)["config"]["optimizer"]
    assert optimizer["lr"] == 5e-5 and optimizer["eps"] == 1e-8


def test_standard_input_is_checked_too(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPD_")}
    refused = subprocess.run(
        [sys.executable, "-m", "dpd", "submit", "-"], input=INVALID_YAML, capture_output=True,
        text=True, env=env, timeout=30,
    )  # fmt: skip
    assert refused.returncode == EXIT_FAILURE and "config.epochs: " in refused.stderr
