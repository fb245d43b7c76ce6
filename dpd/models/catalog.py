"""The model catalog: which diffusion-pipe model types this box can train, what each needs,
where each piece comes from and where it lands under ``models_root``.

The catalog is data (``catalog.yaml`` beside this module, or an operator's file named by
``models.catalog``, which replaces it). ``parse_catalog`` is pure: it checks the whole
document and reports every problem at once as a ``ConfigError``, so a bad operator file stops
start-up with a clear message instead of failing a download later.

A component is *installed* when dpd finished and verified its download (a manifest under
``<models_root>/.dpd/manifests/``, written only after every file passed its size and hash
check) and its files are still there, or, for components named by exact files, when those
files exist (placed by hand).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from dpd.errors import ConfigError
from dpd.jobs.yamlload import load_yaml

SHIPPED_CATALOG: Final = Path(__file__).with_name("catalog.yaml")
MANIFEST_DIR: Final = Path(".dpd") / "manifests"
MEDIA_TYPES: Final = ("image", "video")
TEXT_ENCODERS_KEY: Final = "text_encoders"


@dataclass(frozen=True)
class Component:
    """One downloadable piece of a model (transformer, VAE, a text encoder, ...)."""

    name: str
    repo: str  # "" = no public source: the operator places the files
    dir: str  # where the repo's files land, relative to models_root (repo paths kept)
    config_key: str  # the [model] key this component fills
    path: str  # what config_key points at, relative to models_root
    revision: str = "main"
    gated: bool = False
    files: tuple[str, ...] = ()  # exact repo paths
    include: tuple[str, ...] = ()  # glob patterns over the repo's file list
    text_encoder_type: str = ""
    # False where nobody checked ``repo``/``files`` against the hub (or diffusion-pipe's and
    # ComfyUI's documentation), and always without a repo: shown to operators, who may
    # correct it in their catalog
    verified: bool = True
    note: str = ""  # where the source comes from, or why there is none

    @property
    def downloadable(self) -> bool:
        return bool(self.repo) and bool(self.files or self.include)


@dataclass(frozen=True)
class CatalogModel:
    id: str
    name: str
    type: str
    version: str
    supports_lora: bool
    supports_full_finetune: bool
    supports_fp8: bool
    min_vram_gb: float
    recommended_vram_gb: float
    components: tuple[Component, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)


@dataclass(frozen=True)
class Catalog:
    models: tuple[CatalogModel, ...]
    source: str = "shipped"

    def get(self, model_id: str) -> CatalogModel | None:
        return next((m for m in self.models if m.id == model_id), None)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    def recommended_for(self, memory_mb: int) -> list[str]:
        """Model ids whose minimum VRAM fits in ``memory_mb`` (GPU free memory)."""
        return [m.id for m in self.models if m.min_vram_gb * 1024 <= memory_mb]


# ----------------------------------------------------------------- loading and checking


def load_catalog(path: Path | None = None) -> Catalog:
    """The operator's catalog at ``path``, or the shipped one when ``path`` is None/empty."""
    chosen = Path(path) if path else SHIPPED_CATALOG
    try:
        document = load_yaml(chosen.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"model catalog {chosen}: cannot read it: {err}") from err
    return parse_catalog(document, source=str(chosen))


def parse_catalog(document: Any, source: str = "catalog") -> Catalog:
    """Check a whole catalog document; every problem is listed in one ConfigError."""
    problems: list[str] = []
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"model catalog {source}: expected a non-empty 'models' list")
    models = []
    for index, entry in enumerate(entries):
        model = _parse_model(entry, f"models[{index}]", problems)
        if model is not None:
            models.append(model)
    seen: set[str] = set()
    for model in models:
        if model.id in seen:
            problems.append(f"model id {model.id!r} appears twice")
        seen.add(model.id)
    if problems:
        raise ConfigError(f"model catalog {source}: " + "; ".join(problems))
    return Catalog(tuple(models), source)


_MODEL_FIELDS: Final[dict[str, type | tuple[type, ...]]] = {
    "id": str,
    "name": str,
    "type": str,
    "version": str,
    "supports_lora": bool,
    "supports_full_finetune": bool,
    "supports_fp8": bool,
    "min_vram_gb": (int, float),
    "recommended_vram_gb": (int, float),
}


def _parse_model(entry: Any, where: str, problems: list[str]) -> CatalogModel | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    before = len(problems)
    for key, kind in _MODEL_FIELDS.items():
        if not _is_kind(entry.get(key), kind):
            problems.append(f"{where}.{key}: missing or not a {_kind_name(kind)}")
    if entry.get("type") not in MEDIA_TYPES:
        problems.append(f"{where}.type: must be one of {', '.join(MEDIA_TYPES)}")
    defaults = entry.get("defaults", {})
    if not isinstance(defaults, dict):
        problems.append(f"{where}.defaults: must be a mapping")
    raw_components = entry.get("components")
    if not isinstance(raw_components, list) or not raw_components:
        problems.append(f"{where}.components: must be a non-empty list")
        raw_components = []
    components = [
        _parse_component(raw, f"{where}.components[{i}]", problems)
        for i, raw in enumerate(raw_components)
    ]
    names = [c.name for c in components if c is not None]
    if len(names) != len(set(names)):
        problems.append(f"{where}.components: component names must be unique")
    if len(problems) > before:
        return None
    return CatalogModel(
        id=entry["id"],
        name=entry["name"],
        type=entry["type"],
        version=entry["version"],
        supports_lora=entry["supports_lora"],
        supports_full_finetune=entry["supports_full_finetune"],
        supports_fp8=entry["supports_fp8"],
        min_vram_gb=entry["min_vram_gb"],
        recommended_vram_gb=entry["recommended_vram_gb"],
        components=tuple(c for c in components if c is not None),
        defaults=dict(defaults),
    )


