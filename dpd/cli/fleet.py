"""``dpd fleet doctor``: is the NATS deployment safe for fleet mode? (FLEET.md §11).

Connects with the configuration's ``[nats]`` settings (not through a daemon), prints the
servers' versions, JetStream and cluster state, the sync setting (from ``fleet.monitor_url``),
the fleet buckets and the registered nodes. Exit status: 0 safe, 1 unsafe (the reasons are
printed), 3 no NATS server answered, 78 configuration error. Other ``dpd fleet`` actions
(nodes, drain, node-down, forget, init, history) come with the fleet agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from dpd.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from dpd.cli.connection import add_config_option, shared
from dpd.config import load_config
from dpd.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group, repeated = shared(add_config_option)
    parser = subparsers.add_parser(
        "fleet", parents=[group], help="fleet mode: check the NATS deployment"
    )
    actions = parser.add_subparsers(dest="fleet_action", metavar="ACTION", required=True)
    doctor = actions.add_parser(
        "doctor",
        parents=[repeated],
        help="servers, sync setting, buckets, nodes; non-zero exit when unsafe",
    )
    doctor.add_argument("--json", action="store_true", help="JSON for scripts")
    doctor.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for NATS (default 10)"
    )
    doctor.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from dpd.fleet.doctor import examine, render
    from dpd.fleet.startup import NatsUnreachable

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"dpd: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if not config.nats.url:
        print("dpd fleet doctor: [nats] url is not set", file=sys.stderr)
        return EXIT_CONFIG
    try:
        report = asyncio.run(examine(config, args.timeout))
    except NatsUnreachable as err:
        print(f"dpd fleet doctor: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(render(report)))
    return EXIT_OK if report.safe else EXIT_FAILURE
