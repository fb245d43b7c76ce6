"""The job spec and its validation: one job document in, a normalized ``JobSpec`` out.

A REST body and a dropped file are the same document (DESIGN §3, API document §3.1). The
validator reports every problem at once as ``ValidationFailed([FieldError(field, message)])``
(422); a document that cannot be read at all is ``BadRequest`` (400). It is pure apart from
the path checks of ``dpd.jobs.paths`` (realpath and stat), so it runs without a daemon.

What it guarantees for an accepted spec: the config holds only TOML-representable values,
every key diffusion-pipe reads has the right type and range, and every path exists under a
data root; so the rendered configs are accepted by train.py and cannot quit early having
trained nothing (too many resolutions, FFT of a model that cannot save it, ...). Unknown keys
pass through (diffusion-pipe grows faster than dpd) but are still checked for TOML form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

import yaml

from dpd.errors import BadRequest, FieldError, ValidationFailed
from dpd.jobs import model_rules as mr
from dpd.jobs.checker import Checker, describe
from dpd.jobs.tables import validate_config, validate_dataset
from dpd.jobs.yamlload import YamlRefused, load_yaml

TASK_ID_RE: Final[re.Pattern[str]] = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RUN_NAME_RE: Final[re.Pattern[str]] = re.compile(r"^\d{8}_\d{2}-\d{2}-\d{2}$")
MAX_DEPTH: Final = 32
MAX_NODES: Final = 100_000
MAX_DESCRIPTION: Final = 10_000
MAX_GPU_INDEX: Final = 1023
MAX_PRIORITY: Final = 1_000_000
_PRIORITY: Final = mr.Rule(mr.Kind.INT, -MAX_PRIORITY, MAX_PRIORITY)
_QUEUE: Final = mr.Rule(mr.Kind.BOOL)
_MEMORY: Final = mr.Rule(mr.Kind.INT, 1)
_GPU_INDEX: Final = mr.Rule(mr.Kind.INT, 0, MAX_GPU_INDEX)
_DATA_PARALLEL: Final = mr.Rule(mr.Kind.INT, 1, MAX_GPU_INDEX + 1)
JOB_KEYS: Final = (
    "task_id",
    "gpu_id",
    "gpu_ids",
    "model_type",
    "description",
    "priority",
    "queue",
    "resume_from_checkpoint",
    "min_memory_mb",
    "data_parallel",
    "dataset",
    "config",
)


@dataclass(frozen=True)
class JobSpec:
    """A validated, normalized job; what job.json stores and what the rest of dpd reads."""

    task_id: str | None
    model_type: str
    description: str
    gpu_ids: tuple[int, ...] | None
    priority: int
    queue: bool
    resume_from_checkpoint: bool | str | None
    min_memory_mb: int | None
    required_gpus: int
    dataset: dict[str, Any]
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The fields as job.json stores them. Shallow: ``dataset`` and ``config`` are the
        spec's own dicts (it is encoded at once; asdict's deep copy was a tenth of the CPU
        of ingesting a job)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["gpu_ids"] = list(self.gpu_ids) if self.gpu_ids is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Reads what ``to_dict`` wrote (job.json); not a validator for user input."""
        gpu_ids = data.get("gpu_ids")
        return cls(
            task_id=data.get("task_id"),
            model_type=str(data["model_type"]),
            description=str(data.get("description", "")),
            gpu_ids=tuple(int(i) for i in gpu_ids) if gpu_ids is not None else None,
            priority=int(data.get("priority", 0)),
            queue=bool(data.get("queue", False)),
            resume_from_checkpoint=data.get("resume_from_checkpoint"),
            min_memory_mb=data.get("min_memory_mb"),
            required_gpus=int(data.get("required_gpus", 1)),
            dataset=dict(data.get("dataset") or {}),
            config=dict(data.get("config") or {}),
        )

    def with_task_id(self, task_id: str) -> JobSpec:
        return replace(self, task_id=task_id)


