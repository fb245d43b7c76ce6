"""``dpd keys create|list|revoke``: API keys, on the local state directory (no daemon needed).

A running daemon applies the change from its next request on (dpd.http.auth). ``create``
prints the raw key alone on stdout (so ``KEY=$(dpd keys create ...)`` works) and what it is
on stderr; it is never shown again.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from dpd.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from dpd.cli.connection import add_config_option, shared
from dpd.config import load_config
from dpd.errors import ConfigError, NotFound
from dpd.keys import (
    EXPIRE_DAYS_RULE,
    KEYS_FILE,
    PERMISSIONS,
    ApiKey,
    KeyStore,
    valid_expire_days,
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group, repeated = shared(add_config_option)
    parser = subparsers.add_parser(
        "keys", parents=[group], help="create, list and revoke API keys (local)"
    )
    actions = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)

    create = actions.add_parser("create", parents=[repeated], help="make a key and print it once")
    create.add_argument(
        "--permission",
        dest="permissions",
        action="append",
        required=True,
        choices=PERMISSIONS,
        help="repeat for several; admin implies all",
    )
    create.add_argument("--user", default=None, help="who the key is for (default: you)")
    create.add_argument(
        "--expire-days",
        type=int,
        default=None,
        help="lifetime in days; 0 = never (default: auth.key_expire_days)",
    )
    create.add_argument("--json", action="store_true", help="print the key record as JSON")
    create.set_defaults(handler=run_create)

    listing = actions.add_parser("list", parents=[repeated], help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="JSON for scripts")
    listing.set_defaults(handler=run_list)

    revoke = actions.add_parser("revoke", parents=[repeated], help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=run_revoke)


def _open_store(args: argparse.Namespace) -> tuple[KeyStore, int]:
    config = load_config(args.config)
    return KeyStore(Path(config.daemon.state_dir) / KEYS_FILE), config.auth.key_expire_days


def _with_store(args: argparse.Namespace) -> tuple[KeyStore, int] | None:
    try:
        return _open_store(args)
    except ConfigError as err:
        print(f"dpd: configuration error: {err}", file=sys.stderr)
        return None


def run_create(args: argparse.Namespace) -> int:
    opened = _with_store(args)
    if opened is None:
        return EXIT_CONFIG
    store, default_days = opened
    days = default_days if args.expire_days is None else args.expire_days
    if not valid_expire_days(days):
        print(f"dpd keys: --expire-days must be {EXPIRE_DAYS_RULE}", file=sys.stderr)
        return EXIT_USAGE
    try:
        raw, record = store.create(args.user or getpass.getuser(), args.permissions, days)
    except (ValueError, OSError) as err:
        print(f"dpd keys: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps({"api_key": raw, **record.public()}))
    else:
        print(raw)
        print(
            f"created {record.key_id} for {record.user} "
            f"({', '.join(record.permissions)}; expires {record.expires_at or 'never'}). "
            "The key is shown this once: store it now.",
            file=sys.stderr,
        )
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    opened = _with_store(args)
    if opened is None:
        return EXIT_CONFIG
    try:
        keys = opened[0].list_keys()
    except OSError as err:
        print(f"dpd keys: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps([k.public() for k in keys], indent=1))
    else:
        print(format_table(keys))
    return EXIT_OK


def format_table(keys: list[ApiKey], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    header = ("KEY ID", "USER", "PERMISSIONS", "CREATED", "EXPIRES", "STATE")
    rows = [
        (
            k.key_id,
            k.user,
            ",".join(k.permissions),
            k.created_at,
            k.expires_at or "never",
            "revoked" if k.revoked else ("active" if k.usable(now) else "expired"),
        )
        for k in keys
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


def run_revoke(args: argparse.Namespace) -> int:
    opened = _with_store(args)
    if opened is None:
        return EXIT_CONFIG
    try:
        record = opened[0].revoke(args.key_id)
    except NotFound:
        print(f"dpd keys: no key {args.key_id}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as err:
        print(f"dpd keys: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"revoked {record.key_id} ({record.user})", file=sys.stderr)
    return EXIT_OK
