"""config.toml / dataset.toml generation: golden files, every model type through the
stand-in trainer's acceptance rules, round trips and injection attempts."""

from __future__ import annotations

import copy
import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpd.jobs import dpconfig
from dpd.jobs.checker import KEY_RE
from dpd.jobs.dpconfig import (
    ConfigRenderError,
    dataset_config,
    main_config,
    render_configs,
    render_toml,
    same_values,
)
from dpd.jobs.model_rules import MODEL_TYPES
from dpd.jobs.spec import JobSpec, validate_job
from dpd.simulation.diffusion_pipe import simconfig
from tests.jobs.jobdocs import api_example, job_doc, make_dataset

GOLDEN = Path(__file__).parent / "golden"
OUT = Path("/srv/runs/task-1")
DATASET_TOML = Path("/var/spool/dpd/jobs/task-1/dataset.toml")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


def golden(name: str, root: Path) -> dict[str, Any]:
    text = (GOLDEN / name).read_text()
    for marker, value in (("@ROOT@", root), ("@OUT@", OUT), ("@DATASET@", DATASET_TOML)):
        text = text.replace(marker, str(value))
    return tomllib.loads(text)


def render(spec: JobSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    config_text, dataset_text = render_configs(spec, output_dir=OUT, dataset_toml=DATASET_TOML)
    return tomllib.loads(config_text), tomllib.loads(dataset_text)


# ------------------------------------------------------------------ golden files


def test_the_reference_minimal_wan_lora_config(root: Path) -> None:
    expected = golden("wan_minimal_config.toml", root)
    (root / "models" / "Wan2.1-T2V-1.3B").mkdir(parents=True)
    doc = job_doc(root, "wan")
    doc["config"] = {
        k: v for k, v in copy.deepcopy(expected).items() if k not in ("output_dir", "dataset")
    }
    del doc["config"]["model"]["type"]
    config, _ = render(validate_job(doc, data_roots=[root]))
    assert same_values(config, expected), (config, expected)
    assert list(config)[:2] == ["output_dir", "dataset"]


def test_the_api_document_request(root: Path) -> None:
    spec = validate_job(api_example(root), data_roots=[root])
    config, dataset = render(spec)
    assert same_values(config, golden("api_3_1_config.toml", root)), config
    assert same_values(dataset, golden("api_3_1_dataset.toml", root)), dataset


# ------------------------------------------------------------------ accepted by train.py


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_model_type_passes_the_trainers_config_checks(root: Path, model_type: str) -> None:
    """The stand-in trainer raises the real train.py's errors for the checks of reference §7.1."""
    config, dataset = render(validate_job(job_doc(root, model_type), data_roots=[root]))
    assert config["model"]["type"] == model_type
    assert config["output_dir"] == str(OUT) and config["dataset"] == str(DATASET_TOML)
    simconfig.set_config_defaults(config)
    simconfig.check_model(config)
    simconfig.check_activation_checkpointing(config)
    simconfig.check_lr_scheduler(config)
    specs = simconfig.directory_specs(dataset)
    assert not simconfig.too_many_resolutions(specs)
    assert [s.path for s in specs] == [d["path"] for d in dataset["directory"]]


def test_dataset_toml_layout(root: Path) -> None:
    doc = job_doc(root)
    second = make_dataset(root, "second")
    doc["dataset"]["caption_prefix"] = "photo of sks, "
    doc["dataset"]["directories"].append(
        {"path_id": str(second), "num_repeats": 2.5, "resolutions": [[640, 480]]}
    )
    _, dataset = render(validate_job(doc, data_roots=[root]))
    assert set(dataset) == {"resolutions", "caption_prefix", "directory"}
    assert dataset["directory"][1] == {
        "path": str(second),
        "num_repeats": 2.5,
        "resolutions": [[640, 480]],
    }
    assert "directories" not in dataset


def test_full_fine_tune_has_no_adapter_table(root: Path) -> None:
    doc = job_doc(root, "wan")
    del doc["config"]["adapter"]
    config, _ = render(validate_job(doc, data_roots=[root]))
    assert "adapter" not in config


def test_eval_datasets_and_text_encoders_become_arrays_of_tables(root: Path) -> None:
    eval_toml = root / "eval.toml"
    eval_toml.write_text("")
    doc = job_doc(root, "flux2")
    doc["config"]["eval_datasets"] = [{"name": "holdout", "config": str(eval_toml)}]
    config_text, _ = render_configs(
        validate_job(doc, data_roots=[root]), output_dir=OUT, dataset_toml=DATASET_TOML
    )
    assert "[[eval_datasets]]" in config_text
    assert "[[model.text_encoders]]" in config_text
    config = tomllib.loads(config_text)
    assert config["eval_datasets"] == [{"name": "holdout", "config": str(eval_toml)}]


# ------------------------------------------------------------------ injection

HOSTILE = [
    'x"\nepochs = 1\n[model]\ntype = "evil"\n',
    "x'''\n[[directory]]\npath = '/etc'\n'''",
    '\\"; output_dir = "/"',
    "] = [ # \r\n\t\x00\x1b\x7f",
    "\u2028\u2029\ufeff 猫 🐈",
    "\\u0022\\n",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_user_strings_cannot_inject_keys(root: Path, text: str) -> None:
    doc = job_doc(root, description=text)
    doc["dataset"]["caption_prefix"] = text
    doc["dataset"]["directories"][0]["caption_prefix"] = text
    doc["config"]["custom_note"] = text
    doc["config"]["model"]["custom_list"] = [text, text]
    spec = validate_job(doc, data_roots=[root])
    config, dataset = render(spec)
    assert config == main_config(spec, output_dir=OUT, dataset_toml=DATASET_TOML)
    assert dataset == dataset_config(spec)
    assert dataset["caption_prefix"] == text and config["custom_note"] == text
    assert config["model"]["type"] == "wan" and config["epochs"] == 2
    assert config["output_dir"] == str(OUT)
    assert len(dataset["directory"]) == 1


def test_a_value_that_cannot_round_trip_raises() -> None:
    with pytest.raises(ConfigRenderError):
        render_toml({"lr": float("nan")})
    with pytest.raises(ConfigRenderError):
        render_toml({"missing": None})


def test_same_values_tells_types_apart() -> None:
    assert same_values({"a": [1, 2.0]}, {"a": [1, 2.0]})
    assert not same_values({"a": 1}, {"a": 1.0})
    assert not same_values({"a": True}, {"a": 1})
    assert not same_values({"a": 1}, {"a": 1, "b": 2})
    assert not same_values([1], [1, 1])


# ------------------------------------------------------------------ properties

keys = st.from_regex(KEY_RE, fullmatch=True).filter(lambda k: k not in ("output_dir", "dataset"))
scalars = (
    st.text()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)
homogeneous_lists = (
    st.lists(st.text(), max_size=4)
    | st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4)
    | st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4)
)
values = st.recursive(
    scalars | homogeneous_lists,
    lambda inner: st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)