# ------------------------------------------------------------------ parsing (400)


def parse_job_document(data: bytes, fmt: str) -> Any:
    """fmt "json" or "yaml" (``load_yaml``: YAML 1.2 numbers, dates as strings, alias bombs
    refused). BadRequest (400) if unparseable, not UTF-8,
    or not a mapping at the top level."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadRequest(
            f"the job document is not UTF-8: {err.reason} at byte {err.start}"
        ) from err
    fmt = fmt.lower()
    try:
        if fmt == "json":
            doc = json.loads(text, parse_constant=_refuse_constant)
        elif fmt in ("yaml", "yml"):
            doc = load_yaml(text)
        else:
            raise BadRequest(f"unsupported job document format {fmt!r}; use json or yaml")
    except YamlRefused as err:
        raise BadRequest(f"the job document is refused: {_one_line(err)}") from err
    except (ValueError, yaml.YAMLError) as err:
        raise BadRequest(f"the job document is not valid {fmt.upper()}: {_one_line(err)}") from err
    except RecursionError as err:
        raise BadRequest("the job document is nested too deeply") from err
    check_structure(doc)
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300]


def check_structure(doc: Any) -> None:
    """BadRequest unless ``doc`` is a mapping of plain JSON data (string keys, no dates or
    binary from YAML, valid Unicode), of bounded depth and size. Iterative and counting
    visits, so a YAML alias bomb stops at MAX_NODES instead of running for ever."""
    if not isinstance(doc, Mapping):
        raise BadRequest("the job document must be a mapping (an object) at the top level")
    stack: list[tuple[Any, int]] = [(doc, 1)]
    visited = 0
    try:
        while stack:
            node, depth = stack.pop()
            visited += 1
            if visited > MAX_NODES or depth > MAX_DEPTH:
                raise BadRequest("the job document is too large or nested too deeply")
            kind = type(node)  # exact types first: isinstance against an ABC is slow
            if kind is str:
                node.encode()
            elif kind in _SCALARS or node is None:
                continue
            elif kind is dict or isinstance(node, Mapping):
                for key, value in node.items():
                    if type(key) is not str and not isinstance(key, str):
                        raise BadRequest(f"keys must be strings, got {key!r}")
                    key.encode()
                    stack.append((value, depth + 1))
            elif isinstance(node, list):
                stack.extend((item, depth + 1) for item in node)
            elif isinstance(node, str):
                node.encode()
            elif not isinstance(node, bool | int | float):
                raise BadRequest(
                    f"unsupported value of type {type(node).__name__} (quote dates and times)"
                )
    except UnicodeEncodeError as err:  # a lone surrogate: the only str UTF-8 cannot encode
        raise BadRequest("the job document holds a string that is not valid Unicode") from err


_SCALARS: Final = frozenset({bool, int, float})


# ------------------------------------------------------------------ validation (422)


def validate_job(doc: Any, *, data_roots: Sequence[Path] | None, source: str = "rest") -> JobSpec:
    """source "rest" or "spool". Raises ValidationFailed with EVERY problem found
    (FieldError(field="config.optimizer.lr", message=...)); pure apart from path checks
    (os.path.realpath(strict=True), existence, commonpath under a data root). With
    ``data_roots=None`` it is pure: paths are checked for their form only (the daemon,
    which has the data roots, checks the rest)."""
    check_structure(doc)
    check = Checker(data_roots)
    spec = _checked_job(doc, check, source)
    if check.errors:
        raise ValidationFailed(check.errors)
    return spec


def recheck_paths(spec: JobSpec, data_roots: Sequence[Path]) -> list[FieldError]:
    """The paths of an accepted job that do not pass here: a fleet host that claims a job
    submitted on another host checks every path it names on its own file system and under
    its own data roots before it builds anything (FLEET.md §9.2 step 5). Only the file
    system is judged again; the rest was the submitting host's to accept."""
    document = {k: v for k, v in spec.to_dict().items() if k in JOB_KEYS and v is not None}
    check = Checker(data_roots)
    _checked_job(document, check, "rest")
    return list(check.path_errors)


