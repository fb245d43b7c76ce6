"""The two jobs the kit submits, as dpd's REST body (DESIGN.md §3). Pure.

The LoRA job trains the tiny Flux model on the small captioned dataset: ``images`` images,
``repeats`` repeats, batch 1 on one GPU, so an epoch is ``images * repeats`` steps (reference
§4.5, the simple case). The impossible job asks for a batch larger than the dataset: dpd
cannot know how many items survive bucketing, so it accepts the job, and diffusion-pipe
itself refuses it once the dataset is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMPOSSIBLE_MESSAGE = "Processed dataset was empty"
LORA_FILE = "pytorch_lora_weights.safetensors"  # Flux LoRAs are saved by diffusers (§2.2)


@dataclass(frozen=True)
class Plan:
    """The shape of the LoRA run; every number the checks compare against comes from here."""

    images: int = 8
    repeats: int = 16
    epochs: int = 4
    resolution: int = 64
    rank: int = 4

    @property
    def steps_per_epoch(self) -> int:
        return self.images * self.repeats

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def stop_after(self) -> int:
        """The step after which the graceful stop is asked for: inside the second epoch."""
        return self.steps_per_epoch + max(1, self.steps_per_epoch // 4)


def lora_job(task_id: str, model_dir: Path, dataset_dir: Path, plan: Plan) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "model_type": "flux",
        "description": "conformance: tiny Flux LoRA",
        "gpu_id": 0,
        "dataset": {
            "resolutions": [plan.resolution],
            "enable_ar_bucket": False,
            "directories": [{"path": str(dataset_dir), "num_repeats": plan.repeats}],
        },
        "config": {
            "epochs": plan.epochs,
            "micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "model": {"diffusers_path": str(model_dir), "dtype": "bfloat16"},
            "adapter": {"type": "lora", "rank": plan.rank, "dtype": "bfloat16"},
            "optimizer": {
                "type": "adamw_optimi",
                "lr": 1e-4,
                "betas": [0.9, 0.99],
                "weight_decay": 0.01,
                "eps": 1e-8,
            },
            "save": {"save_every_n_epochs": 1},
        },
    }


def impossible_job(task_id: str, model_dir: Path, dataset_dir: Path, plan: Plan) -> dict[str, Any]:
    """A batch of more items than the dataset holds: every size bucket rounds down to 0."""
    doc = lora_job(task_id, model_dir, dataset_dir, plan)
    doc["description"] = "conformance: a batch larger than the dataset"
    doc["dataset"]["directories"][0]["num_repeats"] = 1
    doc["config"]["micro_batch_size_per_gpu"] = plan.images * 4
    doc["config"]["epochs"] = 1
    return doc