def base_spec(**fields: Any) -> JobSpec:
    spec = JobSpec(
        task_id="t1",
        model_type="wan",
        description="",
        gpu_ids=None,
        priority=0,
        queue=False,
        resume_from_checkpoint=None,
        min_memory_mb=None,
        required_gpus=1,
        dataset={"resolutions": [512], "directories": [{"path": "/data/set"}]},
        config={
            "epochs": 1,
            "save_every_n_epochs": 1,
            "model": {"type": "wan", "ckpt_path": "/data/wan", "dtype": "bfloat16"},
            "optimizer": {"type": "adamw_optimi", "lr": 1e-4},
        },
    )
    return JobSpec(**{**spec.__dict__, **fields})


@settings(max_examples=60, deadline=None)
@given(
    description=st.text(),
    caption=st.text(),
    path=st.text(min_size=1),
    extra=st.dictionaries(keys, values, max_size=4),
    model_extra=st.dictionaries(keys.filter(lambda k: k != "type"), values, max_size=3),
)
def test_rendered_toml_reads_back_exactly(
    description: str, caption: str, path: str, extra: dict[str, Any], model_extra: dict[str, Any]
) -> None:
    spec = base_spec(description=description)
    spec.dataset["caption_prefix"] = caption
    spec.dataset["directories"] = [{"path": path, "caption_prefix": caption}]
    spec.config.update({k: v for k, v in extra.items() if k not in spec.config})
    spec.config["model"].update(model_extra)
    config, dataset = render(spec)
    intended = main_config(spec, output_dir=OUT, dataset_toml=DATASET_TOML)
    assert same_values(config, intended)
    assert same_values(dataset, dataset_config(spec))
    assert config["model"]["type"] == "wan" and set(config) == set(intended)
    assert dataset["directory"] == [{"path": path, "caption_prefix": caption}]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(), note=values)
