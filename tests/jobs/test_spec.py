"""Job documents in, JobSpec or every FieldError out (no daemon, no event loop)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dpd.errors import BadRequest, ValidationFailed
from dpd.jobs.model_rules import MODEL_RULES, MODEL_TYPES
from dpd.jobs.spec import TASK_ID_RE, JobSpec, parse_job_document, recheck_paths, validate_job
from tests.jobs.jobdocs import API_EXAMPLE, api_example, job_doc, make_dataset


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    return data


def errors(doc: Any, root: Path, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        validate_job(doc, data_roots=[root], **kwargs)
    found = {e.field: e.message for e in caught.value.errors}
    assert caught.value.data == {"errors": [e.as_dict() for e in caught.value.errors]}
    return found


def only_error(doc: Any, root: Path) -> tuple[str, str]:
    found = errors(doc, root)
    assert len(found) == 1, found
    return next(iter(found.items()))


# ------------------------------------------------------------------ parsing


def test_parse_json_and_yaml_give_the_same_document() -> None:
    doc = {"model_type": "wan", "config": {"epochs": 3, "optimizer": {"lr": 1e-4}}}
    yaml_text = "model_type: wan\nconfig:\n  epochs: 3\n  optimizer: {lr: 1.0e-4}\n"
    assert parse_job_document(json.dumps(doc).encode(), "json") == doc
    assert parse_job_document(yaml_text.encode(), "yaml") == doc
    assert parse_job_document(b"\xef\xbb\xbf" + json.dumps(doc).encode(), "json") == doc


@pytest.mark.parametrize(
    ("data", "fmt", "fragment"),
    [
        (b'{"model_type": ', "json", "not valid JSON"),
        (b"a: [1, 2", "yaml", "not valid YAML"),
        (b'{"a": "\xff"}', "json", "not UTF-8"),
        (b"[1, 2]", "json", "mapping"),
        (b"", "yaml", "mapping"),
        (b"just a string", "yaml", "mapping"),
        (b'{"lr": NaN}', "json", "not valid JSON"),
        (b"when: !!binary aGk=\n", "yaml", "unsupported value of type bytes"),
        (b"1: one\n", "yaml", "keys must be strings"),
        (b'{"a": "\\ud800"}', "json", "not valid Unicode"),
        (b"{}", "toml", "unsupported job document format"),
        (b"[" * 5000 + b"]" * 5000, "json", ""),
    ],
)
def test_unreadable_documents_are_bad_requests(data: bytes, fmt: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_job_document(data, fmt)
    assert caught.value.code == 400
    assert fragment in caught.value.message


def test_a_yaml_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(BadRequest, match="too large"):
        parse_job_document("\n".join(lines).encode(), "yaml")


def test_validate_refuses_a_document_that_is_not_a_mapping(root: Path) -> None:
    with pytest.raises(BadRequest):
        validate_job(["not", "a", "job"], data_roots=[root])


# ------------------------------------------------------------------ accepted jobs


def test_the_api_document_example_is_accepted_and_normalized(root: Path) -> None:
    spec = validate_job(api_example(root), data_roots=[root])
    assert spec.model_type == "wan"
    assert spec.gpu_ids == (0,)
    assert spec.required_gpus == 1
    assert spec.queue is False
    assert spec.priority == 0
    assert spec.description == "Wan LoRA 训练 - ODEO 数据集"
    assert spec.dataset["directories"] == [
        {"path": str(root / "train_data" / "3"), "num_repeats": 5}
    ]
    config = spec.config
    assert "eval" not in config and "save" not in config and "optimization" not in config
    assert config["eval_every_n_epochs"] == 1 and config["save_every_n_epochs"] == 5
    assert config["video_clip_mode"] == "single_beginning"
    assert config["model"]["type"] == "wan"
    assert config["model"]["transformer_dtype"] == "float8"
    assert config["optimizer"] == API_EXAMPLE["config"]["optimizer"]
    assert "output_dir" not in config and "dataset" not in config


def test_spec_survives_job_json_round_trip(root: Path) -> None:
    spec = validate_job(job_doc(root, gpu_ids=[1, 0], priority=5), data_roots=[root])
    again = JobSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.gpu_ids == (1, 0)
    renamed = spec.with_task_id("t-1")
    assert renamed.task_id == "t-1" and spec.task_id is None
    assert renamed.config == spec.config


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_an_accepted_job_rechecks_only_its_paths_on_another_host(
    root: Path, tmp_path: Path, model_type: str
) -> None:
    """A fleet host claiming a job accepted elsewhere (FLEET.md §9.2 step 5): nothing to
    say while every path is there; each path gone or outside this host's roots is named."""
    spec = validate_job(job_doc(root, model_type, gpu_ids=[0, 1]), data_roots=[root])
    assert recheck_paths(spec, [root]) == []
    dataset = Path(spec.dataset["directories"][0]["path"])
    for child in dataset.iterdir():
        child.unlink()
    dataset.rmdir()
    missing = recheck_paths(spec, [root])
    assert [e.field for e in missing] == ["dataset.directories[0].path"]
    assert "does not exist" in missing[0].message
    elsewhere = tmp_path / "other-root"
    elsewhere.mkdir()
    fields = {e.field for e in recheck_paths(spec, [elsewhere])}
    assert "dataset.directories[0].path" in fields
    assert any(f.startswith("config.model.") for f in fields), fields


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_model_type_accepts_a_minimal_lora_job(root: Path, model_type: str) -> None:
    spec = validate_job(job_doc(root, model_type), data_roots=[root])
    assert spec.config["model"]["type"] == model_type
    assert spec.config["steps_per_print"] == 1


