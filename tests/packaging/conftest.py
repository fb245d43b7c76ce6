"""Shared by the packaging tests: the repository's packaging files and the unit parser."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
UNIT = PACKAGING / "systemd" / "dpd.service"
SYSUSERS = PACKAGING / "systemd" / "dpd.sysusers"
TMPFILES = PACKAGING / "systemd" / "dpd.tmpfiles"
DEFAULT_CONFIG = PACKAGING / "dpd.toml"
DEB = PACKAGING / "deb"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as systemd reads it: sections of keys, a key may repeat, an empty
    assignment resets the list, ``#``/``;`` lines are comments."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        key, _, value = line.partition("=")
        values = sections[current][key.strip()]
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
            values.append("")
    return sections


def tmpfiles_entries(text: str) -> dict[str, tuple[str, int, str, str]]:
    """path -> (type, mode, user, group) from a tmpfiles.d file."""
    entries = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind, path, mode, user, group, *_ = line.split()
        entries[path] = (kind, int(mode, 8), user, group)
    return entries
