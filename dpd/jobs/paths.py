"""Path checks for job documents: every path a job names must exist under a data root.

What it guarantees: a path that passes is absolute, free of control characters, exists, and
its real location (every symlink followed) lies under one of ``daemon.data_roots``. The
canonical (resolved) path is returned so the generated TOML names exactly what was checked,
and a symlink swapped later inside the dataset cannot redirect an already accepted job's
config to another place. What it does not guard: the contents of a data root changing
after validation (anyone who may write there may change the data anyway).

The only I/O here is resolving the path and ``stat``; no event loop. The path is opened
with O_PATH (no read permission needed, nothing is read) and the kernel names what it
opened (``/proc/self/fd``): four system calls, where ``os.path.realpath`` walks the path in
Python with an ``lstat`` per component. Without /proc it falls back to ``realpath``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

MAX_PATH_LENGTH = 4096


class PathKind(Enum):
    ANY = "file or directory"
    DIR = "directory"
    FILE = "file"


class PathRefused(ValueError):
    """The message is a complete sentence fragment for a FieldError, e.g. 'does not exist'."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_characters(text: str) -> bool:
    return _CONTROL.search(text) is not None


def is_under(path: str, roots: Sequence[str]) -> bool:
    """True if ``path`` is one of ``roots`` or inside one (both already resolved)."""
    for root in roots:
        try:
            if os.path.commonpath([root, path]) == root:
                return True
        except ValueError:  # relative mixed with absolute: never under
            continue
    return False


def resolved_roots(data_roots: Sequence[Path]) -> list[str]:
    """Roots resolved as well, so a root that is itself behind a symlink still matches."""
    return [os.path.realpath(root) for root in data_roots]


@dataclass(frozen=True)
class DataRoots:
    """The data roots as written and resolved, worked out once per job document rather
    than once per path in it."""

    resolved: tuple[str, ...]
    lexical: tuple[str, ...]  # as written (normalized) and resolved: a root may be a symlink

    @classmethod
    def of(cls, data_roots: Sequence[Path]) -> DataRoots:
        resolved = tuple(resolved_roots(data_roots))
        return cls(resolved, tuple(os.path.normpath(root) for root in data_roots) + resolved)


def check_path_form(value: object) -> str:
    """``value`` if it has the form of an acceptable path (an absolute path string without
    control characters); PathRefused otherwise. Pure: what can be checked without the
    daemon's file system (``dpd submit`` checks this much before sending)."""
    if not isinstance(value, str):
        raise PathRefused(f"expected a path string, got {type(value).__name__}")
    if not value:
        raise PathRefused("must not be empty")
    if len(value) > MAX_PATH_LENGTH:
        raise PathRefused(f"longer than {MAX_PATH_LENGTH} characters")
    if has_control_characters(value):
        raise PathRefused("must not contain NUL or control characters")
    if not os.path.isabs(value):
        raise PathRefused(f"must be an absolute path, got {value!r}")
    return value


def check_path(
    value: object, data_roots: Sequence[Path] | DataRoots, kind: PathKind = PathKind.ANY
) -> str:
    """The canonical path for ``value``, or PathRefused saying why it is not acceptable."""
    value = check_path_form(value)
    roots = data_roots if isinstance(data_roots, DataRoots) else DataRoots.of(data_roots)
    # Lexical check first, so a path outside every root is reported as such even when
    # it does not exist (and nothing outside the roots is probed).
    if not is_under(os.path.normpath(value), roots.lexical):
        raise PathRefused(f"{value!r} is not under a data root ({_names(roots.resolved)})")
    try:
        real, mode = _resolve(value)
    except OSError as err:
        raise PathRefused(f"{value!r} does not exist or cannot be read ({err.strerror})") from err
    if not is_under(real, roots.resolved):
        raise PathRefused(
            f"{value!r} resolves to {real!r}, outside every data root ({_names(roots.resolved)})"
        )
    if kind is PathKind.DIR and not stat.S_ISDIR(mode):
        raise PathRefused(f"{value!r} is not a directory")
    if kind is PathKind.FILE and not stat.S_ISREG(mode):
        raise PathRefused(f"{value!r} is not a regular file")
    return real


def _resolve(path: str) -> tuple[str, int]:
    """(every symlink followed, the file type bits of what it names); OSError if it does
    not exist or cannot be reached."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            real = ""
    finally:
        os.close(fd)
    if not real.startswith("/") or real.endswith(" (deleted)"):  # no /proc, or a race
        real = os.path.realpath(path, strict=True)
        mode = os.stat(real).st_mode
    return real, mode


def _names(roots: Sequence[str]) -> str:
    return ", ".join(roots) if roots else "none configured"


def safetensors_count(path: str) -> int | None:
    """How many ``*.safetensors`` files the directory holds; None if it is not a directory
    (adapter.init_from_existing wants exactly one)."""
    try:
        with os.scandir(path) as entries:
            return sum(1 for e in entries if e.name.endswith(".safetensors") and e.is_file())
    except NotADirectoryError:
        return None
    except OSError:
        return 0
