"""The tiny Flux model is built from random weights and loads the way diffusion-pipe loads it.

Needs torch, diffusers, transformers and tokenizers (not in the test extra: torch alone is
hundreds of MB), so it is skipped where they are missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from bench.gpu import tiny_flux


def test_the_tiny_flux_loads_encodes_and_denoises(tmp_path: Path) -> None:
    model = tiny_flux.build(tmp_path / "tiny-flux")
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert {
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "scheduler",
    } <= set(index)
    seen = tiny_flux.check(model)
    assert seen["clip_embed"] == [1, tiny_flux.CLIP_WIDTH]
    assert seen["t5_embed"] == [1, 512, tiny_flux.T5_WIDTH]
    assert seen["image"] == [1, 64, 64, 3]
    assert seen["bytes_on_disk"] < 8 * 2**20
    assert 0 < seen["parameters"]["transformer"] < 1_000_000


def test_the_tokenizers_split_captions_into_known_tokens(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer, T5TokenizerFast

    tiny_flux.clip_tokenizer().save_pretrained(tmp_path / "clip")
    tiny_flux.t5_tokenizer().save_pretrained(tmp_path / "t5")
    for clip in (tiny_flux.clip_tokenizer(), CLIPTokenizer.from_pretrained(tmp_path / "clip")):
        ids = clip("a red square").input_ids
        tokens = clip.convert_ids_to_tokens(ids)
        assert tokens == [
            "<|startoftext|>",
            "a</w>",
            "r",
            "e",
            "d</w>",
            "s",
            "q",
            "u",
            "a",
            "r",
            "e</w>",
            "<|endoftext|>",
        ]
    for t5 in (tiny_flux.t5_tokenizer(), T5TokenizerFast.from_pretrained(tmp_path / "t5")):
        t5_ids = t5("a red square").input_ids
        assert t5_ids[-1] == t5.eos_token_id and t5.unk_token_id not in t5_ids
        assert len(t5_ids) == len("a red square") - 2 + 1  # one per character, spaces joined
