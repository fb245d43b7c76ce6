"""What the kit hands dpd is what dpd accepts: its jobs pass dpd's validator, its dpd.toml
loads with dpd's configuration loader, its images are real PNGs; and every script parses."""

from __future__ import annotations

import py_compile
import struct
import subprocess
import tomllib
import zlib
from pathlib import Path

import pytest

from bench.gpu import jobs, media
from bench.gpu.daemon import Layout, TrainerSetup, dpd_config, toml_text
from dpd.config import load_config
from dpd.jobs.spec import validate_job

KIT = Path(__file__).resolve().parents[2] / "bench" / "gpu"


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    media.write_dataset(data / "datasets" / "squares", images=4, size=16)
    (data / "models" / "tiny-flux").mkdir(parents=True)
    return data


def test_the_lora_job_passes_dpds_validator(data_root: Path) -> None:
    plan = jobs.Plan(images=4, repeats=8, epochs=4)
    doc = jobs.lora_job(
        "conformance-lora",
        data_root / "models" / "tiny-flux",
        data_root / "datasets" / "squares",
        plan,
    )
    spec = validate_job(doc, data_roots=[data_root])
    assert spec.model_type == "flux" and spec.task_id == "conformance-lora"
    assert spec.config["epochs"] == 4 and spec.config["adapter"]["type"] == "lora"
    assert spec.dataset["directories"][0]["num_repeats"] == 8
    assert plan.steps_per_epoch == 32 and plan.total_steps == 128
    assert plan.steps_per_epoch < plan.stop_after < 2 * plan.steps_per_epoch


def test_the_impossible_job_is_accepted_by_dpd_and_asks_for_more_than_the_dataset(
    data_root: Path,
) -> None:
    plan = jobs.Plan(images=4)
    doc = jobs.impossible_job(
        "conformance-impossible",
        data_root / "models" / "tiny-flux",
        data_root / "datasets" / "squares",
        plan,
    )
    spec = validate_job(doc, data_roots=[data_root])
    assert spec.config["micro_batch_size_per_gpu"] > plan.images  # every bucket rounds to 0


def test_the_dpd_toml_loads_with_dpds_loader(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    trainer = TrainerSetup(
        tmp_path / "dp",
        "/usr/bin/python3 /x/deepspeed.py",
        {"NCCL_P2P_DISABLE": "1", "A": 'quote " and \\ slash'},
        45.0,
    )
    for backend in ("static", "nvml"):
        config = dpd_config(layout, 5123, trainer, backend, [29600, 29640])
        layout.config.write_text(toml_text(config))
        assert tomllib.loads(layout.config.read_text()) == config
        loaded = load_config(layout.config, environ={})
        assert loaded.trainer.deepspeed == trainer.deepspeed
        assert loaded.trainer.env == trainer.env
        assert loaded.trainer.stop_timeout == 45.0
        assert loaded.gpus.backend == backend
        assert loaded.http.port == 5123 and loaded.auth.enabled is False


def test_the_dataset_images_are_valid_pngs_with_captions(tmp_path: Path) -> None:
    images = media.write_dataset(tmp_path, images=3, size=8)
    assert [p.name for p in images] == ["image000.png", "image001.png", "image002.png"]
    data = images[1].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (8, 8)
    length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    rows = zlib.decompress(data[41 : 41 + length])
    assert len(rows) == 8 * (1 + 8 * 3)
    assert images[1].with_suffix(".txt").read_text().startswith("a green square")
    with pytest.raises(ValueError):
        media.png_bytes(2, 2, b"\x00" * 11)


def test_every_script_of_the_kit_parses(tmp_path: Path) -> None:
    shells = sorted(KIT.glob("*.sh"))
    assert {p.name for p in shells} >= {"conformance.sh", "build_wheelhouse.sh", "pins.sh"}
    for script in shells:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"
    sources = sorted(KIT.rglob("*.py"))
    assert len(sources) >= 9
    for source in sources:
        py_compile.compile(str(source), doraise=True, cfile=str(tmp_path / "x.pyc"))
