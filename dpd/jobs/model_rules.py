"""What dpd knows about diffusion-pipe's configs, as data (reference diffusion-pipe.md §2, §3).

The job validator (``dpd.jobs.spec``) interprets these tables; GPU recommendations,
preprocessing and the model catalog read the per-model facts. Keeping them as data means a
new diffusion-pipe model is one entry here, not a change to validation code.

Facts are those of diffusion-pipe at the commit the reference names. Where the trainer would
fail late (at the first save, after an hour of caching) or quit with exit code 0 having
trained nothing, a rule here lets dpd refuse the job up front.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final


class Media(Enum):
    """What a model trains on: image-only models reject video files and frame buckets."""

    IMAGE = "image"
    VIDEO = "video"  # video models take images too (frame count 1)


ADAPTER_FILE: Final = "adapter_model.safetensors"
DIFFUSERS_LORA_FILE: Final = "pytorch_lora_weights.safetensors"
KOHYA_LORA_FILE: Final = "lora.safetensors"
FULL_FINETUNE_FILE: Final = "model.safetensors"


@dataclass(frozen=True)
class ModelRules:
    """Facts about one ``[model] type`` string of train.py."""

    model_type: str
    # Alternatives: the model table must hold every key of at least one of them.
    required: tuple[tuple[str, ...], ...]
    # Keys of this model's table that name files or directories (required or optional).
    path_keys: frozenset[str]
    media: Media = Media.IMAGE
    native_fps: float | None = None  # videos are resampled to this frame rate
    pixel_multiple: int = 16  # pixel sizes are rounded to a multiple of this
    block_swap: bool = False
    full_finetune: bool = True  # False: saving a full fine-tune raises NotImplementedError
    adapter_types: tuple[str, ...] = ("lora", "lokr")
    lora_file: str = ADAPTER_FILE
    cache_name: str = ""  # folder under <dataset dir>/cache/; "" = the type string

    @property
    def required_keys(self) -> frozenset[str]:
        """Every key named by any alternative (for messages and catalogs)."""
        return frozenset(key for group in self.required for key in group)

    @property
    def cache_folder(self) -> str:
        return self.cache_name or self.model_type


def _paths(*keys: str) -> frozenset[str]:
    return frozenset(keys)


_COMFY_REQUIRED: Final = (("diffusion_model", "vae", "text_encoders"),)
_COMFY_PATHS: Final = _paths("diffusion_model", "vae")
_LORA_ONLY: Final = ("lora",)

_RULES: Final[tuple[ModelRules, ...]] = (
    ModelRules(
        "sdxl",
        (("checkpoint_path",),),
        _paths("checkpoint_path"),
        adapter_types=_LORA_ONLY,
        lora_file=KOHYA_LORA_FILE,
    ),
    ModelRules(
        "flux",
        (("diffusers_path",),),
        _paths("diffusers_path", "transformer_path"),
        block_swap=True,
        adapter_types=_LORA_ONLY,
        lora_file=DIFFUSERS_LORA_FILE,
    ),
    ModelRules(
        "ltx-video",
        (("diffusers_path", "single_file_path"),),
        _paths("diffusers_path", "single_file_path"),
        Media.VIDEO,
        native_fps=25,
        pixel_multiple=32,
        full_finetune=False,
    ),
    ModelRules(
        "hunyuan-video",
        (("ckpt_path",), ("transformer_path", "vae_path", "llm_path", "clip_path")),
        _paths("ckpt_path", "transformer_path", "vae_path", "llm_path", "clip_path"),
        Media.VIDEO,
        native_fps=24,
        block_swap=True,
        full_finetune=False,
    ),
    ModelRules(
        "cosmos",
        (("transformer_path", "vae_path", "text_encoder_path"),),
        _paths("transformer_path", "vae_path", "text_encoder_path"),
        Media.VIDEO,
        native_fps=24,
        full_finetune=False,
    ),
    ModelRules(
        "lumina_2",
        (("transformer_path", "llm_path", "vae_path"),),
        _paths("transformer_path", "llm_path", "vae_path"),
    ),
    ModelRules(
        "wan",
        (("ckpt_path",),),
        _paths("ckpt_path", "transformer_path", "llm_path"),
        Media.VIDEO,
        native_fps=16,  # 24 for SkyReels and the 5B, detected from the checkpoint
        block_swap=True,
    ),
    ModelRules(
        "chroma",
        (("diffusers_path", "transformer_path"),),
        _paths("diffusers_path", "transformer_path"),
        block_swap=True,
    ),
    ModelRules(
        "hidream",
        (("diffusers_path", "llama3_path"),),
        _paths("diffusers_path", "llama3_path"),
        block_swap=True,
        full_finetune=False,
    ),
    ModelRules(
        "sd3",
        (("diffusers_path",),),
        _paths("diffusers_path"),
        full_finetune=False,
        adapter_types=_LORA_ONLY,
        lora_file=DIFFUSERS_LORA_FILE,
    ),
    ModelRules(
        "cosmos_predict2",
        (("transformer_path", "vae_path", "t5_path"), ("transformer_path", "vae_path", "llm_path")),
        _paths("transformer_path", "vae_path", "t5_path", "llm_path", "llm_adapter_path"),
        Media.VIDEO,
        native_fps=16,
        block_swap=True,
    ),
    ModelRules(
        "anima",
        (("transformer_path", "vae_path", "llm_path"),),
        _paths("transformer_path", "vae_path", "llm_path", "llm_adapter_path"),
        Media.VIDEO,  # the cosmos_predict2 class
        native_fps=16,
        block_swap=True,
    ),
    ModelRules(
        "omnigen2",
        (("diffusers_path",),),
        _paths("diffusers_path"),
        full_finetune=False,
    ),
    ModelRules(
        "qwen_image",
        (("diffusers_path",), ("transformer_path", "text_encoder_path", "vae_path")),
        _paths("diffusers_path", "transformer_path", "text_encoder_path", "vae_path"),
        block_swap=True,
    ),
    ModelRules(
        "hunyuan_image",
        (("transformer_path", "vae_path", "text_encoder_path", "byt5_path"),),
        _paths("transformer_path", "vae_path", "text_encoder_path", "byt5_path"),
        pixel_multiple=32,
        block_swap=True,
    ),
    ModelRules(
        "auraflow",
        (("transformer_path", "text_encoder_path", "vae_path", "max_sequence_length"),),
        _paths("transformer_path", "text_encoder_path", "vae_path"),
        block_swap=True,
        full_finetune=False,
        adapter_types=_LORA_ONLY,
        lora_file=DIFFUSERS_LORA_FILE,
    ),
    ModelRules("z_image", _COMFY_REQUIRED, _COMFY_PATHS, block_swap=True),
    ModelRules(
        "hunyuan_video_15",
        _COMFY_REQUIRED,
        _COMFY_PATHS,
        Media.VIDEO,
        native_fps=24,
        block_swap=True,
        cache_name="hunyuan_video_1.5",
    ),
    ModelRules("flux2", _COMFY_REQUIRED, _COMFY_PATHS, block_swap=True),
    ModelRules("ernie_image", _COMFY_REQUIRED, _COMFY_PATHS, block_swap=True),
    ModelRules(
        "ltx2",
        (("diffusion_model", "text_encoder"),),
        _paths("diffusion_model", "text_encoder"),
        Media.VIDEO,
        native_fps=24,
        block_swap=True,
    ),
    ModelRules("ideogram4", _COMFY_REQUIRED, _COMFY_PATHS, block_swap=True),
    ModelRules("krea2", _COMFY_REQUIRED, _COMFY_PATHS, block_swap=True),
    ModelRules(
        "minimax_h3",
        (("diffusion_model", "vae", "audio_vae", "text_encoders"),),
        _paths("diffusion_model", "vae", "audio_vae"),
        Media.VIDEO,
        block_swap=True,
    ),
)

MODEL_RULES: Final[dict[str, ModelRules]] = {rules.model_type: rules for rules in _RULES}
MODEL_TYPES: Final[tuple[str, ...]] = tuple(MODEL_RULES)
# Every model-table key that names a path, whatever the type: a path is checked wherever it
# appears, so a key meant for another model type cannot point outside the data roots.
MODEL_PATH_KEYS: Final[frozenset[str]] = frozenset().union(*(r.path_keys for r in _RULES))

# ------------------------------------------------------------------ value vocabularies

DTYPES: Final = ("float32", "float16", "bfloat16", "float8", "float8_e4m3fn", "float8_e5m2")
ADAPTER_TYPES: Final = ("lora", "lokr")
LR_SCHEDULERS: Final = ("constant", "linear", "cosine")
ACTIVATION_CHECKPOINTING: Final[tuple[Any, ...]] = (False, True, "unsloth")
VIDEO_CLIP_MODES: Final = ("single_beginning", "single_middle")
TIMESTEP_SAMPLE_METHODS: Final = ("logit_normal", "uniform")
MAX_RESOLUTIONS: Final = 3  # more: train.py prints a WARNING and quits with exit code 0
# Keys the daemon sets itself; refused anywhere in a job's config.
OWNED_KEYS: Final = frozenset({"output_dir", "dataset"})
# Conveniences of the API document: their keys are top-level keys of the main config.
CONFIG_GROUPS: Final = ("eval", "save", "optimization")
SAVE_FREQUENCY_KEYS: Final = ("save_every_n_epochs", "save_every_n_steps", "save_every_n_examples")
# The only size buckets Cosmos accepts without --i_know_what_i_am_doing (models/cosmos.py).
COSMOS_SIZE_BUCKETS: Final = (
    (960, 960, 1),
    (960, 704, 1),
    (704, 960, 1),
    (1280, 704, 1),
    (704, 1280, 1),
    (960, 960, 121),
    (960, 704, 121),
    (704, 960, 121),
    (1280, 704, 121),
    (704, 1280, 121),
)
# Keys Cosmos refuses beside size_buckets (at top level and in every directory).
COSMOS_FORBIDDEN_DATASET_KEYS: Final = ("resolutions", "min_ar", "max_ar", "num_ar_buckets")

# ------------------------------------------------------------------ typed keys


class Kind(Enum):
    """How a known key's value is checked; the validator holds one checker per kind."""

    INT = "int"
    NUMBER = "number"
    BOOL = "bool"
    STR = "str"
    CHOICE = "choice"
    DTYPE = "dtype"
    BATCH = "batch"  # int, or [[size, batch], ...]
    RESOLUTIONS = "resolutions"  # ints, or [w, h] pairs (not mixed)
    AR_BUCKETS = "ar_buckets"  # numbers, or [w, h] pairs (not mixed)
    INTS = "ints"  # a list of ints >= low
    SIZE_BUCKETS = "size_buckets"  # [[w, h, frames], ...]
    STRS = "strs"
    BETAS = "betas"  # [b1, b2], each in [0, 1)
    DIR = "dir"  # an existing directory under a data root
    FILE = "file"  # an existing file under a data root
    PATH = "path"  # an existing file or directory under a data root


