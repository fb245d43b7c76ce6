"""Checking single values of a job document, collecting every problem instead of stopping.

``Checker`` is the validator's one piece of state: the FieldErrors found so far, the data
roots for path checks (None: no file system at hand, so paths are checked for their form
only, as ``dpd submit`` does before sending), and where each flattened config key came
from (so an error names ``config.save.save_every_n_epochs`` when that is where the user
wrote it). Each check returns the normalized value, or ``Checker.BAD`` after recording why;
callers just drop BAD values.

Unknown keys are passed through to diffusion-pipe, so they are checked only for what TOML
(and the ``toml`` package train.py parses with) can hold: no nulls, 64-bit integers, finite
floats, homogeneous arrays, plain key names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from dpd.errors import FieldError
from dpd.jobs import model_rules as mr
from dpd.jobs.paths import DataRoots, PathKind, PathRefused, check_path, check_path_form

KEY_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_PATH_KINDS: Final = {
    mr.Kind.DIR: PathKind.DIR,
    mr.Kind.FILE: PathKind.FILE,
    mr.Kind.PATH: PathKind.ANY,
}


class Invalid(Exception):
    """One value is wrong; the message becomes a FieldError's message."""


class _Bad:
    def __repr__(self) -> str:
        return "BAD"


class Checker:
    BAD: Final = _Bad()

    def __init__(self, data_roots: Sequence[Path] | None) -> None:
        self.data_roots = DataRoots.of(data_roots) if data_roots is not None else None
        self.errors: list[FieldError] = []
        self.path_errors: list[FieldError] = []  # of ``errors``, those of the file system
        self.origin: dict[str, str] = {}  # flattened config key -> field the user wrote

    def error(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field=field, message=message))

    def where(self, config_key: str) -> str:
        return self.origin.get(config_key, f"config.{config_key}")

    def value(self, rule: mr.Rule, value: Any, field: str) -> Any:
        """The normalized value, or BAD (with the error recorded)."""
        if rule.kind in _PATH_KINDS:
            return self.path(value, field, _PATH_KINDS[rule.kind])
        try:
            return _CHECKS[rule.kind](rule, value)
        except Invalid as err:
            self.error(field, str(err))
            return self.BAD

    def path(self, value: Any, field: str, kind: PathKind = PathKind.ANY) -> Any:
        try:
            return self._check_path(value, kind)
        except PathRefused as err:
            self.error(field, str(err))
            self.path_errors.append(self.errors[-1])
            return self.BAD

    def _check_path(self, value: Any, kind: PathKind) -> str:
        if self.data_roots is None:
            return check_path_form(value)
        return check_path(value, self.data_roots, kind)

    def passthrough(self, value: Any, field: str) -> Any:
        """A value of a key dpd does not know, made TOML-safe, or BAD."""
        try:
            return toml_value(value)
        except Invalid as err:
            self.error(field, str(err))
            return self.BAD

    def key_name(self, key: str, field: str) -> bool:
        if KEY_RE.match(key):
            return True
        self.error(field, "not a valid key name (letters, digits and _ only)")
        return False

    def mapping(
        self, value: Any, field: str, *, required: bool = False
    ) -> Mapping[str, Any] | None:
        if value is None and not required:
            return None
        if isinstance(value, Mapping):
            return value
        self.error(
            field, "required" if value is None else f"expected a table, got {describe(value)}"
        )
        return None


