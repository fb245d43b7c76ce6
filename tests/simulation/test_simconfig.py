"""The simulated trainer's pure rules, without processes or disk."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from dpd.simulation.diffusion_pipe.simconfig import (
    DirectoryCount,
    DirectorySpec,
    Knobs,
    batches_per_epoch,
    cache_name,
    check_lr_scheduler,
    check_model,
    directory_specs,
    learning_rate,
    loss_at,
    make_plan,
    resume_position,
    set_config_defaults,
    too_many_resolutions,
)

BASE: dict[str, Any] = {
    "output_dir": "/o",
    "dataset": "/d.toml",
    "epochs": 2,
    "save_every_n_epochs": 1,
    "model": {"type": "wan", "ckpt_path": "/m", "dtype": "bfloat16"},
    "adapter": {"type": "lora", "rank": 8},
    "optimizer": {"type": "adamw_optimi", "lr": 1e-4},
}


def config(**changes: Any) -> dict[str, Any]:
    result = copy.deepcopy(BASE)
    result.update(changes)
    return result


def test_defaults_set_alpha_to_rank_and_adapter_dtype_to_model_dtype():
    cfg = config()
    set_config_defaults(cfg)
    assert cfg["adapter"]["alpha"] == 8
    assert cfg["adapter"]["dtype"] == "bfloat16"
    assert cfg["eval_datasets"] == [] and cfg["eval_before_first_step"] is True


@pytest.mark.parametrize(
    "key", ["save_every_n_epochs", "save_every_n_steps", "save_every_n_examples"]
)
def test_any_one_save_frequency_is_enough(key):
    cfg = config()
    del cfg["save_every_n_epochs"]
    cfg[key] = 4
    set_config_defaults(cfg)


@pytest.mark.parametrize(
    ("cfg", "error"),
    [
        ({"save_every_n_epochs": None}, AssertionError),
        ({"model": {"type": "wan", "ckpt_path": "/m", "dtype": "fp16"}}, KeyError),
        ({"save_dtype": "half"}, KeyError),
        ({"adapter": {"type": "lora", "rank": 8, "alpha": 8}}, NotImplementedError),
        ({"adapter": {"type": "dora", "rank": 8}}, NotImplementedError),
        ({"adapter": {"type": "lora"}}, KeyError),
    ],
)
def test_rejected_configs(cfg, error):
    merged = config(**cfg)
    if cfg.get("save_every_n_epochs", 1) is None:
        del merged["save_every_n_epochs"]
    with pytest.raises(error):
        set_config_defaults(merged)


def test_model_dispatch_and_required_keys():
    assert check_model(config()).lora_file == "adapter_model.safetensors"
    sdxl = check_model(config(model={"type": "sdxl", "checkpoint_path": "/x", "dtype": "float16"}))
    assert sdxl.lora_file == "lora.safetensors" and not sdxl.writes_adapter_config
    with pytest.raises(NotImplementedError, match="Model type nope is not implemented"):
        check_model(config(model={"type": "nope", "dtype": "float16"}))
    with pytest.raises(KeyError, match="ckpt_path"):
        check_model(config(model={"type": "hunyuan-video", "dtype": "float16"}))
    hunyuan = {"type": "hunyuan-video", "dtype": "float16"}
    hunyuan.update(transformer_path="t", vae_path="v", llm_path="l", clip_path="c")
    assert not check_model(config(model=hunyuan)).fft_supported


def test_cache_names():
    assert cache_name({"type": "hunyuan_video_15"}) == "hunyuan_video_1.5"
    assert (
        cache_name({"type": "ltx-video", "single_file_path": "/m/ltx-2b.safetensors"}) == "ltx-2b"
    )
    assert cache_name({"type": "cosmos_predict2", "llm_path": "/q"}) == "anima"
    assert cache_name({"type": "flux"}) == "flux"


def test_lr_scheduler_names():
    assert check_lr_scheduler({}) == "constant"
    with pytest.raises(NotImplementedError, match="Unknown lr_scheduler: step"):
        check_lr_scheduler({"lr_scheduler": "step"})


def test_dataset_specs_merge_defaults_and_validate():
    specs = directory_specs(
        {"resolutions": [512, [768, 512]], "num_repeats": 2, "directory": [{"path": "/a"}]}
    )
    assert specs[0].num_repeats == 2 and specs[0].resolutions[0] == 512
    assert specs[0].resolutions[1] == pytest.approx((768 * 512) ** 0.5)
    with pytest.raises(KeyError):
        directory_specs({"directory": [{"path": "/a"}]})
    with pytest.raises(ValueError):
        directory_specs({"resolutions": [512], "directory": [{"path": "/a", "num_repeats": 0}]})
    many = directory_specs({"resolutions": [1, 2, 3, 4], "directory": [{"path": "/a"}]})
    assert too_many_resolutions(many) and not too_many_resolutions(specs)


def test_steps_per_epoch_simple_and_per_bucket_flooring():
    spec = DirectorySpec(path="/a", resolutions=(512.0,), num_repeats=3)
    counts = [DirectoryCount(spec, images=7, videos=0)]
    assert batches_per_epoch(counts, 2, 2, gas=1, dp=1) == 10  # floor(21 / 2)
    assert batches_per_epoch(counts, 2, 2, gas=2, dp=2) == 2  # floor(21 / 8)
    two = DirectorySpec(path="/a", resolutions=(512.0, 1024.0))
    mixed = [DirectoryCount(two, images=5, videos=3)]
    # four buckets: floor(5/2) + floor(3/1) for each resolution
    assert batches_per_epoch(mixed, 1, 2, gas=1, dp=1) == 2 * (2 + 3)
    assert batches_per_epoch(mixed, [[512, 1], [1024, 3]], 2, 1, 1) == 2 + 3 + 2 + 1
    assert batches_per_epoch(counts, 1, 1, 1, 1, subsample_ratio=0.5) == 10


def test_plan_global_batch_and_computed_lines():
    plan = make_plan(config(save_every_n_examples=40, micro_batch_size_per_gpu=2), 4, 10)
    assert plan.global_batch == 8
    assert plan.save_every_n_steps == 5
    assert plan.computed == ["Computed save_every_n_steps = 5"]
    with pytest.raises(AssertionError):
        make_plan(config(pipeline_stages=3), 4, 10)


def test_resume_position_follows_the_loader_epoch():
    assert resume_position(7, 10) == (1, 8)
    assert resume_position(10, 10) == (2, 11)


def test_lr_warmup_and_schedules():
    cfg = config(warmup_steps=4)
    assert learning_rate(cfg, "constant", 1, 100) == pytest.approx(1e-4 * 2 / 4)
    assert learning_rate(config(), "linear", 50, 100) == pytest.approx(5e-5)
    assert learning_rate(config(), "cosine", 100, 100) == pytest.approx(1e-6)
    assert learning_rate(config(force_constant_lr=3e-5), "cosine", 9, 10) == 3e-5


def test_loss_decreases_in_trend():
    losses = [loss_at(step, 0.12, 0.97) for step in range(1, 101)]
    assert all(loss > 0 for loss in losses)
    assert sum(losses[-10:]) < sum(losses[:10])


def test_knobs_from_environment():
    knobs = Knobs.from_env({"DPD_SIM_FAIL": "oom:7", "DPD_SIM_STEPS_PER_EPOCH": "3"})
    assert (knobs.fail, knobs.fail_step, knobs.steps_per_epoch) == ("oom", 7, 3)
    assert Knobs.from_env({}) == Knobs()