def test_validated_jobs_with_arbitrary_strings_render_exactly(
    root: Path, text: str, note: Any
) -> None:
    doc = job_doc(root, description=text)
    doc["dataset"]["caption_prefix"] = text
    doc["config"]["custom_note"] = note
    doc["config"]["optimizer"]["custom_kwarg"] = text
    spec = validate_job(doc, data_roots=[root])
    config, dataset = render(spec)
    assert same_values(config, main_config(spec, output_dir=OUT, dataset_toml=DATASET_TOML))
    assert dataset["caption_prefix"] == text
    assert config["optimizer"]["custom_kwarg"] == text


# ------------------------------------------------------------------ statement cache


def whole_document(data: dict[str, Any]) -> str:
    """What tomlkit writes for the whole document at once: the reference the cached
    statements must reproduce byte for byte."""
    document = tomlkit.document()
    document.add(tomlkit.comment(dpconfig.HEADER))
    for key, value in dpconfig._ordered(data).items():
        document.add(key, tomlkit.item(value))
    return tomlkit.dumps(document)


tables = st.dictionaries(keys, values, min_size=1, max_size=3)


@settings(max_examples=150, deadline=None)
@given(data=st.dictionaries(keys, values | tables | st.lists(tables, min_size=1, max_size=2)))
def test_cached_statements_add_up_to_what_tomlkit_writes(data: dict[str, Any]) -> None:
    for _ in range(2):  # cold, then from the cache
        text = render_toml(data)
        assert text == whole_document(data)
        # statements are checked one by one; joined, they must still read back whole
        assert same_values(tomllib.loads(text), data)


def test_a_statement_is_checked_before_it_is_cached() -> None:
    dpconfig._statements.clear()
    with pytest.raises(ConfigRenderError):
        render_toml({"ok": 1, "lr": float("nan")})
    assert len(dpconfig._statements._texts) == 1  # "ok" only: nothing unchecked is kept
    with pytest.raises(ConfigRenderError):
        render_toml({"ok": 1, "lr": float("nan")})


def test_the_cache_tells_apart_values_that_compare_equal() -> None:
    dpconfig._statements.clear()
    texts = [
        render_toml({"x": value})
        for value in (0.0, -0.0, 1, 1.0, True, [1], [1.0], {"a": 1}, {"a": True})
    ]
    assert len(set(texts)) == len(texts)
    utc = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    paris = utc.astimezone(timezone(timedelta(hours=1)))
    assert utc == paris
    assert "+01:00" in render_toml({"t": paris}) and "+01:00" not in render_toml({"t": utc})


def test_the_cache_stays_bounded() -> None:
    dpconfig._statements.clear()
    for index in range(dpconfig.STATEMENT_CACHE_SIZE + 50):
        render_toml({"output_dir": f"/srv/runs/{index}"})
    assert len(dpconfig._statements._texts) == dpconfig.STATEMENT_CACHE_SIZE
    assert render_toml({"output_dir": "/srv/runs/3"}).endswith('output_dir = "/srv/runs/3"\n')
