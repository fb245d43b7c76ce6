"""``dpd serve``: run the daemon in the foreground (systemd runs exactly this)."""

from __future__ import annotations

import argparse
import sys

from dpd.cli import EXIT_CONFIG
from dpd.cli.connection import add_config_option
from dpd.config import load_config
from dpd.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("serve", help="run the daemon in the foreground")
    add_config_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"dpd: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from dpd.daemon import serve
    from dpd.logsetup import setup_logging

    setup_logging(config.daemon.log_level, config.daemon.log_file)
    return serve(config, args.config)