FFT_REFUSED = {"hunyuan-video", "ltx-video", "sd3", "cosmos", "hidream", "omnigen2", "auraflow"}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_full_fine_tune_is_refused_up_front_where_it_cannot_be_saved(
    root: Path, model_type: str
) -> None:
    doc = job_doc(root, model_type)
    del doc["config"]["adapter"]
    if model_type in FFT_REFUSED:
        field, message = only_error(doc, root)
        assert field == "config.adapter"
        assert "full fine-tune" in message
    else:
        assert "adapter" not in validate_job(doc, data_roots=[root]).config


def test_fft_refusals_match_the_reference() -> None:
    assert {t for t, r in MODEL_RULES.items() if not r.full_finetune} == FFT_REFUSED


def test_user_values_are_kept_and_only_missing_defaults_added(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["steps_per_print"] = 10
    assert validate_job(doc, data_roots=[root]).config["steps_per_print"] == 10


def test_model_type_may_come_from_the_model_table(root: Path) -> None:
    doc = job_doc(root)
    del doc["model_type"]
    doc["config"]["model"]["type"] = "wan"
    assert validate_job(doc, data_roots=[root]).model_type == "wan"


def test_spool_jobs_always_queue(root: Path) -> None:
    assert validate_job(job_doc(root), data_roots=[root]).queue is False
    assert validate_job(job_doc(root, queue=True), data_roots=[root]).queue is True
    assert validate_job(job_doc(root, queue=False), data_roots=[root], source="spool").queue


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, (None, 1)),
        ({"gpu_id": 3}, ((3,), 1)),
        ({"gpu_id": None, "gpu_ids": None}, (None, 1)),
        ({"gpu_ids": [2, 3]}, ((2, 3), 2)),
        ({"gpu_id": 2, "gpu_ids": [2]}, ((2,), 1)),
        ({"data_parallel": 3}, (None, 3)),
    ],
)
def test_gpu_choice_and_required_gpus(
    root: Path, fields: dict[str, Any], expected: tuple[Any, int]
) -> None:
    spec = validate_job(job_doc(root, **fields), data_roots=[root])
    assert (spec.gpu_ids, spec.required_gpus) == expected


