"""The ``dpd`` command. Each module of this package adds its subcommands through
``register(subparsers)``; they are found by name, so a new command is a new module."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from dpd import __version__

# Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_FAILURE = 1  # the daemon answered with an error
EXIT_USAGE = 2  # bad command line
EXIT_UNAVAILABLE = 3  # the daemon could not be reached
EXIT_CONFIG = 78  # configuration error (EX_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpd", description="diffusion-pipe training daemon")
    parser.add_argument("--version", action="version", version=f"dpd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return int(handler(args) or 0)
