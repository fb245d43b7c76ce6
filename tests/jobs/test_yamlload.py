"""The one YAML loader: YAML 1.2 core-schema numbers, dates kept as strings, alias bombs
and recursive aliases refused before construction, every failure a YAMLError."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from dpd.jobs.dpconfig import render_configs
from dpd.jobs.spec import parse_job_document, validate_job
from dpd.jobs.yamlload import MAX_EXPANDED_NODES, YamlRefused, check_expansion, load_yaml
from tests.jobfiles import job_document, make_data_root


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5e-5", 5e-5),
        ("1E8", 1e8),
        ("-2.5e-3", -2.5e-3),
        (".5", 0.5),
        ("+1.5", 1.5),
        ("1.", 1.0),
        ("1e400", math.inf),
        ("-.INF", -math.inf),
        ("42", 42),
        ("-7", -7),
        ("0755", 755),
        ("0o17", 15),
        ("0x1F", 31),
        ("1_000", "1_000"),
        ("12:30", "12:30"),
        ("1.0.1", "1.0.1"),
        ("0b101", "0b101"),
        ("2026-01-02", "2026-01-02"),
        ("2026-01-02T10:00:00Z", "2026-01-02T10:00:00Z"),
        ("!!timestamp 2026-01-02", "2026-01-02"),
        ("'5e-5'", "5e-5"),
        ("true", True),
        ("~", None),
    ],
)
def test_plain_scalars_follow_the_core_schema(text: str, value: Any) -> None:
    loaded = load_yaml(f"v: {text}\n")["v"]
    assert loaded == value and type(loaded) is type(value), (text, loaded)


def test_nan_is_a_float() -> None:
    assert math.isnan(load_yaml("v: .nan")["v"])


def test_a_json_document_reads_the_same_as_yaml() -> None:
    doc = {"lr": 5e-05, "eps": 1e-08, "betas": [0.9, 0.99], "n": 3, "s": "x", "t": True}
    assert load_yaml(json.dumps(doc)) == doc


def test_an_alias_bomb_is_refused_before_construction() -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(YamlRefused, match="too large"):
        load_yaml("\n".join(lines))


def test_aliases_within_the_limit_are_expanded_and_counted() -> None:
    text = "base: &b {lr: 1e-4, n: 2}\nfirst: *b\nsecond: [*b, *b]\n"
    assert load_yaml(text)["second"][1] == {"lr": 1e-4, "n": 2}
    node = yaml.compose(text)
    # root + 3 keys + base(1 + 4) + first(5) + second(1 + 2 x 5)
    assert check_expansion(node) == 1 + 3 + 5 + 5 + 11
    with pytest.raises(YamlRefused):
        check_expansion(node, limit=20)


@pytest.mark.parametrize("text", ["&a [*a]", "&a {k: [1, *a]}"])
def test_a_recursive_alias_is_refused(text: str) -> None:
    with pytest.raises(YamlRefused, match="refers to itself"):
        load_yaml(text)


@pytest.mark.parametrize(
    "text", ["v: " + "9" * 5000, "[" * 100_000, "a: [1, 2", "a: b: c", "- " * 3000 + "x"]
)
def test_every_failure_is_a_yaml_error(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml(text)


def test_the_limit_leaves_room_for_real_documents() -> None:
    big = {f"k{i}": [i, i + 0.5] for i in range(MAX_EXPANDED_NODES // 5)}
    assert load_yaml(json.dumps(big)) == big


def test_scientific_numbers_reach_the_generated_toml_as_numbers(tmp_path: Path) -> None:
    root = make_data_root(tmp_path / "data")
    doc = job_document(root)
    doc["config"]["optimizer"]["lr"] = "LR"
    doc["config"]["optimizer"]["eps"] = "EPS"  # a key dpd passes through unchecked
    doc["config"]["new_knob"] = "KNOB"
    text = json.dumps(doc).replace('"LR"', "5e-5").replace('"EPS"', "1e-8")
    text = text.replace('"KNOB"', "-2.5E-3")
    spec = validate_job(parse_job_document(text.encode(), "yaml"), data_roots=[root])
    main, _ = render_configs(spec, output_dir=tmp_path / "out", dataset_toml=tmp_path / "d.toml")
    config = tomllib.loads(main)
    assert config["optimizer"]["lr"] == 5e-5
    assert config["optimizer"]["eps"] == 1e-8
    assert config["new_knob"] == -2.5e-3