@dataclass(frozen=True)
class Rule:
    kind: Kind
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low, not >= low
    choices: tuple[Any, ...] = ()


def _int(low: float | None = None, high: float | None = None) -> Rule:
    return Rule(Kind.INT, low, high)


def _num(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Rule:
    return Rule(Kind.NUMBER, low, high, low_open)


def _choice(*choices: Any) -> Rule:
    return Rule(Kind.CHOICE, choices=choices)


_BOOL: Final = Rule(Kind.BOOL)
_STR: Final = Rule(Kind.STR)
_DTYPE: Final = Rule(Kind.DTYPE)
_BATCH: Final = Rule(Kind.BATCH)
_POSITIVE: Final = _int(1)
_FRACTION: Final = _num(0, 1)

# Top-level keys of the main config (reference §2.1). Not listed: tables and eval_datasets,
# which the validator walks itself.
TOP_LEVEL_KEYS: Final[dict[str, Rule]] = {
    "epochs": _POSITIVE,
    "max_steps": _POSITIVE,
    "micro_batch_size_per_gpu": _BATCH,
    "image_micro_batch_size_per_gpu": _BATCH,
    "eval_micro_batch_size_per_gpu": _BATCH,
    "eval_image_micro_batch_size_per_gpu": _BATCH,
    "pipeline_stages": _POSITIVE,
    "gradient_accumulation_steps": _POSITIVE,
    "gradient_clipping": _num(0),
    "warmup_steps": _int(0),
    "lr_scheduler": _choice(*LR_SCHEDULERS),
    "force_constant_lr": _num(0, low_open=True),
    "save_every_n_epochs": _POSITIVE,
    "save_every_n_steps": _POSITIVE,
    "save_every_n_examples": _POSITIVE,
    "checkpoint_every_n_epochs": _POSITIVE,
    "checkpoint_every_n_minutes": _num(0, low_open=True),
    "eval_every_n_epochs": _POSITIVE,
    "eval_every_n_steps": _POSITIVE,
    "eval_every_n_examples": _POSITIVE,
    "eval_before_first_step": _BOOL,
    "eval_gradient_accumulation_steps": _POSITIVE,
    "disable_block_swap_for_eval": _BOOL,
    "activation_checkpointing": _choice(*ACTIVATION_CHECKPOINTING),
    "reentrant_activation_checkpointing": _BOOL,
    "partition_method": _STR,
    "partition_split": Rule(Kind.INTS, low=1),
    "blocks_to_swap": _int(0),
    "compile": _BOOL,
    "save_dtype": _DTYPE,
    "caching_batch_size": _POSITIVE,
    "map_num_proc": _POSITIVE,
    "steps_per_print": _POSITIVE,
    "logging_steps": _POSITIVE,
    "x_axis_examples": _BOOL,
    "video_clip_mode": _choice(*VIDEO_CLIP_MODES),
    "uncond_fraction": _FRACTION,
    "huber_delta": _num(0, low_open=True),
    "smooth_l1_beta": _num(0, low_open=True),
}

MODEL_COMMON_KEYS: Final[dict[str, Rule]] = {
    "dtype": _DTYPE,
    "transformer_dtype": _DTYPE,
    "diffusion_model_dtype": _DTYPE,
    "timestep_sample_method": _choice(*TIMESTEP_SAMPLE_METHODS),
    "sigmoid_scale": _num(0, low_open=True),
    "shift": _num(0, low_open=True),
    "flux_shift": _BOOL,
    "guidance": _num(0),
    "max_sequence_length": _POSITIVE,
}

ADAPTER_KEYS: Final[dict[str, Rule]] = {
    "type": _choice(*ADAPTER_TYPES),
    "rank": _POSITIVE,
    "dtype": _DTYPE,
    "dropout": _num(0, 1),
    "decompose_factor": _int(-1),
    "rank_dropout": _num(0, 1),
    "init_from_existing": Rule(Kind.PATH),
    "exclude_modules": Rule(Kind.STRS),
}

OPTIMIZER_KEYS: Final[dict[str, Rule]] = {
    "type": _STR,
    "lr": _num(0, low_open=True),
    "betas": Rule(Kind.BETAS),
    "weight_decay": _num(0),
    "eps": _num(0, low_open=True),
    "gradient_release": _BOOL,
    "beta2_half_life": _num(0, low_open=True),
}

MONITORING_KEYS: Final[dict[str, Rule]] = {
    "enable_wandb": _BOOL,
    "wandb_api_key": _STR,
    "wandb_tracker_name": _STR,
    "wandb_run_name": _STR,
}
WANDB_REQUIRED: Final = ("wandb_api_key", "wandb_tracker_name", "wandb_run_name")

# Dataset keys valid at the top (as defaults) and in every [[directory]] (reference §3.1).
DATASET_KEYS: Final[dict[str, Rule]] = {
    "num_repeats": _num(0, low_open=True),
    "resolutions": Rule(Kind.RESOLUTIONS),
    "enable_ar_bucket": _BOOL,
    "min_ar": _num(0, low_open=True),
    "max_ar": _num(0, low_open=True),
    "num_ar_buckets": _POSITIVE,
    "ar_buckets": Rule(Kind.AR_BUCKETS),
    "frame_buckets": Rule(Kind.INTS, low=1),
    "size_buckets": Rule(Kind.SIZE_BUCKETS),
    "caption_prefix": _STR,
    "cache_shuffle_num": _int(0),
    "cache_shuffle_delimiter": _STR,
    "shuffle_tags": _BOOL,
    "shuffle_metadata": _BOOL,
    "skip_empty_caption": _BOOL,
    "online_captions": _BOOL,
}
DATASET_TOP_ONLY_KEYS: Final[dict[str, Rule]] = {"subsample_ratio": _num(0, 1, low_open=True)}
DIRECTORY_ONLY_KEYS: Final[dict[str, Rule]] = {
    "path": Rule(Kind.DIR),
    "mask_path": Rule(Kind.DIR),
    "default_mask_file": Rule(Kind.FILE),
    "control_path": Rule(Kind.DIR),
}

# Keys people copy from examples that diffusion-pipe never reads (reference §7.3): refused
# with a hint instead of silently doing nothing.
DEAD_KEYS: Final[dict[str, str]] = {
    "image_eval_micro_batch_size_per_gpu": (
        "is not read by diffusion-pipe; the key is eval_image_micro_batch_size_per_gpu"
    ),
    "pseudo_huber_c": "is not read by diffusion-pipe; use huber_delta or smooth_l1_beta",
    "regenerate_cache": "is ignored by diffusion-pipe in the config (only the flag counts)",
}