@pytest.mark.parametrize(
    ("stages", "fields", "required"),
    [(2, {}, 2), (2, {"gpu_ids": [0, 1, 2, 3]}, 4), (2, {"data_parallel": 2}, 4)],
)
def test_required_gpus_is_stages_times_data_parallel(
    root: Path, stages: int, fields: dict[str, Any], required: int
) -> None:
    doc = job_doc(root, **fields)
    doc["config"]["pipeline_stages"] = stages
    assert validate_job(doc, data_roots=[root]).required_gpus == required


@pytest.mark.parametrize("value", [True, "20250212_07-00-00"])
def test_resume_from_checkpoint_forms(root: Path, value: Any) -> None:
    spec = validate_job(job_doc(root, resume_from_checkpoint=value), data_roots=[root])
    assert spec.resume_from_checkpoint == value


def test_task_id_pattern_is_the_design_one() -> None:
    assert TASK_ID_RE.pattern == r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


# ------------------------------------------------------------------ pass-through


def test_unknown_keys_pass_through_everywhere(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["brand_new_option"] = {"depth": 2, "names": ["a", "b"]}
    doc["config"]["optimization"] = {"future_flag": True}
    doc["config"]["model"]["min_t"] = 0.1
    doc["config"]["optimizer"]["decouple"] = True
    doc["dataset"]["new_dataset_key"] = "x"
    doc["dataset"]["directories"][0]["per_dir_key"] = 3
    spec = validate_job(doc, data_roots=[root])
    assert spec.config["brand_new_option"] == {"depth": 2, "names": ["a", "b"]}
    assert spec.config["future_flag"] is True
    assert spec.config["model"]["min_t"] == 0.1
    assert spec.config["optimizer"]["decouple"] is True
    assert spec.dataset["new_dataset_key"] == "x"
    assert spec.dataset["directories"][0]["per_dir_key"] == 3


def test_pass_through_lists_mixing_ints_and_floats_become_floats(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["weights"] = [1, 0.5]
    assert validate_job(doc, data_roots=[root]).config["weights"] == [1.0, 0.5]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "null has no TOML form"),
        ([1, "a"], "must not mix"),
        ([[1], {"a": 1}], "must not mix"),
        ({"bad key": 1}, "not a valid key name"),
        (2**64, "64-bit"),
        (float("inf"), "finite"),
        ({"inner": [None]}, "null"),
    ],
)
def test_pass_through_values_must_be_toml_representable(
    root: Path, value: Any, fragment: str
) -> None:
    doc = job_doc(root)
    doc["config"]["extra"] = value
    field, message = only_error(doc, root)
    assert field == "config.extra"
    assert fragment in message


def test_unknown_key_names_must_be_plain(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]['x"]\n[model]'] = 1
    assert "not a valid key name" in only_error(doc, root)[1]


@pytest.mark.parametrize(
    "place",
    [
        ("config", "output_dir"),
        ("config", "dataset"),
        ("config.save", "output_dir"),
        ("config.model", "dataset"),
        ("config.brand_new", "output_dir"),
    ],
)
def test_owned_keys_are_refused_anywhere_in_config(root: Path, place: tuple[str, str]) -> None:
    doc = job_doc(root)
    table = doc
    for part in place[0].split("."):
        table = table.setdefault(part, {})
    table[place[1]] = "/elsewhere"
    field, message = only_error(doc, root)
    assert field == f"{place[0]}.{place[1]}"
    assert "set by the daemon" in message


