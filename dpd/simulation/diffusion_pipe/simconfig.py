"""Pure rules of the simulated train.py: config acceptance, model table, step arithmetic.

STDLIB ONLY and no I/O: the simulated trainer imports it as a sibling module (its folder is
sys.path[0]), tests import it as `dpd.simulation.diffusion_pipe.simconfig`. The errors raised
are the real trainer's (type and message) for the checks of diffusion-pipe.md §7.1.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DTYPES = frozenset({"float32", "float16", "bfloat16", "float8", "float8_e4m3fn", "float8_e5m2"})
LR_SCHEDULERS = ("constant", "linear", "cosine")
EVAL_QUANTILES = 9
MAX_RESOLUTIONS = 3
TOO_MANY_RESOLUTIONS_WARNING = (
    "WARNING: You have set a lot of resolutions in the dataset config. Please read the comments "
    "in the example dataset.toml file, and make sure you understand what this setting does. If "
    "you still want to proceed with the current configuration, run the script with the "
    "--i_know_what_i_am_doing flag."
)

ADAPTER_FILE = "adapter_model.safetensors"
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class ModelSpec:
    """What the simulation needs to know about one `[model] type`."""

    required: tuple[tuple[str, ...], ...]  # alternatives; one must be fully present
    lora_file: str = ADAPTER_FILE
    fft_supported: bool = True

    @property
    def writes_adapter_config(self) -> bool:
        return self.lora_file == ADAPTER_FILE


_COMFY = (("diffusion_model", "vae", "text_encoders"),)
MODELS: dict[str, ModelSpec] = {
    "sdxl": ModelSpec((("checkpoint_path",),), "lora.safetensors"),
    "flux": ModelSpec((("diffusers_path",),), DIFFUSERS_LORA_FILE),
    "ltx-video": ModelSpec((("diffusers_path", "single_file_path"),), fft_supported=False),
    "hunyuan-video": ModelSpec(
        (("ckpt_path",), ("transformer_path", "vae_path", "llm_path", "clip_path")),
        fft_supported=False,
    ),
    "cosmos": ModelSpec(
        (("transformer_path", "vae_path", "text_encoder_path"),), fft_supported=False
    ),
    "lumina_2": ModelSpec((("transformer_path", "llm_path", "vae_path"),)),
    "wan": ModelSpec((("ckpt_path",),)),
    "chroma": ModelSpec((("diffusers_path", "transformer_path"),)),
    "hidream": ModelSpec((("diffusers_path", "llama3_path"),), fft_supported=False),
    "sd3": ModelSpec((("diffusers_path",),), DIFFUSERS_LORA_FILE, fft_supported=False),
    "cosmos_predict2": ModelSpec(
        (("transformer_path", "vae_path", "t5_path"), ("transformer_path", "vae_path", "llm_path"))
    ),
    "anima": ModelSpec((("transformer_path", "vae_path", "llm_path"),)),
    "omnigen2": ModelSpec((("diffusers_path",),), fft_supported=False),
    "qwen_image": ModelSpec(
        (("diffusers_path",), ("transformer_path", "text_encoder_path", "vae_path"))
    ),
    "hunyuan_image": ModelSpec(
        (("transformer_path", "vae_path", "text_encoder_path", "byt5_path"),)
    ),
    "auraflow": ModelSpec(
        (("transformer_path", "text_encoder_path", "vae_path", "max_sequence_length"),),
        DIFFUSERS_LORA_FILE,
        fft_supported=False,
    ),
    "z_image": ModelSpec(_COMFY),
    "hunyuan_video_15": ModelSpec(_COMFY),
    "flux2": ModelSpec(_COMFY),
    "ernie_image": ModelSpec(_COMFY),
    "ltx2": ModelSpec((("diffusion_model", "text_encoder"),)),
    "ideogram4": ModelSpec(_COMFY),
    "krea2": ModelSpec(_COMFY),
    "minimax_h3": ModelSpec((("diffusion_model", "vae", "audio_vae", "text_encoders"),)),
}


def _dtype(value: Any) -> str:
    """DTYPE_MAP lookup: an unknown string raises KeyError, like the real dict."""
    if value not in DTYPES:
        raise KeyError(value)
    return str(value)


def set_config_defaults(config: dict[str, Any]) -> None:
    """The checks train.py makes before distributed init (tracebacks carry no rank prefix)."""
    assert (
        "save_every_n_epochs" in config
        or "save_every_n_steps" in config
        or "save_every_n_examples" in config
    )
    config.setdefault("pipeline_stages", 1)
    config.setdefault("activation_checkpointing", False)
    config.setdefault("warmup_steps", 0)
    if "save_dtype" in config:
        _dtype(config["save_dtype"])
    model = config["model"]
    model_dtype = _dtype(model["dtype"])
    for key in ("transformer_dtype", "diffusion_model_dtype"):
        if key in model:
            _dtype(model[key])
    model.setdefault("guidance", 1.0)
    if "adapter" in config:
        _check_adapter(config["adapter"], model_dtype)
    config.setdefault("logging_steps", 1)
    config.setdefault("eval_datasets", [])
    config.setdefault("eval_gradient_accumulation_steps", 1)
    config.setdefault("eval_every_n_steps", None)
    config.setdefault("eval_every_n_epochs", None)
    config.setdefault("eval_before_first_step", True)


def _check_adapter(adapter: dict[str, Any], model_dtype: str) -> None:
    adapter_type = adapter["type"]
    if adapter_type not in ("lora", "lokr"):
        raise NotImplementedError(f"Adapter type {adapter_type} is not implemented")
    if "alpha" in adapter:
        raise NotImplementedError(
            "This script forces alpha=rank to make the saved LoRA format simpler and more "
            "predictable with downstream inference programs. Please remove alpha from the config."
        )
    adapter["alpha"] = adapter["rank"]
    adapter.setdefault("dtype", model_dtype)
    _dtype(adapter["dtype"])


def check_model(config: dict[str, Any]) -> ModelSpec:
    """Model dispatch and the model class's required keys (after distributed init)."""
    model = config["model"]
    model_type = model["type"]
    spec = MODELS.get(model_type)
    if spec is None:
        raise NotImplementedError(f"Model type {model_type} is not implemented")
    for keys in spec.required:
        if all(key in model for key in keys):
            return spec
    raise KeyError(next(key for key in spec.required[0] if key not in model))


