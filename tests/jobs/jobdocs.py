"""Job documents for every model type, with the files they name created under a data root."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpd.jobs.model_rules import MODEL_RULES


def make_dataset(root: Path, name: str = "imgs", images: int = 2) -> Path:
    directory = root / "datasets" / name
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(images):
        (directory / f"img{index}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        (directory / f"img{index}.txt").write_text(f"caption {index}")
    return directory


def model_table(root: Path, model_type: str) -> dict[str, Any]:
    """The first required alternative of ``model_type``, every path created."""
    base = root / "models" / model_type
    base.mkdir(parents=True, exist_ok=True)
    table: dict[str, Any] = {"dtype": "bfloat16"}
    for key in MODEL_RULES[model_type].required[0]:
        if key == "text_encoders":
            encoder = base / "text_encoder.safetensors"
            encoder.write_bytes(b"w")
            table[key] = [{"path": str(encoder), "type": model_type}]
        elif key == "max_sequence_length":
            table[key] = 512
        else:
            target = base / key
            target.mkdir(exist_ok=True)
            table[key] = str(target)
    return table


def job_doc(root: Path, model_type: str = "wan", **overrides: Any) -> dict[str, Any]:
    """A valid LoRA job for ``model_type``; ``overrides`` replace top-level fields."""
    doc: dict[str, Any] = {
        "model_type": model_type,
        "description": "test job",
        "dataset": {
            "resolutions": [512],
            "directories": [{"path": str(make_dataset(root)), "num_repeats": 1}],
        },
        "config": {
            "epochs": 2,
            "model": model_table(root, model_type),
            "adapter": {"type": "lora", "rank": 16, "dtype": "bfloat16"},
            "optimizer": {"type": "adamw_optimi", "lr": 2e-5},
            "save": {"save_every_n_epochs": 1},
        },
    }
    if model_type == "cosmos":
        doc["dataset"] = {
            "size_buckets": [[960, 960, 1]],
            "directories": doc["dataset"]["directories"],
        }
    doc.update(overrides)
    return doc


API_EXAMPLE = {  # the API document's §3.1 request, paths moved under the test's data root
    "gpu_id": 0,
    "model_type": "wan",
    "description": "Wan LoRA 训练 - ODEO 数据集",
    "dataset": {
        "resolutions": [480],
        "enable_ar_bucket": True,
        "ar_buckets": [0.5, 0.563, 0.75],
        "frame_buckets": [1, 29, 49, 97],
        "directories": [{"path_id": "@ROOT@/train_data/3", "num_repeats": 5}],
    },
    "config": {
        "epochs": 60,
        "micro_batch_size_per_gpu": 1,
        "pipeline_stages": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "warmup_steps": 20,
        "eval": {
            "eval_every_n_epochs": 1,
            "eval_before_first_step": True,
            "eval_micro_batch_size_per_gpu": 1,
            "eval_gradient_accumulation_steps": 1,
        },
        "model": {
            "ckpt_path": "@ROOT@/pretrained_models/Wan2.1-I2V-14B-480P",
            "dtype": "bfloat16",
            "transformer_dtype": "float8",
            "timestep_sample_method": "uniform",
        },
        "adapter": {"type": "lora", "rank": 32, "dtype": "bfloat16"},
        "optimizer": {
            "type": "adamw_optimi",
            "lr": 5e-5,
            "betas": [0.9, 0.99],
            "weight_decay": 0.01,
            "eps": 1e-8,
        },
        "save": {
            "save_every_n_epochs": 5,
            "checkpoint_every_n_epochs": 10,
            "save_dtype": "bfloat16",
        },
        "optimization": {
            "activation_checkpointing": True,
            "partition_method": "parameters",
            "caching_batch_size": 1,
            "steps_per_print": 1,
            "video_clip_mode": "single_beginning",
        },
    },
}


def api_example(root: Path) -> dict[str, Any]:
    (root / "train_data" / "3").mkdir(parents=True, exist_ok=True)
    (root / "pretrained_models" / "Wan2.1-I2V-14B-480P").mkdir(parents=True, exist_ok=True)
    text = json.dumps(API_EXAMPLE).replace("@ROOT@", str(root))
    return json.loads(text)
