"""``--quick`` for every benchmark: a run of a few seconds with small sizes, for CI.

It keeps benchmarks from rotting (each one runs end to end on every CI run and prints its
figures), not a measurement: at these sizes the figures are noise and no target is judged.
Values given on the command line still win over the quick sizes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

QUICK_HELP = "a few seconds with small sizes, for CI: figures printed, no target judged"


def parse_args(
    parser: argparse.ArgumentParser, quick: dict[str, Any], argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser``'s arguments plus ``--quick``, which makes ``quick`` the defaults."""
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)
