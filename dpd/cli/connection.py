"""Options shared by command groups, the key a command sends, and what to do after a 401/403.

Options of a command group are accepted before and after its subcommand
(``dpd keys --config X create`` and ``dpd keys create --config X``): the group's parser and
every subcommand's parser get the same options, the subcommands' copies with
``default=argparse.SUPPRESS`` so that a subcommand never overwrites with its default a value
given before it.

The key: ``--key``, else ``DPD_API_KEY``, else the local daemon's admin key when this user may
read it and the URL is that daemon's (``dpd.client.local_key``).
"""

from __future__ import annotations

import argparse
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpd.client import DEFAULT_URL
from dpd.client.local_key import LocalKey, is_loopback, locate_local_key

AddOptions = Callable[[argparse.ArgumentParser, bool], None]
# What shtab's generated completion calls for a file argument (shtab.FILE, without importing
# shtab at run time: it is needed only to build the completion scripts).
FILE_COMPLETION = {"bash": "_shtab_compgen_files", "zsh": "_files"}


def completes_files(action: argparse.Action) -> argparse.Action:
    action.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    return action


FORBIDDEN_PERMISSION = re.compile(r"lacks the '(\w+)' permission")


def _default(value: Any, repeated: bool) -> Any:
    return argparse.SUPPRESS if repeated else value


def add_config_option(parser: argparse.ArgumentParser, repeated: bool = False) -> None:
    completes_files(
        parser.add_argument(
            "--config",
            metavar="PATH",
            default=_default(None, repeated),
            help="dpd.toml (default: $DPD_CONFIG, else /etc/dpd/dpd.toml, else the embedded one)",
        )
    )


def add_connection_options(parser: argparse.ArgumentParser, repeated: bool = False) -> None:
    """--url, --key, --config (where the local key is found) and --json."""
    parser.add_argument(
        "--url",
        default=_default(os.environ.get("DPD_URL") or DEFAULT_URL, repeated),
        help=f"daemon address (default: $DPD_URL, else {DEFAULT_URL})",
    )
    parser.add_argument(
        "--key",
        default=_default(None, repeated),
        help="API key (default: $DPD_API_KEY, else the local daemon's key file)",
    )
    add_config_option(parser, repeated)
    parser.add_argument(
        "--json", action="store_true", default=_default(False, repeated),
        help="machine-readable output",
    )  # fmt: skip


def shared(add: AddOptions) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """Parents for a group (real defaults) and for its subcommands (defaults suppressed)."""
    group = argparse.ArgumentParser(add_help=False)
    add(group, False)
    subcommand = argparse.ArgumentParser(add_help=False)
    add(subcommand, True)
    return group, subcommand


# ----------------------------------------------------------------- the key


@dataclass(frozen=True)
class Credentials:
    url: str
    key: str | None
    origin: str  # "--key", "DPD_API_KEY", "the local key file" or "none"
    local: LocalKey


def credentials(args: argparse.Namespace) -> Credentials:
    url = getattr(args, "url", None) or os.environ.get("DPD_URL") or DEFAULT_URL
    local = locate_local_key(url, getattr(args, "config", None))
    if getattr(args, "key", None):
        return Credentials(url, args.key, "--key", local)
    if os.environ.get("DPD_API_KEY"):
        return Credentials(url, os.environ["DPD_API_KEY"], "DPD_API_KEY", local)
    if local.key is not None:
        return Credentials(url, local.key, "the local key file", local)
    return Credentials(url, None, "none", local)


def auth_hint(code: int, message: str, who: Credentials) -> str | None:
    """What to do about a 401 or 403, in a few lines; None for other codes."""
    send = "pass it with --key KEY or export DPD_API_KEY=KEY"
    if code == 403:
        match = FORBIDDEN_PERMISSION.search(message)
        needed = match.group(1) if match else "PERMISSION"
        return (
            f"hint: the key from {who.origin} lacks the {needed!r} permission. Where the daemon "
            f"runs, make one that has it: dpd keys create --permission {needed} "
            f"(admin implies all), then {send}."
        )
    if code != 401:
        return None
    create = f"where the daemon runs: dpd keys create --permission training (or admin), then {send}"
    if who.key is not None:
        return (
            f"hint: the key from {who.origin} is unknown, revoked or expired "
            f"(dpd keys list shows the keys). Make a new one {create}."
        )
    lines = [f"hint: no API key was sent. Make one {create}."]
    if who.local.unreadable:
        lines.append(
            f"This user may not read the local daemon's key {who.local.path}: an administrator "
            "can add you to its group (adduser $USER dpd; log in again), and dpd finds it."
        )
    elif who.local.path is not None:
        lines.append(
            f"The local daemon's key {who.local.path} was not found: is dpd serve running "
            "with this configuration (--config, DPD_CONFIG)?"
        )
    elif is_loopback(urllib.parse.urlsplit(who.url).hostname):
        lines.append(
            "On the daemon's machine no key is needed by the daemon's user and, where dpd runs "
            "as a service, by members of group dpd: an administrator can add you "
            "(adduser $USER dpd; log in again)."
        )
    return "\n".join(lines)
