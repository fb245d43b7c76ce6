"""Validating the ``config`` and ``dataset`` parts of a job document (reference §2, §3).

Output: the normalized diffusion-pipe main config (groups eval/save/optimization flattened,
``model.type`` set, ``output_dir``/``dataset`` absent: the daemon sets them) and the dataset
part (``directories[].path`` canonical, ``path_id`` accepted). Known keys are type- and
range-checked from the tables of ``dpd.jobs.model_rules``; unknown keys pass through in TOML
form. Cross-field rules that need the GPU layout live in ``dpd.jobs.spec``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from dpd.jobs import model_rules as mr
from dpd.jobs.checker import Checker, describe
from dpd.jobs.paths import safetensors_count

_TABLES: Final = ("model", "adapter", "optimizer", "monitoring")
_PATH: Final = mr.Rule(mr.Kind.PATH)
_FILE: Final = mr.Rule(mr.Kind.FILE)
_STR: Final = mr.Rule(mr.Kind.STR)
_WEIGHT: Final = mr.Rule(mr.Kind.NUMBER)


def _known_or_passthrough(
    check: Checker, raw: Mapping[str, Any], known: Mapping[str, mr.Rule], prefix: str
) -> dict[str, Any]:
    """Every entry of a table: known keys by their rule, the rest as TOML-safe pass-through."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        field = f"{prefix}.{key}"
        if key in mr.DEAD_KEYS:
            check.error(field, mr.DEAD_KEYS[key])
            continue
        rule = known.get(key)
        if rule is not None:
            result = check.value(rule, value, field)
        elif check.key_name(key, field):
            result = check.passthrough(value, field)
        else:
            continue
        if result is not Checker.BAD:
            out[key] = result
    return out


# ------------------------------------------------------------------ config


def validate_config(
    raw: Any, model_type: str, rules: mr.ModelRules | None, check: Checker
) -> dict[str, Any]:
    config = check.mapping(raw, "config", required=True)
    if config is None:
        return {}
    _refuse_owned_keys(config, "config", check)
    flat = _flatten_groups(config, check)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        field = check.where(key)
        if key in mr.OWNED_KEYS:
            continue  # reported by _refuse_owned_keys
        if key == "resume_from_checkpoint":
            check.error(field, "set resume_from_checkpoint at the top level of the job")
            continue
        result = _config_entry(key, value, field, model_type, rules, check)
        if result is not Checker.BAD:
            out[key] = result
    _require_config_keys(flat, check)
    if rules is not None and not rules.full_finetune and "adapter" not in flat:
        message = f"{rules.model_type} cannot save a full fine-tune; give an adapter table"
        check.error("config.adapter", message)
    out.setdefault("steps_per_print", 1)  # the daemon parses every step line
    return out


def _config_entry(
    key: str, value: Any, field: str, model_type: str, rules: mr.ModelRules | None, check: Checker
) -> Any:
    if key == "model":
        return _model(value, model_type, rules, check)
    if key == "adapter":
        return _adapter(value, rules, check)
    if key == "optimizer":
        return _optimizer(value, check)
    if key == "monitoring":
        return _monitoring(value, check)
    if key == "eval_datasets":
        return _eval_datasets(value, field, check)
    if key in mr.DEAD_KEYS:
        check.error(field, mr.DEAD_KEYS[key])
        return Checker.BAD
    if key in mr.TOP_LEVEL_KEYS:
        return check.value(mr.TOP_LEVEL_KEYS[key], value, field)
    return check.passthrough(value, field)