def _checked_job(doc: Mapping[str, Any], check: Checker, source: str) -> JobSpec:
    """The spec, every problem recorded in ``check``."""
    for key in doc:
        if key not in JOB_KEYS:
            check.error(key, f"unknown job field; expected one of {', '.join(JOB_KEYS)}")
    model_type = _model_type(doc, check)
    rules = mr.MODEL_RULES.get(model_type)
    gpu_ids = _gpu_ids(doc, check)
    dataset = validate_dataset(doc.get("dataset"), rules, check)
    config = validate_config(doc.get("config"), model_type, rules, check)
    required_gpus = _required_gpus(doc, gpu_ids, config, rules, check)
    queue = _optional(check, "queue", doc.get("queue"), _QUEUE, False)
    return JobSpec(
        task_id=_task_id(doc.get("task_id"), check),
        model_type=model_type,
        description=_description(doc.get("description"), check),
        gpu_ids=gpu_ids,
        priority=_optional(check, "priority", doc.get("priority"), _PRIORITY, 0),
        queue=True if source == "spool" else queue,  # a dropped file has no one to answer 409
        resume_from_checkpoint=_resume(doc.get("resume_from_checkpoint"), check),
        min_memory_mb=_optional(check, "min_memory_mb", doc.get("min_memory_mb"), _MEMORY, None),
        required_gpus=required_gpus,
        dataset=dataset,
        config=config,
    )


def _optional(check: Checker, field: str, value: Any, rule: mr.Rule, default: Any) -> Any:
    if value is None:
        return default
    result = check.value(rule, value, field)
    return default if result is Checker.BAD else result


def _task_id(value: Any, check: Checker) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not TASK_ID_RE.match(value):
        check.error(
            "task_id", f"must match {TASK_ID_RE.pattern} (letters, digits, _ . -), got {value!r}"
        )
        return None
    return value


def _description(value: Any, check: Checker) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        check.error("description", f"expected a string, got {describe(value)}")
        return ""
    if len(value) > MAX_DESCRIPTION:
        check.error("description", f"longer than {MAX_DESCRIPTION} characters")
    return value


def _model_type(doc: Mapping[str, Any], check: Checker) -> str:
    value = doc.get("model_type")
    config = doc.get("config")
    model = config.get("model") if isinstance(config, Mapping) else None
    from_table = model.get("type") if isinstance(model, Mapping) else None
    if value is None and from_table is None:
        check.error("model_type", "required")
        return ""
    if value is None:
        value, field = from_table, "config.model.type"
    else:
        field = "model_type"
    if not isinstance(value, str) or value not in mr.MODEL_RULES:
        check.error(field, f"unknown model type {value!r}; one of {', '.join(mr.MODEL_TYPES)}")
        return value if isinstance(value, str) else ""
    if from_table is not None and from_table != value:
        check.error("config.model.type", f"{from_table!r} contradicts model_type {value!r}")
    return value


def _gpu_ids(doc: Mapping[str, Any], check: Checker) -> tuple[int, ...] | None:
    index = _GPU_INDEX
    single = doc.get("gpu_id")
    many = doc.get("gpu_ids")
    from_single = None if single is None else check.value(index, single, "gpu_id")
    if many is None:
        return None if from_single in (None, Checker.BAD) else (from_single,)
    if not isinstance(many, list) or not many:
        check.error("gpu_ids", f"expected a non-empty list of GPU indexes, got {describe(many)}")
        return None
    ids = [check.value(index, item, f"gpu_ids[{i}]") for i, item in enumerate(many)]
    if Checker.BAD in ids:
        return None
    if len(set(ids)) != len(ids):
        check.error("gpu_ids", f"lists a GPU twice: {ids}")
        return None
    if from_single not in (None, Checker.BAD) and ids != [from_single]:
        check.error("gpu_id", f"{from_single} contradicts gpu_ids {ids}; give one of them")
    return tuple(ids)