def _parse_component(raw: Any, where: str, problems: list[str]) -> Component | None:
    if not isinstance(raw, dict):
        problems.append(f"{where}: must be a mapping")
        return None
    before = len(problems)
    for key in ("name", "dir", "config_key"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            problems.append(f"{where}.{key}: missing or not a string")
    for key in ("repo", "revision", "path", "text_encoder_type", "note"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{where}.{key}: must be a string")
    if not isinstance(raw.get("verified", True), bool):
        problems.append(f"{where}.verified: must be true or false")
    for key in ("files", "include"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"{where}.{key}: must be a list of strings")
    for key in ("dir", "path"):
        if _escapes(raw.get(key)):
            problems.append(f"{where}.{key}: must be relative to models_root, without '..'")
    if raw.get("repo") and not (raw.get("files") or raw.get("include")):
        problems.append(f"{where}: a component with a repo needs files or include")
    if len(problems) > before:
        return None
    return Component(
        name=raw["name"],
        repo=raw.get("repo", ""),
        dir=raw["dir"],
        config_key=raw["config_key"],
        path=raw.get("path") or raw["dir"],
        revision=raw.get("revision") or "main",
        gated=bool(raw.get("gated", False)),
        files=tuple(raw.get("files", [])),
        include=tuple(raw.get("include", [])),
        text_encoder_type=raw.get("text_encoder_type", ""),
        verified=raw.get("verified", bool(raw.get("repo"))),
        note=raw.get("note", ""),
    )


def _escapes(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = Path(value).parts
    return Path(value).is_absolute() or ".." in parts


def _is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and kind is not bool:
        return False  # YAML's true is not a number of gigabytes
    return isinstance(value, kind)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return "number" if isinstance(kind, tuple) else kind.__name__


# ----------------------------------------------------------------- paths and installed state


def default_paths(
    model_id: str, models_root: Path, catalog: Catalog | None = None
) -> dict[str, Path]:
    """``{config_key: absolute path}`` for every component of a model, from the catalog.

    ``text_encoders`` (ComfyUI-style models) is a list of tables in diffusion-pipe's config;
    it maps here to the first such path — ``default_model_table`` builds the full list.
    """
    model = _require(model_id, catalog)
    paths: dict[str, Path] = {}
    for component in model.components:
        paths.setdefault(component.config_key, Path(models_root) / component.path)
    return paths


def default_model_table(
    model_id: str, models_root: Path, catalog: Catalog | None = None
) -> dict[str, Any]:
    """The path keys (and catalog defaults) of a ``[model]`` table for this model type."""
    model = _require(model_id, catalog)
    table: dict[str, Any] = {"type": model.id, **model.defaults}
    encoders: dict[str, list[str]] = {}
    for component in model.components:
        path = str(Path(models_root) / component.path)
        if component.config_key == TEXT_ENCODERS_KEY:
            encoders.setdefault(component.text_encoder_type, []).append(path)
        else:
            table.setdefault(component.config_key, path)
    if encoders:
        table[TEXT_ENCODERS_KEY] = [
            {"path": paths[0], "type": kind} if len(paths) == 1 else {"paths": paths, "type": kind}
            for kind, paths in encoders.items()
        ]
    return table


def manifest_path(models_root: Path, model_id: str, component: str) -> Path:
    return Path(models_root) / MANIFEST_DIR / model_id / f"{component}.json"


def installed_state(model: CatalogModel, models_root: Path) -> dict[str, dict[str, Any]]:
    """``{component name: {"installed": bool, "path": str}}`` (stats a few files: call it
    from a thread when the catalog is large or the disk slow)."""
    return {
        component.name: {
            "installed": component_installed(model.id, component, Path(models_root)),
            "path": str(Path(models_root) / component.path),
        }
        for component in model.components
    }


def component_installed(model_id: str, component: Component, models_root: Path) -> bool:
    base = models_root / component.dir
    manifest = _read_manifest(manifest_path(models_root, model_id, component.name))
    if manifest is not None:
        return all(_has_size(base / f["path"], f.get("size")) for f in manifest)
    if component.include or not component.files:
        return False  # a pattern's matches are only known from a finished download
    return all((base / name).is_file() for name in component.files)


def _read_manifest(path: Path) -> list[dict[str, Any]] | None:
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, list) else None


def _has_size(path: Path, size: Any) -> bool:
    try:
        return path.stat().st_size == size if isinstance(size, int) else path.is_file()
    except OSError:
        return False


def _require(model_id: str, catalog: Catalog | None) -> CatalogModel:
    model = (catalog or _shipped()).get(model_id)
    if model is None:
        raise KeyError(f"unknown model type {model_id!r}")
    return model


_SHIPPED: list[Catalog] = []


def _shipped() -> Catalog:
    """The shipped catalog, parsed once (it is read-only data inside the package)."""
    if not _SHIPPED:
        _SHIPPED.append(load_catalog())
    return _SHIPPED[0]