def _refuse_owned_keys(node: Any, field: str, check: Checker) -> None:
    """output_dir and dataset are the daemon's, wherever they appear in the config."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in mr.OWNED_KEYS:
                check.error(f"{field}.{key}", "is set by the daemon; remove it")
            _refuse_owned_keys(value, f"{field}.{key}", check)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            _refuse_owned_keys(item, f"{field}[{index}]", check)


def _flatten_groups(config: Mapping[str, Any], check: Checker) -> dict[str, Any]:
    """config.eval/save/optimization keys become top-level keys (DESIGN §3)."""
    flat: dict[str, Any] = {}

    def put(key: str, value: Any, field: str) -> None:
        if not check.key_name(key, field):
            return
        if key in flat:
            check.error(field, f"given twice (also as {check.where(key)})")
            return
        flat[key] = value
        check.origin[key] = field

    for key, value in config.items():
        if key in mr.CONFIG_GROUPS:
            group = check.mapping(value, f"config.{key}")
            for inner, item in (group or {}).items():
                put(inner, item, f"config.{key}.{inner}")
        else:
            put(key, value, f"config.{key}")
    return flat


def _require_config_keys(flat: Mapping[str, Any], check: Checker) -> None:
    for key in ("epochs", "model", "optimizer"):
        if key not in flat:
            check.error(f"config.{key}", "required")
    if not any(key in flat for key in mr.SAVE_FREQUENCY_KEYS):
        check.error("config.save", f"one of {', '.join(mr.SAVE_FREQUENCY_KEYS)} is required")


def _model(
    raw: Any, model_type: str, rules: mr.ModelRules | None, check: Checker
) -> dict[str, Any] | Any:
    model = check.mapping(raw, "config.model", required=True)
    if model is None:
        return Checker.BAD
    out: dict[str, Any] = {"type": model_type}
    for key, value in model.items():
        field = f"config.model.{key}"
        if key == "type":
            continue  # checked against model_type by the caller
        if key in mr.MODEL_PATH_KEYS:
            result = check.path(value, field)
        elif key == "text_encoders":
            result = _text_encoders(value, field, check)
        elif key == "merge_adapters":
            result = _path_list(value, field, check)
        else:
            result = _known_or_passthrough(
                check, {key: value}, mr.MODEL_COMMON_KEYS, "config.model"
            ).get(key, Checker.BAD)
        if result is not Checker.BAD:
            out[key] = result
    if "dtype" not in model:
        check.error("config.model.dtype", "required")
    if rules is not None:
        _require_model_keys(model, rules, check)
    return out


def _require_model_keys(model: Mapping[str, Any], rules: mr.ModelRules, check: Checker) -> None:
    if any(all(key in model for key in group) for group in rules.required):
        return
    if len(rules.required) == 1:
        for key in rules.required[0]:
            if key not in model:
                check.error(f"config.model.{key}", f"required for model type {rules.model_type}")
        return
    options = " or ".join(" + ".join(group) for group in rules.required)
    check.error("config.model", f"{rules.model_type} needs {options}")


def _text_encoders(value: Any, field: str, check: Checker) -> Any:
    if not isinstance(value, list) or not value:
        check.error(
            field, f"expected a list of tables with path (or paths) and type, got {describe(value)}"
        )
        return Checker.BAD
    out = []
    for index, item in enumerate(value):
        entry_field = f"{field}[{index}]"
        entry = check.mapping(item, entry_field, required=True)
        if entry is None:
            continue
        if "path" not in entry and "paths" not in entry:
            check.error(entry_field, "needs path or paths")
        rest = {k: v for k, v in entry.items() if k not in ("path", "paths")}
        cleaned = _known_or_passthrough(check, rest, {"type": _STR}, entry_field)
        if "path" in entry:
            cleaned["path"] = check.path(entry["path"], f"{entry_field}.path")
        if "paths" in entry:
            paths = entry["paths"]
            cleaned["paths"] = (
                check.path(paths, f"{entry_field}.paths")
                if not isinstance(paths, list)
                else _path_list(paths, f"{entry_field}.paths", check)
            )
        out.append({k: v for k, v in cleaned.items() if v is not Checker.BAD})
    return out


def _path_list(value: Any, field: str, check: Checker) -> Any:
    """A list of paths, or of tables holding a path (merge_adapters, text encoder paths)."""
    if not isinstance(value, list):
        check.error(field, f"expected a list of paths, got {describe(value)}")
        return Checker.BAD
    out: list[Any] = []
    for index, item in enumerate(value):
        item_field = f"{field}[{index}]"
        if isinstance(item, Mapping):
            entry = _known_or_passthrough(check, item, {"path": _PATH}, item_field)
            if "path" not in item:
                check.error(item_field, "needs path")
            out.append(entry)
        else:
            out.append(check.path(item, item_field))
    if Checker.BAD in out:
        return Checker.BAD
    if len({type(item) for item in out}) > 1:
        check.error(field, "must not mix paths and tables")
        return Checker.BAD
    return out


def _adapter(raw: Any, rules: mr.ModelRules | None, check: Checker) -> Any:
    adapter = check.mapping(raw, "config.adapter", required=True)
    if adapter is None:
        return Checker.BAD
    if "alpha" in adapter:
        check.error("config.adapter.alpha", "must not be set: diffusion-pipe forces alpha = rank")
    for key in ("type", "rank"):
        if key not in adapter:
            check.error(f"config.adapter.{key}", "required when an adapter is given")
    rest = {k: v for k, v in adapter.items() if k not in ("alpha", "fuse_adapters")}
    out = _known_or_passthrough(check, rest, mr.ADAPTER_KEYS, "config.adapter")
    kind = out.get("type")
    if rules is not None and kind is not None and kind not in rules.adapter_types:
        allowed = ", ".join(rules.adapter_types)
        message = f"{rules.model_type} saves only {allowed} adapters, got {kind!r}"
        check.error("config.adapter.type", message)
    if "init_from_existing" in out and check.data_roots is not None:
        _check_init_from_existing(out["init_from_existing"], rules, check)
    if "fuse_adapters" in adapter:
        fused = _fuse_adapters(adapter["fuse_adapters"], rules, check)
        if fused is not Checker.BAD:
            out["fuse_adapters"] = fused
    return out


def _check_init_from_existing(path: str, rules: mr.ModelRules | None, check: Checker) -> None:
    """A directory holding exactly one .safetensors (Flux also takes the file itself)."""
    field = "config.adapter.init_from_existing"
    count = safetensors_count(path)
    if count is None:
        if rules is None or rules.model_type != "flux":
            check.error(field, "must be a directory holding one .safetensors file (e.g. epoch5)")
    elif count != 1:
        check.error(field, f"the directory must hold exactly one .safetensors file, found {count}")


def _fuse_adapters(value: Any, rules: mr.ModelRules | None, check: Checker) -> Any:
    field = "config.adapter.fuse_adapters"
    if rules is not None and rules.model_type != "flux":
        check.error(field, "only the flux model type can fuse adapters")
        return Checker.BAD
    if not isinstance(value, list):
        check.error(field, f"expected a list of {{path, weight}} tables, got {describe(value)}")
        return Checker.BAD
    out = []
    for index, item in enumerate(value):
        entry = check.mapping(item, f"{field}[{index}]", required=True)
        if entry is None:
            continue
        if "path" not in entry:
            check.error(f"{field}[{index}].path", "required")
        known = {"path": _PATH, "weight": _WEIGHT}
        out.append(_known_or_passthrough(check, entry, known, f"{field}[{index}]"))
    return out


def _optimizer(raw: Any, check: Checker) -> Any:
    optimizer = check.mapping(raw, "config.optimizer", required=True)
    if optimizer is None:
        return Checker.BAD
    out = _known_or_passthrough(check, optimizer, mr.OPTIMIZER_KEYS, "config.optimizer")
    if "type" not in optimizer:
        check.error("config.optimizer.type", "required")
    elif out.get("type") == "":
        check.error("config.optimizer.type", "must not be empty")
    if "beta2_half_life" in optimizer and "betas" not in optimizer:
        check.error("config.optimizer.beta2_half_life", "needs betas")
    return out


def _monitoring(raw: Any, check: Checker) -> Any:
    monitoring = check.mapping(raw, "config.monitoring", required=True)
    if monitoring is None:
        return Checker.BAD
    out = _known_or_passthrough(check, monitoring, mr.MONITORING_KEYS, "config.monitoring")
    if out.get("enable_wandb") is True:
        for key in mr.WANDB_REQUIRED:
            if key not in monitoring:
                check.error(f"config.monitoring.{key}", "required when enable_wandb is true")
    return out


def _eval_datasets(value: Any, field: str, check: Checker) -> Any:
    if not isinstance(value, list):
        check.error(field, f"expected a list of {{name, config}} tables, got {describe(value)}")
        return Checker.BAD
    out = []
    for index, item in enumerate(value):
        item_field = f"{field}[{index}]"
        if isinstance(item, str):
            check.error(
                item_field,
                "use the table form {name = ..., config = ...}: train.py "
                "crashes on the string form in a fresh run",
            )
            continue
        entry = check.mapping(item, item_field, required=True)
        if entry is None:
            continue
        for key in ("name", "config"):
            if key not in entry:
                check.error(f"{item_field}.{key}", "required")
        known = {"name": _STR, "config": _FILE}
        out.append(_known_or_passthrough(check, entry, known, item_field))
    return out


# ------------------------------------------------------------------ dataset

_DIRECTORY_KEYS: Final = {**mr.DATASET_KEYS, **mr.DIRECTORY_ONLY_KEYS}


def validate_dataset(raw: Any, rules: mr.ModelRules | None, check: Checker) -> dict[str, Any]:
    dataset = check.mapping(raw, "dataset", required=True)
    if dataset is None:
        return {}
    out: dict[str, Any] = {}
    for key, value in dataset.items():
        field = f"dataset.{key}"
        if key in ("directories", "directory"):
            continue
        if key in mr.DIRECTORY_ONLY_KEYS:
            check.error(field, "belongs in each directories[] entry")
            continue
        known = {**mr.DATASET_KEYS, **mr.DATASET_TOP_ONLY_KEYS}
        out.update(_known_or_passthrough(check, {key: value}, known, "dataset"))
    out["directories"] = []
    for field, raw_entry, entry in _directories(dataset, check):
        out["directories"].append(entry)
        given = {*dataset, *raw_entry}  # keys the user wrote, valid or not
        _check_buckets({**out, **entry}, given, field, rules, check)
    return out


def _directories(
    dataset: Mapping[str, Any], check: Checker
) -> list[tuple[str, Mapping[str, Any], dict[str, Any]]]:
    """(field, raw entry, normalized entry) for each acceptable directory."""
    if "directories" in dataset and "directory" in dataset:
        check.error("dataset.directory", "give directories or directory, not both")
    field = "dataset.directory" if "directory" in dataset else "dataset.directories"
    value = dataset.get("directories", dataset.get("directory"))
    if not isinstance(value, list) or not value:
        check.error(field, f"expected a non-empty list of tables, got {describe(value)}")
        return []
    out = []
    for index, item in enumerate(value):
        entry = _directory(item, f"{field}[{index}]", check)
        if entry is not None:
            out.append((f"{field}[{index}]", item, entry))
    return out


def _directory(item: Any, field: str, check: Checker) -> dict[str, Any] | None:
    entry = check.mapping(item, field, required=True)
    if entry is None:
        return None
    entry = dict(entry)
    if "path_id" in entry:  # the API document's alias
        alias = entry.pop("path_id")
        if "path" in entry and entry["path"] != alias:
            check.error(f"{field}.path_id", "contradicts path; give one of them")
        entry.setdefault("path", alias)
    if "path" not in entry:
        check.error(f"{field}.path", "required")
        return None
    for key in mr.DATASET_TOP_ONLY_KEYS:
        if key in entry:
            check.error(f"{field}.{key}", "belongs at the dataset level, not in a directory")
            entry.pop(key)
    cleaned = _known_or_passthrough(check, entry, _DIRECTORY_KEYS, field)
    if "path" not in cleaned:
        return None  # reported
    return {"path": cleaned.pop("path"), **cleaned}


def _check_buckets(
    merged: Mapping[str, Any],
    given: set[str],
    field: str,
    rules: mr.ModelRules | None,
    check: Checker,
) -> None:
    """Rules on one directory with the dataset-level defaults applied (reference §3.1)."""
    if not {"resolutions", "size_buckets"} & given:
        check.error(
            f"{field}.resolutions",
            "required (here or for the whole dataset) unless size_buckets is given",
        )
    if merged.get("enable_ar_bucket") is True and "ar_buckets" not in merged:
        for key in ("min_ar", "max_ar", "num_ar_buckets"):
            if key not in given:
                check.error(
                    f"{field}.{key}", "required with enable_ar_bucket unless ar_buckets is given"
                )
        if merged.get("min_ar", 0) > merged.get("max_ar", float("inf")):
            check.error(f"{field}.min_ar", "must not exceed max_ar")
    if rules is None:
        return
    if rules.media is mr.Media.IMAGE:
        if any(frames > 1 for frames in merged.get("frame_buckets", [])):
            check.error(
                f"{field}.frame_buckets",
                f"{rules.model_type} is an image model; frame buckets above 1 are for videos",
            )
        if any(bucket[2] > 1 for bucket in merged.get("size_buckets", [])):
            check.error(
                f"{field}.size_buckets",
                f"{rules.model_type} is an image model; frame counts above 1 are for videos",
            )
    if rules.model_type == "cosmos":
        _check_cosmos(merged, field, check)


def _check_cosmos(merged: Mapping[str, Any], field: str, check: Checker) -> None:
    """Cosmos quits with exit 0 unless every size bucket is one it supports."""
    for key in mr.COSMOS_FORBIDDEN_DATASET_KEYS:
        if key in merged:
            check.error(f"{field}.{key}", "cosmos takes size_buckets instead")
    buckets = merged.get("size_buckets")
    if not buckets:
        check.error(f"{field}.size_buckets", "required for cosmos")
        return
    for bucket in buckets:
        if tuple(bucket) not in mr.COSMOS_SIZE_BUCKETS:
            check.error(f"{field}.size_buckets", f"{bucket} is not a size bucket cosmos supports")