def _resume(value: Any, check: Checker) -> bool | str | None:
    if value is None or value is False:
        return None
    if value is True:
        return True
    if isinstance(value, str) and RUN_NAME_RE.match(value):
        return value
    check.error(
        "resume_from_checkpoint",
        f"expected true or a run folder name like 20250212_07-00-00, got {describe(value)}",
    )
    return None


def _required_gpus(
    doc: Mapping[str, Any],
    gpu_ids: tuple[int, ...] | None,
    config: dict[str, Any],
    rules: mr.ModelRules | None,
    check: Checker,
) -> int:
    """DESIGN §3: len(gpu_ids), else pipeline_stages x data-parallel degree (default 1)."""
    stages = config.get("pipeline_stages", 1)
    data_parallel = _optional(
        check, "data_parallel", doc.get("data_parallel"), _DATA_PARALLEL, None
    )
    if gpu_ids is not None:
        count = len(gpu_ids)
        if count % stages:
            check.error("gpu_ids", f"{count} GPU(s) cannot be split into pipeline_stages={stages}")
        elif data_parallel is not None and data_parallel != count // stages:
            check.error(
                "data_parallel", f"{data_parallel} contradicts {count} GPU(s) / {stages} stages"
            )
    else:
        count = stages * (data_parallel or 1)
    _check_parallel_options(config, rules, stages, max(1, count // stages), check)
    return count


def _check_parallel_options(
    config: dict[str, Any], rules: mr.ModelRules | None, stages: int, dp: int, check: Checker
) -> None:
    """Options whose validity depends on the GPU layout (reference §1.5, §2.1, §2.4)."""
    if config.get("blocks_to_swap", 0) > 0:
        _check_block_swap(config, rules, stages, check)
    if config.get("optimizer", {}).get("gradient_release") is True and dp != 1:
        check.error("config.optimizer.gradient_release", f"needs data parallelism 1, got {dp}")
    split = config.get("partition_split")
    if config.get("partition_method") == "manual" and split is None:
        check.error(check.where("partition_method"), "manual needs partition_split")
    if split is not None and len(split) != stages - 1:
        message = f"needs pipeline_stages - 1 = {stages - 1} entries"
        check.error(check.where("partition_split"), message)
    cfg = config.get("model", {}).get("cfg")
    is_minimax = rules is not None and rules.model_type == "minimax_h3"
    if is_minimax and isinstance(cfg, int | float) and cfg > 1 and stages != 1:
        check.error("config.model.cfg", "cfg > 1 needs pipeline_stages = 1")
    _check_examples(config, dp, check)


def _check_block_swap(
    config: dict[str, Any], rules: mr.ModelRules | None, stages: int, check: Checker
) -> None:
    field = check.where("blocks_to_swap")
    if stages != 1:
        check.error(field, "needs pipeline_stages = 1")
    if "adapter" not in config:
        check.error(field, "needs an adapter (block swapping is for LoRA training)")
    if rules is not None and not rules.block_swap:
        check.error(field, f"block swapping is not implemented for {rules.model_type}")


def _check_examples(config: dict[str, Any], dp: int, check: Checker) -> None:
    """save/eval_every_n_examples // global batch must not be 0 (a modulo by zero)."""
    batch = _first_batch(config.get("micro_batch_size_per_gpu", 1))
    global_batch = batch * config.get("gradient_accumulation_steps", 1) * dp
    for key in ("save_every_n_examples", "eval_every_n_examples"):
        if key in config and config[key] < global_batch:
            message = f"must be at least the global batch size {global_batch}"
            check.error(check.where(key), message)


def _first_batch(value: Any) -> int:
    return int(value[0][1]) if isinstance(value, list) else int(value)