def cache_name(model: dict[str, Any]) -> str:
    """The folder under `<dataset dir>/cache/` (reference §2.2)."""
    model_type = str(model["type"])
    if model_type == "ltx-video":
        stem = str(model["single_file_path"]).rstrip("/").rsplit("/", 1)[-1]
        return stem.rsplit(".", 1)[0] if "." in stem else stem
    if model_type == "hunyuan_video_15":
        return "hunyuan_video_1.5"
    if model_type == "cosmos_predict2" and "llm_path" in model:
        return "anima"
    return model_type


def check_activation_checkpointing(config: dict[str, Any]) -> None:
    value = config["activation_checkpointing"]
    if value not in (False, True, "unsloth"):
        raise NotImplementedError(f"activation_checkpointing={value} is not implemented")


def check_lr_scheduler(config: dict[str, Any]) -> str:
    name = str(config.get("lr_scheduler", "constant"))
    if name not in LR_SCHEDULERS:
        raise NotImplementedError(f"Unknown lr_scheduler: {name}")
    return name


# ----------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class DirectorySpec:
    """One `[[directory]]` with the top-level defaults applied."""

    path: str
    resolutions: tuple[float, ...]  # side of the equivalent square
    num_repeats: float = 1.0
    captions_per_item: int = 1
    skip_empty_caption: bool = True


def _resolution_side(value: Any) -> float:
    if isinstance(value, list):
        return math.sqrt(float(value[0]) * float(value[1]))
    return float(value)


def directory_specs(dataset: dict[str, Any]) -> list[DirectorySpec]:
    """Validation done when the Dataset object is built (KeyError/ValueError as the real one)."""
    specs = []
    for entry in dataset["directory"]:
        merged = {**{k: v for k, v in dataset.items() if k != "directory"}, **entry}
        repeats = float(merged.get("num_repeats", 1))
        if repeats <= 0:
            raise ValueError(f"num_repeats must be >0, was {repeats}")
        if "size_buckets" in merged:
            sides = tuple(_resolution_side(b[:2]) for b in merged["size_buckets"])
        else:
            sides = tuple(_resolution_side(r) for r in merged["resolutions"])
        shuffles = int(merged.get("cache_shuffle_num", 0)) or (
            1 if merged.get("shuffle_tags", False) else 0
        )
        specs.append(
            DirectorySpec(
                path=str(merged["path"]),
                resolutions=sides,
                num_repeats=repeats,
                captions_per_item=max(1, shuffles),
                skip_empty_caption=bool(merged.get("skip_empty_caption", True)),
            )
        )
    return specs


def too_many_resolutions(specs: list[DirectorySpec]) -> bool:
    return any(len(spec.resolutions) > MAX_RESOLUTIONS for spec in specs)


@dataclass(frozen=True)
class DirectoryCount:
    """What a scan of one dataset directory found (the I/O part lives in simfiles)."""

    spec: DirectorySpec
    images: int
    videos: int


def _batch_size(value: Any, side: float) -> int:
    """int, or the `[[size, bs], ...]` entry whose size is nearest the bucket's side."""
    if isinstance(value, list):
        return int(min(value, key=lambda pair: abs(float(pair[0]) - side))[1])
    return int(value)


def first_batch_size(value: Any) -> int:
    return int(value[0][1]) if isinstance(value, list) else int(value)