def describe(value: Any) -> str:
    """A short, safe rendering of a wrong value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------ scalars


def _integer(rule: mr.Rule, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {describe(value)}")
    _bounds(rule, value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise Invalid(f"{value} does not fit a 64-bit integer")
    return value


def _number(rule: mr.Rule, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number, got {describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(f"must be a finite number, got {value}")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise Invalid(f"{value} does not fit a 64-bit integer")
    _bounds(rule, value)
    return value


def _bounds(rule: mr.Rule, value: float) -> None:
    if rule.low is not None:
        if rule.low_open and not value > rule.low:
            raise Invalid(f"must be > {_show(rule.low)}, got {value}")
        if not rule.low_open and value < rule.low:
            raise Invalid(f"must be >= {_show(rule.low)}, got {value}")
    if rule.high is not None and value > rule.high:
        raise Invalid(f"must be <= {_show(rule.high)}, got {value}")


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _boolean(rule: mr.Rule, value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {describe(value)}")
    return value


def _string(rule: mr.Rule, value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    return value


def _choice(rule: mr.Rule, value: Any) -> Any:
    # Compare type and value: 1 must not pass for true, nor "true" for true.
    if any(type(value) is type(c) and value == c for c in rule.choices):
        return value
    shown = ", ".join(repr(c).lower() if isinstance(c, bool) else repr(c) for c in rule.choices)
    raise Invalid(f"expected one of {shown}, got {describe(value)}")


def _dtype(rule: mr.Rule, value: Any) -> str:
    if isinstance(value, str) and value in mr.DTYPES:
        return value
    raise Invalid(f"unknown dtype {describe(value)}; expected one of {', '.join(mr.DTYPES)}")


# ------------------------------------------------------------------ lists


def _list(value: Any, what: str, *, min_len: int = 1, max_len: int | None = None) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(f"expected a list of {what}, got {describe(value)}")
    if len(value) < min_len:
        size = "a non-empty list" if min_len == 1 else f"at least {min_len} entries in a list"
        raise Invalid(f"expected {size} of {what}")
    if max_len is not None and len(value) > max_len:
        raise Invalid(f"at most {max_len} entries, got {len(value)}")
    return value


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid(f"{what} must be integers >= 1, got {describe(value)}")
    return _integer(mr.Rule(mr.Kind.INT), value)


def _positive_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise Invalid(f"{what} must be numbers > 0, got {describe(value)}")
    return float(_number(mr.Rule(mr.Kind.NUMBER), value))


def _is_pairs(items: list[Any]) -> bool:
    """True for a list of pairs; a list mixing pairs and plain numbers is refused (the
    trainer's TOML arrays must be homogeneous)."""
    pairs = [isinstance(item, list) for item in items]
    if any(pairs) and not all(pairs):
        raise Invalid("mixes plain values and [w, h] pairs; use one form")
    return all(pairs)


def _pairs(items: list[Any], what: str, convert: Any) -> list[list[Any]]:
    out = []
    for item in items:
        if len(item) != 2:
            raise Invalid(f"{what}: each pair has two values, got {describe(item)}")
        out.append([convert(part, what) for part in item])
    return out


def _resolutions(rule: mr.Rule, value: Any) -> list[Any]:
    items = _list(value, "resolutions")
    if len(items) > mr.MAX_RESOLUTIONS:
        raise Invalid(
            f"at most {mr.MAX_RESOLUTIONS} resolutions: with more, train.py quits without "
            f"training (each resolution duplicates the dataset), got {len(items)}"
        )
    if _is_pairs(items):
        return _pairs(items, "resolutions", _positive_int)
    return [_positive_int(item, "resolutions") for item in items]


def _ar_buckets(rule: mr.Rule, value: Any) -> list[Any]:
    items = _list(value, "aspect ratios")
    if _is_pairs(items):
        return _pairs(items, "ar_buckets", _positive_number)
    return [_positive_number(item, "aspect ratios") for item in items]


def _batch(rule: mr.Rule, value: Any) -> Any:
    if not isinstance(value, list):
        return _integer(mr.Rule(mr.Kind.INT, 1), value)
    items = _list(value, "[size, batch size] pairs")
    if not _is_pairs(items):
        raise Invalid("expected an integer or a list of [size, batch size] pairs")
    return _pairs(items, "[size, batch size] pairs", _positive_int)


def _ints(rule: mr.Rule, value: Any) -> list[int]:
    items = _list(value, "integers", min_len=0)
    low = int(rule.low) if rule.low is not None else INT64_MIN
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < low:
            raise Invalid(f"expected integers >= {low}, got {describe(item)}")
        out.append(_integer(mr.Rule(mr.Kind.INT), item))
    return out


def _size_buckets(rule: mr.Rule, value: Any) -> list[list[int]]:
    items = _list(value, "[width, height, frames] triples")
    out = []
    for item in items:
        if not isinstance(item, list) or len(item) != 3:
            raise Invalid(f"each size bucket is [width, height, frames], got {describe(item)}")
        out.append([_positive_int(part, "size bucket values") for part in item])
    return out


def _strings(rule: mr.Rule, value: Any) -> list[str]:
    items = _list(value, "strings", min_len=0)
    if not all(isinstance(item, str) for item in items):
        raise Invalid("expected a list of strings")
    return list(items)


def _betas(rule: mr.Rule, value: Any) -> list[float]:
    items = _list(value, "two numbers", min_len=2, max_len=2)
    beta = mr.Rule(mr.Kind.NUMBER, 0, 1)
    out = [float(_number(beta, item)) for item in items]
    if any(b >= 1 for b in out):
        raise Invalid(f"betas must be < 1, got {out}")
    return out


_CHECKS: Final = {
    mr.Kind.INT: _integer,
    mr.Kind.NUMBER: _number,
    mr.Kind.BOOL: _boolean,
    mr.Kind.STR: _string,
    mr.Kind.CHOICE: _choice,
    mr.Kind.DTYPE: _dtype,
    mr.Kind.BATCH: _batch,
    mr.Kind.RESOLUTIONS: _resolutions,
    mr.Kind.AR_BUCKETS: _ar_buckets,
    mr.Kind.INTS: _ints,
    mr.Kind.SIZE_BUCKETS: _size_buckets,
    mr.Kind.STRS: _strings,
    mr.Kind.BETAS: _betas,
}


# ------------------------------------------------------------------ pass-through


def toml_value(value: Any) -> Any:
    """``value`` in a form TOML can hold and train.py's parser accepts, or Invalid."""
    if value is None:
        raise Invalid("null has no TOML form; leave the key out instead")
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return _integer(mr.Rule(mr.Kind.INT), value)
    if isinstance(value, float):
        return _number(mr.Rule(mr.Kind.NUMBER), value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or not KEY_RE.match(key):
                raise Invalid(f"{describe(key)} is not a valid key name (letters, digits, _)")
            out[key] = toml_value(item)
        return out
    if isinstance(value, list):
        return _homogeneous([toml_value(item) for item in value])
    raise Invalid(f"unsupported value {describe(value)}")


def _homogeneous(items: list[Any]) -> list[Any]:
    """train.py's ``toml`` parser refuses mixed arrays; ints beside floats become floats."""
    kinds = {_kind(item) for item in items}
    if kinds == {"int", "float"}:
        return [float(item) for item in items]
    if len(kinds) > 1:
        raise Invalid(f"a list must not mix {' and '.join(sorted(kinds))} values")
    return items


def _kind(item: Any) -> str:
    if isinstance(item, bool):
        return "boolean"
    if isinstance(item, int):
        return "int"
    if isinstance(item, float):
        return "float"
    if isinstance(item, str):
        return "string"
    if isinstance(item, list):
        return "list"
    return "table"