def test_owned_keys_inside_lists_are_refused(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["eval_datasets"] = [{"name": "e", "config": "x", "dataset": "/d"}]
    assert "config.eval_datasets[0].dataset" in errors(doc, root)


# ------------------------------------------------------------------ every problem at once


def test_every_problem_is_reported_at_once(root: Path) -> None:
    doc = job_doc(root, gpu_id="zero", priority="high", task_id="../x")
    doc["config"]["epochs"] = 0
    doc["config"]["optimizer"]["lr"] = "fast"
    doc["config"]["model"]["dtype"] = "bf16"
    doc["config"]["adapter"]["alpha"] = 16
    doc["config"]["lr_scheduler"] = "warm"
    doc["dataset"]["directories"][0]["num_repeats"] = 0
    found = errors(doc, root)
    assert found == {
        "gpu_id": "expected an integer, got 'zero'",
        "priority": "expected an integer, got 'high'",
        "task_id": found["task_id"],
        "config.epochs": "must be >= 1, got 0",
        "config.optimizer.lr": "expected a number, got 'fast'",
        "config.model.dtype": found["config.model.dtype"],
        "config.adapter.alpha": "must not be set: diffusion-pipe forces alpha = rank",
        "config.lr_scheduler": "expected one of 'constant', 'linear', 'cosine', got 'warm'",
        "dataset.directories[0].num_repeats": "must be > 0, got 0",
    }
    assert "unknown dtype 'bf16'" in found["config.model.dtype"]
    assert "must match" in found["task_id"]


def test_errors_name_the_group_the_user_wrote(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["save"]["save_every_n_epochs"] = "often"
    doc["config"]["eval"] = {"eval_every_n_epochs": -1}
    found = errors(doc, root)
    assert set(found) == {"config.save.save_every_n_epochs", "config.eval.eval_every_n_epochs"}


def test_a_key_given_twice_is_refused(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["save_every_n_epochs"] = 2
    field, message = only_error(doc, root)
    places = {"config.save.save_every_n_epochs", "config.save_every_n_epochs"}
    assert field in places
    assert message == f"given twice (also as {(places - {field}).pop()})"


def test_an_empty_document_lists_every_required_field(root: Path) -> None:
    assert set(errors({}, root)) == {"model_type", "dataset", "config"}
    found = errors({"model_type": "wan", "dataset": {}, "config": {}}, root)
    assert set(found) == {
        "dataset.directories",
        "config.epochs",
        "config.model",
        "config.optimizer",
        "config.save",
    }


# ------------------------------------------------------------------ single rules

CASES: list[tuple[str, Any, str, str]] = [
    # (dotted path to set, value, field expected, message fragment)
    ("unknown_field", 1, "unknown_field", "unknown job field"),
    ("model_type", "sdxl-turbo", "model_type", "unknown model type"),
    ("gpu_id", True, "gpu_id", "expected an integer"),
    ("gpu_id", -1, "gpu_id", "must be >= 0"),
    ("gpu_ids", [], "gpu_ids", "non-empty list"),
    ("gpu_ids", [0, 0], "gpu_ids", "twice"),
    ("gpu_ids", [0, "1"], "gpu_ids[1]", "expected an integer"),
    ("description", 5, "description", "expected a string"),
    ("description", "x" * 10_001, "description", "longer than"),
    ("queue", "yes", "queue", "expected true or false"),
    ("min_memory_mb", 0, "min_memory_mb", "must be >= 1"),
    ("resume_from_checkpoint", "../other", "resume_from_checkpoint", "run folder name"),
    ("task_id", "a" * 65, "task_id", "must match"),
    ("config", [], "config", "expected a table"),
    ("config.epochs", 1.5, "config.epochs", "expected an integer, got 1.5"),
    ("config.epochs", True, "config.epochs", "expected an integer, got True"),
    ("config.max_steps", 0, "config.max_steps", "must be >= 1"),
    ("config.micro_batch_size_per_gpu", [[512, 0]], "config.micro_batch_size_per_gpu", ">= 1"),
    ("config.gradient_clipping", -1, "config.gradient_clipping", "must be >= 0"),
    ("config.save_dtype", "fp16", "config.save_dtype", "unknown dtype"),
    ("config.activation_checkpointing", "yes", "config.activation_checkpointing", "one of"),
    ("config.activation_checkpointing", 1, "config.activation_checkpointing", "one of"),
    ("config.video_clip_mode", "random", "config.video_clip_mode", "single_beginning"),
    ("config.uncond_fraction", 1.5, "config.uncond_fraction", "must be <= 1"),
    ("config.eval_datasets", ["/x.toml"], "config.eval_datasets[0]", "table form"),
    ("config.eval_datasets", [{"name": "e"}], "config.eval_datasets[0].config", "required"),
    ("config.resume_from_checkpoint", True, "config.resume_from_checkpoint", "top level"),
    (
        "config.image_eval_micro_batch_size_per_gpu",
        1,
        "config.image_eval_micro_batch_size_per_gpu",
        "not read",
    ),
    ("config.eval", 5, "config.eval", "expected a table"),
    ("config.model.transformer_dtype", "nf4", "config.model.transformer_dtype", "unknown dtype"),
    ("config.model.type", "flux", "config.model.type", "contradicts model_type"),
    ("config.model.timestep_sample_method", "x", "config.model.timestep_sample_method", "one of"),
    ("config.adapter.type", "loha", "config.adapter.type", "one of 'lora', 'lokr'"),
    ("config.adapter.rank", 0, "config.adapter.rank", "must be >= 1"),
    ("config.adapter.dtype", "half", "config.adapter.dtype", "unknown dtype"),
    ("config.adapter.dropout", 2, "config.adapter.dropout", "must be <= 1"),
    ("config.adapter", "lora", "config.adapter", "expected a table"),
    ("config.optimizer.type", "", "config.optimizer.type", "must not be empty"),
    ("config.optimizer.betas", [0.9], "config.optimizer.betas", "at least"),
    ("config.optimizer.betas", [0.9, 1.2], "config.optimizer.betas", "must be <= 1"),
    (
        "config.optimizer.gradient_release",
        "on",
        "config.optimizer.gradient_release",
        "true or false",
    ),
    ("config.optimizer.beta2_half_life", 10, "config.optimizer.beta2_half_life", "needs betas"),
    ("config.monitoring", {"enable_wandb": True}, "config.monitoring.wandb_api_key", "required"),
    ("config.partition_method", "manual", "config.partition_method", "partition_split"),
    ("config.partition_split", [3], "config.partition_split", "pipeline_stages - 1 = 0"),
    ("config.save_every_n_examples", 0, "config.save_every_n_examples", "must be >= 1"),
    ("dataset", "x", "dataset", "expected a table"),
    ("dataset.resolutions", [512, 768, 1024, 1280], "dataset.resolutions", "at most 3"),
    ("dataset.resolutions", [512, [512, 768]], "dataset.resolutions", "mixes"),
    ("dataset.resolutions", [], "dataset.resolutions", "non-empty"),
    ("dataset.frame_buckets", [1, 0], "dataset.frame_buckets", "integers >= 1"),
    ("dataset.ar_buckets", [0.5, -1], "dataset.ar_buckets", "numbers > 0"),
    ("dataset.size_buckets", [[512, 512]], "dataset.size_buckets", "[width, height, frames]"),
    ("dataset.num_repeats", 0, "dataset.num_repeats", "must be > 0"),
    ("dataset.subsample_ratio", 0, "dataset.subsample_ratio", "must be > 0"),
    ("dataset.caption_prefix", 3, "dataset.caption_prefix", "expected a string"),
    ("dataset.path", "/x", "dataset.path", "directories[] entry"),
    ("dataset.directories", [], "dataset.directories", "non-empty list"),
    ("dataset.directories", ["/x"], "dataset.directories[0]", "expected a table"),
    ("dataset.directories", [{"num_repeats": 1}], "dataset.directories[0].path", "required"),
]


def set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[last] = value


@pytest.mark.parametrize(("where", "value", "field", "fragment"), CASES)
def test_each_rule_reports_its_field(
    root: Path, where: str, value: Any, field: str, fragment: str
) -> None:
    doc = job_doc(root)
    set_path(doc, where, value)
    found = errors(doc, root)
    assert field in found, found
    assert fragment in found[field]


def test_wan_without_ckpt_path(root: Path) -> None:
    doc = job_doc(root)
    del doc["config"]["model"]["ckpt_path"]
    assert only_error(doc, root) == ("config.model.ckpt_path", "required for model type wan")


def test_hunyuan_video_needs_one_complete_alternative(root: Path) -> None:
    doc = job_doc(root, "hunyuan-video")
    validate_job(doc, data_roots=[root])  # ckpt_path alone
    del doc["config"]["model"]["ckpt_path"]
    for key in ("transformer_path", "vae_path", "llm_path"):
        (root / key).mkdir()
        doc["config"]["model"][key] = str(root / key)
    field, message = only_error(doc, root)
    assert field == "config.model"
    assert "ckpt_path or transformer_path + vae_path + llm_path + clip_path" in message
    (root / "clip_path").mkdir()
    doc["config"]["model"]["clip_path"] = str(root / "clip_path")
    validate_job(doc, data_roots=[root])


@pytest.mark.parametrize("model_type", ["sdxl", "flux", "sd3", "auraflow"])
def test_lora_only_models_refuse_lokr(root: Path, model_type: str) -> None:
    doc = job_doc(root, model_type)
    doc["config"]["adapter"]["type"] = "lokr"
    field, message = only_error(doc, root)
    assert field == "config.adapter.type"
    assert "only lora" in message


def test_adapter_needs_type_and_rank(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["adapter"] = {"dtype": "bfloat16"}
    assert set(errors(doc, root)) == {"config.adapter.type", "config.adapter.rank"}


def test_pipeline_stages_must_divide_the_gpus(root: Path) -> None:
    doc = job_doc(root, gpu_ids=[0, 1, 2])
    doc["config"]["pipeline_stages"] = 2
    field, message = only_error(doc, root)
    assert field == "gpu_ids" and "pipeline_stages=2" in message


def test_data_parallel_must_agree_with_gpu_ids(root: Path) -> None:
    assert only_error(job_doc(root, gpu_ids=[0, 1], data_parallel=1), root)[0] == "data_parallel"


def test_gpu_id_and_gpu_ids_must_agree(root: Path) -> None:
    assert only_error(job_doc(root, gpu_id=0, gpu_ids=[1]), root)[0] == "gpu_id"


def test_blocks_to_swap_rules(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["blocks_to_swap"] = 10
    doc["config"]["pipeline_stages"] = 2
    del doc["config"]["adapter"]
    messages = [e.message for e in _all_errors(doc, root) if e.field == "config.blocks_to_swap"]
    assert any("pipeline_stages = 1" in m for m in messages)
    assert any("needs an adapter" in m for m in messages)
    sdxl = job_doc(root, "sdxl")
    sdxl["config"]["optimization"] = {"blocks_to_swap": 4}
    field, message = only_error(sdxl, root)
    assert field == "config.optimization.blocks_to_swap"
    assert "not implemented for sdxl" in message


def _all_errors(doc: Any, root: Path) -> list[Any]:
    with pytest.raises(ValidationFailed) as caught:
        validate_job(doc, data_roots=[root])
    return caught.value.errors


def test_gradient_release_needs_data_parallel_one(root: Path) -> None:
    doc = job_doc(root, gpu_ids=[0, 1])
    doc["config"]["optimizer"]["gradient_release"] = True
    assert only_error(doc, root)[0] == "config.optimizer.gradient_release"
    doc["config"]["pipeline_stages"] = 2
    validate_job(doc, data_roots=[root])


def test_save_every_n_examples_below_the_global_batch(root: Path) -> None:
    doc = job_doc(root, gpu_ids=[0, 1])
    doc["config"]["save"] = {"save_every_n_examples": 3}
    doc["config"]["micro_batch_size_per_gpu"] = 2
    field, message = only_error(doc, root)
    assert field == "config.save.save_every_n_examples"
    assert "global batch size 4" in message


def test_a_save_frequency_is_required(root: Path) -> None:
    doc = job_doc(root)
    doc["config"]["save"] = {"checkpoint_every_n_epochs": 1}
    field, message = only_error(doc, root)
    assert field == "config.save" and "save_every_n_epochs" in message


def test_resolutions_are_required_unless_size_buckets(root: Path) -> None:
    doc = job_doc(root)
    del doc["dataset"]["resolutions"]
    field, message = only_error(doc, root)
    assert field == "dataset.directories[0].resolutions"
    assert "unless size_buckets" in message
    doc["dataset"]["directories"][0]["size_buckets"] = [[512, 512, 1]]
    validate_job(doc, data_roots=[root])
    del doc["dataset"]["directories"][0]["size_buckets"]
    doc["dataset"]["directories"][0]["resolutions"] = [[512, 768]]
    validate_job(doc, data_roots=[root])


def test_aspect_ratio_bucketing_needs_its_range(root: Path) -> None:
    doc = job_doc(root)
    doc["dataset"]["enable_ar_bucket"] = True
    assert set(errors(doc, root)) == {
        "dataset.directories[0].min_ar",
        "dataset.directories[0].max_ar",
        "dataset.directories[0].num_ar_buckets",
    }
    doc["dataset"].update(min_ar=2.0, max_ar=0.5, num_ar_buckets=7)
    assert only_error(doc, root)[0] == "dataset.directories[0].min_ar"
    doc["dataset"].update(min_ar=0.5, max_ar=2.0)
    validate_job(doc, data_roots=[root])


def test_image_models_refuse_video_frame_buckets(root: Path) -> None:
    doc = job_doc(root, "flux")
    doc["dataset"]["frame_buckets"] = [1, 33]
    field, message = only_error(doc, root)
    assert field == "dataset.directories[0].frame_buckets" and "image model" in message
    wan = job_doc(root, "wan")
    wan["dataset"]["frame_buckets"] = [1, 33]
    assert validate_job(wan, data_roots=[root]).dataset["frame_buckets"] == [1, 33]


def test_cosmos_needs_its_supported_size_buckets(root: Path) -> None:
    doc = job_doc(root, "cosmos")
    doc["dataset"]["size_buckets"] = [[512, 512, 1]]
    assert only_error(doc, root)[0] == "dataset.directories[0].size_buckets"
    doc["dataset"]["resolutions"] = [512]
    doc["dataset"]["size_buckets"] = [[960, 960, 121]]
    assert only_error(doc, root)[0] == "dataset.directories[0].resolutions"


def test_path_id_is_an_alias_of_path(root: Path) -> None:
    doc = job_doc(root)
    entry = doc["dataset"]["directories"][0]
    entry["path_id"] = entry.pop("path")
    spec = validate_job(doc, data_roots=[root])
    assert spec.dataset["directories"][0]["path"] == entry["path_id"]
    entry["path"] = str(make_dataset(root, "other"))
    assert only_error(doc, root)[0] == "dataset.directories[0].path_id"


# ------------------------------------------------------------------ paths in jobs


def test_paths_must_exist_under_a_data_root(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    doc = job_doc(root)
    doc["dataset"]["directories"].append({"path": str(root / "escape")})
    doc["dataset"]["directories"].append({"path": str(root / "datasets" / ".." / ".." / "..")})
    doc["dataset"]["directories"].append({"path": "relative/dir"})
    doc["dataset"]["directories"].append({"path": str(root / "missing")})
    doc["config"]["model"]["ckpt_path"] = str(outside)
    doc["config"]["model"]["llm_path"] = str(root) + "/x\x00y"
    found = errors(doc, root)
    assert "outside every data root" in found["dataset.directories[1].path"]
    assert "not under a data root" in found["dataset.directories[2].path"]
    assert "absolute" in found["dataset.directories[3].path"]
    assert "does not exist" in found["dataset.directories[4].path"]
    assert "not under a data root" in found["config.model.ckpt_path"]
    assert "control characters" in found["config.model.llm_path"]
    assert len(found) == 6


def test_dataset_directories_must_be_directories(root: Path) -> None:
    doc = job_doc(root)
    doc["dataset"]["directories"][0]["path"] = (
        doc["dataset"]["directories"][0]["path"] + "/img0.png"
    )
    doc["dataset"]["directories"][0]["mask_path"] = str(root / "nowhere")
    found = errors(doc, root)
    assert "not a directory" in found["dataset.directories[0].path"]
    assert "does not exist" in found["dataset.directories[0].mask_path"]


def test_paths_in_text_encoders_eval_datasets_and_adapters_are_checked(root: Path) -> None:
    doc = job_doc(root, "z_image")
    doc["config"]["model"]["text_encoders"] = [{"path": "/etc/passwd", "type": "lumina2"}]
    doc["config"]["eval_datasets"] = [{"name": "holdout", "config": "/etc/hosts"}]
    doc["config"]["adapter"]["init_from_existing"] = str(root / "nothing")
    doc["config"]["model"]["merge_adapters"] = ["/tmp"]
    found = errors(doc, root)
    assert set(found) == {
        "config.model.text_encoders[0].path",
        "config.eval_datasets[0].config",
        "config.adapter.init_from_existing",
        "config.model.merge_adapters[0]",
    }


def test_init_from_existing_needs_exactly_one_safetensors(root: Path) -> None:
    epoch = root / "runs" / "epoch5"
    epoch.mkdir(parents=True)
    doc = job_doc(root)
    doc["config"]["adapter"]["init_from_existing"] = str(epoch)
    assert "found 0" in only_error(doc, root)[1]
    (epoch / "adapter_model.safetensors").write_bytes(b"w")
    assert validate_job(doc, data_roots=[root]).config["adapter"]["init_from_existing"] == str(
        epoch
    )
    (epoch / "other.safetensors").write_bytes(b"w")
    assert "found 2" in only_error(doc, root)[1]


def test_fuse_adapters_only_for_flux(root: Path) -> None:
    lora = root / "fuse.safetensors"
    lora.write_bytes(b"w")
    doc = job_doc(root, "flux")
    doc["config"]["adapter"]["fuse_adapters"] = [{"path": str(lora), "weight": 0.8}]
    spec = validate_job(doc, data_roots=[root])
    assert spec.config["adapter"]["fuse_adapters"] == [{"path": str(lora), "weight": 0.8}]
    wan = job_doc(root, "wan")
    wan["config"]["adapter"]["fuse_adapters"] = copy.deepcopy(
        doc["config"]["adapter"]["fuse_adapters"]
    )
    assert only_error(wan, root)[0] == "config.adapter.fuse_adapters"


def test_eval_datasets_table_form_is_accepted(root: Path) -> None:
    eval_toml = root / "eval.toml"
    eval_toml.write_text("[[directory]]\n")
    doc = job_doc(root)
    doc["config"]["eval"] = {"eval_datasets": [{"name": "holdout", "config": str(eval_toml)}]}
    spec = validate_job(doc, data_roots=[root])
    assert spec.config["eval_datasets"] == [{"name": "holdout", "config": str(eval_toml)}]


def test_every_required_key_is_a_path_or_a_known_value() -> None:
    # Required keys are path-checked unless they are one of the two non-path values.
    for model_type, rules in MODEL_RULES.items():
        assert rules.required, model_type
        assert set(rules.required[0]) <= rules.path_keys | {"text_encoders", "max_sequence_length"}
