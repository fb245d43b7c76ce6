"""Typed reading and writing of the fleet's JSON records (used by ``dpd.fleet.records``).

Every reader takes the object being read and a ``where`` (the field's path, e.g.
``job.constraints``) and raises ``RecordError`` naming it; a bool is never accepted as a
number. Pure.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, TypeVar


class RecordError(ValueError):
    """A record that cannot be read: the message names the field."""


class UnknownVersion(RecordError):
    """A record written by a newer dpd (``v`` this code does not understand)."""


T = TypeVar("T")


def required(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise RecordError(f"{where}: missing {key!r}")
    value = d[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise RecordError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise RecordError(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r}")
    return value


def optional(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if d.get(key) is None:
        return None
    return required(d, key, kind, where)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def enum_field(d: Mapping[str, Any], key: str, enum: type[T], where: str) -> T:
    value = required(d, key, str, where)
    try:
        return enum(value)  # type: ignore[call-arg]
    except ValueError:
        raise RecordError(f"{where}.{key}: unknown value {value!r}") from None


def sub_record(d: Mapping[str, Any], key: str, reader: Callable[[Any, str], T], where: str) -> T:
    return reader(required(d, key, dict, where), f"{where}.{key}")


def optional_record(
    d: Mapping[str, Any], key: str, reader: Callable[[Any, str], T], where: str
) -> T | None:
    return None if d.get(key) is None else sub_record(d, key, reader, where)


def record_list(
    d: Mapping[str, Any], key: str, reader: Callable[[Any, str], T], where: str
) -> tuple[T, ...]:
    items = required(d, key, list, where)
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise RecordError(f"{where}.{key}[{i}]: expected an object")
        out.append(reader(item, f"{where}.{key}[{i}]"))
    return tuple(out)


def int_list(d: Mapping[str, Any], key: str, where: str) -> tuple[int, ...] | None:
    value = optional(d, key, list, where)
    if value is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecordError(f"{where}.{key}: expected a list of integers")
    return tuple(value)


def string_table(d: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = required(d, key, dict, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RecordError(f"{where}.{key}: expected a table of strings")
    return dict(value)


def as_object(d: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(d, dict):
        raise RecordError(f"{where}: expected a JSON object")
    return d


def load_json(data: bytes | str, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise RecordError(f"{where}: not JSON: {err}") from None


def dump_json(d: Mapping[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


def export(value: Any) -> Any:
    """A record as JSON-ready data: dataclasses as objects (field names are the JSON keys),
    tuples as lists, enums as their values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: export(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [export(v) for v in value]
    if isinstance(value, dict):
        return {str(k): export(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    return value


class Exported:
    """``to_dict`` for the record dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = export(self)
        return data
