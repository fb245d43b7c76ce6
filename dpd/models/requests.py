"""Checking a download request against the catalog (pure: no network, no disk).

Every problem is reported at once as ``ValidationFailed`` (422), like job validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpd.errors import BadRequest, FieldError, ValidationFailed
from dpd.models.catalog import Catalog, CatalogModel, Component

_KNOWN_KEYS = frozenset({"model_id", "version", "components"})


@dataclass(frozen=True)
class DownloadRequest:
    model: CatalogModel
    version: str
    components: tuple[Component, ...]


def parse_download_request(catalog: Catalog, body: Any) -> DownloadRequest:
    """``{"model_id", "version"?, "components"?}``; no components = every one with a source."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    errors = [FieldError(key, "unknown field") for key in sorted(set(body) - _KNOWN_KEYS)]
    model_id = body.get("model_id")
    model = catalog.get(model_id) if isinstance(model_id, str) else None
    if model is None:
        known = ", ".join(catalog.ids)
        errors.append(FieldError("model_id", f"unsupported model type; known: {known}"))
        raise ValidationFailed(errors)
    version = _check_version(model, body.get("version"), errors)
    components = _check_components(model, body.get("components"), errors)
    if errors:
        raise ValidationFailed(errors)
    return DownloadRequest(model, version, components)


def _check_version(model: CatalogModel, version: Any, errors: list[FieldError]) -> str:
    if version is None or version == "":
        return model.version
    if not isinstance(version, str):
        errors.append(FieldError("version", "must be a string"))
    elif version != model.version:
        errors.append(
            FieldError(
                "version",
                f"the catalog describes {model.id} version {model.version} only "
                "(an operator catalog can describe another)",
            )
        )
    return model.version


def _check_components(
    model: CatalogModel, names: Any, errors: list[FieldError]
) -> tuple[Component, ...]:
    if names is None:
        chosen = tuple(c for c in model.components if c.downloadable)
        if not chosen:
            errors.append(FieldError("model_id", f"no component of {model.id} has a known source"))
        return chosen
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        errors.append(FieldError("components", "must be a non-empty list of component names"))
        return ()
    chosen_list: list[Component] = []
    for index, name in enumerate(dict.fromkeys(names)):
        component = model.component(name)
        field = f"components[{index}]"
        if component is None:
            known = ", ".join(c.name for c in model.components)
            errors.append(FieldError(field, f"unknown component {name!r}; known: {known}"))
        elif not component.downloadable:
            errors.append(
                FieldError(field, f"{name!r} has no known source: place its files by hand")
            )
        else:
            chosen_list.append(component)
    return tuple(chosen_list)
