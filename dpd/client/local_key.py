"""Finding the local daemon's admin key (``<state_dir>/local.key``, see ``dpd.local_key``).

Used when the caller gave no key: the CLI, and anything else on the daemon's machine that
talks to it as the person who may read that file. The key is offered only to the daemon the
configuration describes: a loopback address on its configured port. Any other address (a
remote daemon, another port) gets no key from here and needs a real one (``dpd keys create``).
The configuration is read the way ``dpd serve`` reads it (``--config``, ``DPD_CONFIG``,
/etc/dpd/dpd.toml, else the embedded default), environment overrides included.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from dpd.config import load_config
from dpd.errors import ConfigError
from dpd.local_key import local_key_path, read_local_key


@dataclass(frozen=True)
class LocalKey:
    """Where the local key of a URL's daemon is, and whether this user got it."""

    path: Path | None  # None: the URL is not the local daemon's (or no configuration)
    key: str | None = None
    unreadable: bool = False  # the file exists, but this user may not read it


def find_local_key(url: str, config_path: str | os.PathLike[str] | None = None) -> str | None:
    """The local admin key for ``url``, or None (not the local daemon, no file, not readable)."""
    return locate_local_key(url, config_path).key


def locate_local_key(url: str, config_path: str | os.PathLike[str] | None = None) -> LocalKey:
    path = local_key_path_for(url, config_path)
    if path is None:
        return LocalKey(None)
    try:
        return LocalKey(path, read_local_key(path))
    except PermissionError:
        return LocalKey(path, None, unreadable=True)


def local_key_path_for(url: str, config_path: str | os.PathLike[str] | None = None) -> Path | None:
    """``<state_dir>/local.key`` when ``url`` is this machine's configured daemon, else None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        config = load_config(config_path)
    except (ValueError, ConfigError, OSError):  # OSError: /etc/dpd is closed to non-members
        return None
    if not is_loopback(parts.hostname) or port != config.http.port:
        return None
    return local_key_path(config.daemon.state_dir)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
