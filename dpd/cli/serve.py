"""``dpd serve``: run the daemon in the foreground (systemd runs exactly this).

A configuration error, found while reading the file or later while the daemon builds and
starts its components (a model catalog, the spool's file systems, the GPU backend), ends it
with one line and exit status 78 (EX_CONFIG): the unit's ``RestartPreventExitStatus=78``
then keeps systemd from restarting it in a loop until the operator fixes the file.
"""

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
    try:
        return serve(config, args.config)
    except ConfigError as err:
        print(f"dpd: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