def batches_per_epoch(
    counts: list[DirectoryCount],
    batch_size: Any,
    image_batch_size: Any,
    gas: int,
    dp: int,
    subsample_ratio: float | None = None,
) -> int:
    """Reference §4.5, simple case: buckets keyed by (resolution, image or video)."""
    buckets: dict[tuple[float, bool], int] = {}
    for count in counts:
        for side in count.spec.resolutions:
            for is_video, items in ((False, count.images), (True, count.videos)):
                entries = items * count.spec.captions_per_item
                key = (side, is_video)
                buckets[key] = buckets.get(key, 0) + int(entries * count.spec.num_repeats)
    total = 0
    for (side, is_video), n in buckets.items():
        mbs = _batch_size(batch_size if is_video else image_batch_size, side)
        total += n // (mbs * gas * dp)
    if subsample_ratio is not None:
        total = int(total * subsample_ratio)
    return total


# ----------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Numbers fixed once deepspeed.initialize ran."""

    global_batch: int
    steps_per_epoch: int
    save_every_n_steps: int | None = None
    eval_every_n_steps: int | None = None
    computed: list[str] = field(default_factory=list)  # "Computed ..." lines to print


def make_plan(config: dict[str, Any], world_size: int, steps_per_epoch: int) -> Plan:
    stages = int(config.get("pipeline_stages", 1))
    assert world_size % stages == 0, (
        f"world size ({world_size}) must be divisible by pipeline_stages ({stages})"
    )
    dp = world_size // stages
    gas = int(config.get("gradient_accumulation_steps", 1))
    global_batch = first_batch_size(config.get("micro_batch_size_per_gpu", 1)) * gas * dp
    plan = Plan(global_batch=global_batch, steps_per_epoch=steps_per_epoch)
    plan.save_every_n_steps = config.get("save_every_n_steps")
    plan.eval_every_n_steps = config.get("eval_every_n_steps")
    if "save_every_n_examples" in config:
        plan.save_every_n_steps = int(config["save_every_n_examples"]) // global_batch
        plan.computed.append(f"Computed save_every_n_steps = {plan.save_every_n_steps}")
    if config.get("eval_every_n_examples"):
        plan.eval_every_n_steps = int(config["eval_every_n_examples"]) // global_batch
        plan.computed.append(f"Computed eval_every_n_steps = {plan.eval_every_n_steps}")
    return plan


def learning_rate(config: dict[str, Any], scheduler: str, step: int, total_steps: int) -> float:
    """The lr after this step's scheduler update (what DeepSpeed logs)."""
    if "force_constant_lr" in config:
        return float(config["force_constant_lr"])
    base = float(config["optimizer"].get("lr", 1e-6))
    warmup = int(config.get("warmup_steps", 0))
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    after = step - warmup if warmup > 0 else step
    span = max(1, total_steps)
    if scheduler == "linear":
        return base * max(0.0, 1.0 - after / span)
    if scheduler == "cosine":
        eta_min = 1e-6
        return eta_min + (base - eta_min) * (1 + math.cos(math.pi * min(after, span) / span)) / 2
    return base


def momentum(config: dict[str, Any]) -> list[Any]:
    betas = config["optimizer"].get("betas", [0.9, 0.999])
    return [list(betas)] if isinstance(betas, list) else [betas]


def loss_at(step: int, start: float, decay: float) -> float:
    """A plausible, decreasing loss with a little deterministic jitter."""
    floor = start * 0.4
    trend = floor + (start - floor) * decay ** (step - 1)
    return trend * (1.0 + random.Random(step).uniform(-0.03, 0.03))


def resume_position(saved_step: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, next step) after a checkpoint at saved_step (the loader's epoch has advanced
    when it handed out the epoch's last batch)."""
    return saved_step // max(1, steps_per_epoch) + 1, saved_step + 1


# ----------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class Knobs:
    """The DPD_SIM_* environment variables (documented in train.py)."""

    step_seconds: float = 0.05
    cache_seconds: float = 0.1
    startup_seconds: float = 0.0
    steps_per_epoch: int | None = None
    fail: str = ""
    fail_step: int = 1
    grandchild: bool = False
    loss_start: float = 0.12
    loss_decay: float = 0.97

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Knobs:
        fail, _, step = env.get("DPD_SIM_FAIL", "").partition(":")
        override = env.get("DPD_SIM_STEPS_PER_EPOCH")
        return cls(
            step_seconds=float(env.get("DPD_SIM_STEP_SECONDS", "0.05")),
            cache_seconds=float(env.get("DPD_SIM_CACHE_SECONDS", "0.1")),
            startup_seconds=float(env.get("DPD_SIM_STARTUP_SECONDS", "0")),
            steps_per_epoch=int(override) if override else None,
            fail=fail,
            fail_step=int(step) if step else 1,
            grandchild=env.get("DPD_SIM_GRANDCHILD") == "1",
            loss_start=float(env.get("DPD_SIM_LOSS_START", "0.12")),
            loss_decay=float(env.get("DPD_SIM_LOSS_DECAY", "0.97")),
        )
