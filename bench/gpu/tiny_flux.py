"""A tiny Flux model in diffusers' format, made from random weights on the spot.

    python -m bench.gpu.tiny_flux OUT_DIR [--check]

diffusion-pipe's ``flux`` type loads ``<diffusers_path>/transformer`` with
``FluxTransformer2DModel.from_pretrained`` and then the whole folder with
``FluxPipeline.from_pretrained`` (models/flux.py): a scheduler, a VAE, a CLIP text encoder and
tokenizer, a T5 encoder and tokenizer, and the transformer, all read from local files. Every
part here has the real architecture and a few layers: 16 latent channels and an 8x VAE, as
Flux has, so the trainer's latent packing (2x2 patches, 64 channels in) works unchanged.
The tokenizers are built here from a byte alphabet, so nothing is downloaded.

``--check`` loads the folder back the way diffusion-pipe does and runs one denoising step
on the CPU. Needs torch, diffusers, transformers and tokenizers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CLIP_WIDTH = 32  # CLIP hidden size = the transformer's pooled projection
T5_WIDTH = 32  # T5 d_model = the transformer's joint attention width
CLIP_TOKENS = 77


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte-to-character table."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def clip_tokenizer() -> Any:
    """A CLIP byte-level BPE tokenizer with no merges: every byte is a token (with and
    without the end-of-word mark), between CLIP's start and end tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import CLIPTokenizerFast

    alphabet = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos] = len(vocab)
    vocab[eos] = len(vocab)
    model = Tokenizer(
        models.BPE(
            vocab, [], unk_token=eos, end_of_word_suffix="</w>", continuing_subword_prefix=""
        )
    )
    # CLIP splits on whitespace (dropping it), then maps bytes to its alphabet
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    model.decoder = decoders.ByteLevel()
    model.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return CLIPTokenizerFast(
        tokenizer_object=model,
        bos_token=bos,
        eos_token=eos,
        unk_token=eos,
        pad_token=eos,
        model_max_length=CLIP_TOKENS,
    )


def t5_tokenizer() -> Any:
    """A T5 (unigram, SentencePiece-style) tokenizer over printable ASCII."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)]
    pieces += [("▁" + chr(c), -2.5) for c in range(33, 127)]
    model = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=model,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=512,
    )


def build(out: Path, seed: int = 0) -> Path:
    """Write the model to ``out`` (created; must not exist yet); returns ``out``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CLIP_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=CLIP_WIDTH,
            hidden_act="quick_gelu",
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=T5_WIDTH,
            d_kv=16,
            d_ff=64,
            num_layers=2,
            num_heads=2,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=0,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipeline = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    out.mkdir(parents=True)
    pipeline.save_pretrained(out, safe_serialization=True)
    return out


def check(path: Path) -> dict[str, Any]:
    """Load as diffusion-pipe does, encode a caption with both encoders, run one step."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(
        path / "transformer", torch_dtype=torch.float32
    )
    pipeline = FluxPipeline.from_pretrained(
        path, torch_dtype=torch.float32, transformer=transformer
    )
    clip = pipeline._get_clip_prompt_embeds(prompt=["a red square"], device="cpu")
    t5 = pipeline._get_t5_prompt_embeds(prompt=["a red square"], device="cpu")
    image = pipeline(
        prompt="a red square",
        height=64,
        width=64,
        num_inference_steps=1,
        guidance_scale=3.5,
        output_type="np",
    ).images
    return {
        "clip_embed": list(clip.shape),
        "t5_embed": list(t5.shape),
        "image": list(image.shape),
        "parameters": {
            name: sum(p.numel() for p in getattr(pipeline, name).parameters())
            for name in ("transformer", "vae", "text_encoder", "text_encoder_2")
        },
        "bytes_on_disk": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="load it back and run one step")
    args = parser.parse_args(argv)
    if not (args.out / "model_index.json").exists():
        build(args.out, args.seed)
    if args.check:
        print(json.dumps(check(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
