"""The catalog: the shipped data agrees with diffusion-pipe's facts; checking, paths and
installed state."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from dpd.errors import ConfigError
from dpd.models.catalog import (
    SHIPPED_CATALOG,
    default_model_table,
    default_paths,
    installed_state,
    load_catalog,
    manifest_path,
    parse_catalog,
)
from tests.models.conftest import CATALOG

try:
    from dpd.jobs import model_rules
except ImportError:  # pragma: no cover - the job validator's module arrives separately
    model_rules = None  # type: ignore[assignment]

needs_rules = pytest.mark.skipif(model_rules is None, reason="dpd.jobs.model_rules not present")


def test_shipped_catalog_loads():
    catalog = load_catalog()
    assert catalog.source == str(SHIPPED_CATALOG)
    assert len(catalog.models) == len(set(catalog.ids))


@needs_rules
def test_catalog_ids_are_exactly_diffusion_pipes_model_types():
    assert sorted(load_catalog().ids) == sorted(model_rules.MODEL_TYPES)


@needs_rules
def test_full_finetune_flags_agree_with_the_model_rules():
    for model in load_catalog().models:
        assert model.supports_full_finetune == model_rules.MODEL_RULES[model.id].full_finetune, (
            model.id
        )


@needs_rules
def test_every_config_key_is_one_the_model_type_reads():
    for model in load_catalog().models:
        rules = model_rules.MODEL_RULES[model.id]
        readable = rules.path_keys | rules.required_keys
        for component in model.components:
            assert component.config_key in readable, (model.id, component.config_key)


@needs_rules
def test_default_tables_satisfy_one_required_alternative():
    for model in load_catalog().models:
        table = default_model_table(model.id, Path("/m"))
        alternatives = model_rules.MODEL_RULES[model.id].required
        assert any(set(group) <= set(table) for group in alternatives), model.id


def test_media_types_and_vram_are_sane():
    for model in load_catalog().models:
        assert model.type in ("image", "video")
        assert 0 < model.min_vram_gb <= model.recommended_vram_gb


def test_recommended_for_uses_min_vram():
    catalog = parse_catalog(CATALOG)
    assert catalog.recommended_for(8 * 1024) == ["broken"]
    assert catalog.recommended_for(12 * 1024) == ["flux", "broken"]
    assert catalog.recommended_for(80 * 1024) == ["flux", "gated", "broken"]
    assert catalog.recommended_for(0) == []


def test_every_problem_of_a_bad_catalog_is_reported():
    document = copy.deepcopy(CATALOG)
    document["models"][0]["type"] = "audio"
    del document["models"][0]["min_vram_gb"]
    document["models"][1]["components"][0]["dir"] = "../etc"
    document["models"][2]["id"] = "flux"
    with pytest.raises(ConfigError) as caught:
        parse_catalog(document)
    text = str(caught.value)
    for expected in ("models[0].type", "models[0].min_vram_gb", "models[1].components[0].dir"):
        assert expected in text
    with pytest.raises(ConfigError):
        parse_catalog({"models": []})


def test_duplicate_ids_are_refused():
    document = copy.deepcopy(CATALOG)
    document["models"][2]["id"] = "flux"
    with pytest.raises(ConfigError, match="appears twice"):
        parse_catalog(document)


def test_an_operator_catalog_replaces_the_shipped_one(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(json.dumps(CATALOG))  # JSON is YAML
    assert load_catalog(path).ids == ("flux", "gated", "broken")
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "absent.yaml")


def test_default_paths_and_model_table():
    root = Path("/data/models")
    assert default_paths("wan", root) == {"ckpt_path": root / "wan/Wan2.1-T2V-14B"}
    paths = default_paths("hunyuan-video", root)
    assert set(paths) == {"transformer_path", "vae_path", "llm_path", "clip_path"}
    table = default_model_table("z_image", root)
    assert table["text_encoders"] == [
        {
            "path": str(root / "z_image/split_files/text_encoders/qwen_3_4b.safetensors"),
            "type": "lumina2",
        }
    ]
    # diffusion-pipe docs: 768 is for Pony-V7, base AuraFlow is 256
    assert default_model_table("auraflow", root)["max_sequence_length"] == 256
    with pytest.raises(KeyError):
        default_paths("nosuch", root)


def test_installed_state(tmp_path):
    catalog = parse_catalog(CATALOG)
    flux = catalog.get("flux")
    assert flux is not None
    state = installed_state(flux, tmp_path)
    assert {name: entry["installed"] for name, entry in state.items()} == {
        "diffusion_model": False,
        "vae": False,
        "text_encoder": False,
    }
    assert state["vae"]["path"] == str(tmp_path / "flux/tiny")
    # Exact files placed by hand count; patterns need dpd's manifest.
    for name in (
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "model_index.json",
        "vae/config.json",
    ):
        (tmp_path / "flux/tiny" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "flux/tiny" / name).write_bytes(b"x")
    state = installed_state(flux, tmp_path)
    assert state["text_encoder"]["installed"] and not state["vae"]["installed"]
    manifest = manifest_path(tmp_path, "flux", "vae")
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"files": [{"path": "vae/config.json", "size": 1}]}))
    assert installed_state(flux, tmp_path)["vae"]["installed"]
    (tmp_path / "flux/tiny/vae/config.json").write_bytes(b"truncated?")
    assert not installed_state(flux, tmp_path)["vae"]["installed"]


# The models whose sources were checked for issue #8: each component now names a repo,
# is marked verified and says in its note where it was confirmed.
CHECKED_FOR_ISSUE_8 = (
    "cosmos",
    "chroma",
    "cosmos_predict2",
    "anima",
    "hunyuan_video_15",
    "flux2",
    "ltx2",
    "auraflow",
    "ernie_image",
    "ideogram4",
    "krea2",
    "minimax_h3",
)


def test_components_say_whether_their_source_was_checked():
    catalog = load_catalog()
    assert catalog.get("sdxl").components[0].verified is True
    for model_id in CHECKED_FOR_ISSUE_8:
        for component in catalog.get(model_id).components:
            assert component.repo and component.downloadable, (model_id, component.name)
            assert component.verified and component.note, (model_id, component.name)
    # an unchecked source always says why it is there
    assert all(c.note for m in catalog.models for c in m.components if c.repo and not c.verified)
    # without a repo a component is never verified unless the catalog says so
    handmade = parse_catalog(CATALOG).get("broken").component("handmade")
    assert handmade is not None and not handmade.verified


def test_default_tables_follow_diffusion_pipes_documented_files():
    root = Path("/m")
    # one text_encoders entry with both paths, as diffusion-pipe's HunyuanVideo-1.5 example
    folder = root / "hunyuan_video_15/split_files/text_encoders"
    assert default_model_table("hunyuan_video_15", root)["text_encoders"] == [
        {
            "paths": [
                str(folder / "qwen_2.5_vl_7b.safetensors"),
                str(folder / "byt5_small_glyphxl_fp16.safetensors"),
            ],
            "type": "hunyuan_video_15",
        }
    ]
    # single files, not the Diffusers folders that hold fp32 and fp16 twins
    auraflow = default_model_table("auraflow", root)
    assert auraflow["text_encoder_path"].endswith("text_encoder/model.fp16.safetensors")
    assert auraflow["vae_path"].endswith("vae/diffusion_pytorch_model.safetensors")
    minimax = default_model_table("minimax_h3", root)
    assert set(minimax) >= {"diffusion_model", "vae", "audio_vae", "text_encoders"}


def test_text_encoder_types_are_the_ones_diffusion_pipe_documents():
    catalog = load_catalog()
    types = {m.id: {c.text_encoder_type for c in m.components} - {""} for m in catalog.models}
    assert types["ernie_image"] == {"flux2"}  # an unknown type silently falls back to SD
    assert types["minimax_h3"] == {"minimax"}
    assert types["flux2"] == {"flux2"}


def test_verified_must_be_true_or_false():
    document = copy.deepcopy(CATALOG)
    document["models"][0]["components"][0]["verified"] = "yes"
    document["models"][0]["components"][1]["note"] = 3
    with pytest.raises(ConfigError) as caught:
        parse_catalog(document)
    assert "components[0].verified" in str(caught.value)
    assert "components[1].note" in str(caught.value)


def test_an_operator_catalog_is_read_with_yaml_1_2_numbers_and_refuses_bombs(tmp_path):
    document = copy.deepcopy(CATALOG)
    document["models"][0]["min_vram_gb"] = "MIN"
    text = json.dumps(document).replace('"MIN"', "2.4e1")  # a float in YAML 1.2, not 1.1
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    assert load_catalog(path).models[0].min_vram_gb == 24.0
    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    bomb += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path.write_text("\n".join(bomb))
    with pytest.raises(ConfigError, match="too large"):
        load_catalog(path)
