"""``dpd fleet doctor``: is the NATS deployment safe for fleet mode? (FLEET.md §11).

Connects with the configuration's ``[nats]`` settings (not through a daemon), prints the
servers' versions, JetStream and cluster state, the sync setting (from ``fleet.monitor_url``),
the fleet buckets and the registered nodes. Exit status: 0 safe, 1 unsafe (the reasons are
printed), 3 no NATS server answered, 78 configuration error.

``dpd fleet nodes|drain|node-down`` ask a running daemon (``--url``/``--key``, as ``dpd
models``): the nodes as its fleet agent sees them, and the operator's two registry writes
(admin permission). Not yet: forget, init, history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from dpd.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from dpd.cli.connection import add_config_option, add_connection_options, auth_hint, shared
from dpd.cli.connection import credentials as find_credentials
from dpd.config import load_config
from dpd.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group, repeated = shared(add_config_option)
    parser = subparsers.add_parser(
        "fleet", parents=[group], help="fleet mode: the NATS deployment, nodes, drain, node-down"
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
    register_operator(actions)


# --- phase 3: the operator's commands, through a running daemon (FLEET.md §9.3)


def register_operator(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _, connection = shared(add_connection_options)
    nodes = actions.add_parser(
        "nodes", parents=[connection], help="the fleet's nodes: alive, lost, draining, down"
    )
    nodes.set_defaults(handler=run_nodes)
    drain = actions.add_parser(
        "drain", parents=[connection], help="a node takes no new jobs; its running jobs finish"
    )
    drain.add_argument("node")
    drain.add_argument("--undo", action="store_true", help="the node takes jobs again")
    drain.set_defaults(handler=run_drain)
    down = actions.add_parser(
        "node-down",
        parents=[connection],
        help="assert a lost node is dead: its held jobs are requeued",
    )
    down.add_argument("node")
    down.add_argument("--reason", default="", help="recorded with the mark")
    down.set_defaults(handler=run_node_down)


def _operator(args: argparse.Namespace, method: str, path: str, body: object = None) -> int:
    from dpd.cli.models import ApiError, Unavailable, call

    args.credentials = find_credentials(args)
    try:
        data = call(args, method, "/fleet" + path, body)
    except ApiError as err:
        print(f"error {err.code}: {err}", file=sys.stderr)
        hint = auth_hint(err.code, str(err), args.credentials)
        if hint:
            print(hint, file=sys.stderr)
        return EXIT_FAILURE
    except Unavailable as err:
        print(err, file=sys.stderr)
        return EXIT_UNAVAILABLE
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
    elif path == "/nodes":
        print("\n".join(nodes_table(data.get("nodes", []))))
    else:
        print("\n".join(nodes_table([data])))
    return EXIT_OK


def nodes_table(nodes: list[dict[str, object]]) -> list[str]:
    """One line per node: name, state, GPUs (free/total), running and held jobs."""
    rows = [("NODE", "STATE", "GPUS FREE/TOTAL", "RUNNING", "HELD (node_state lost)")]
    for n in nodes:
        free = n.get("free_gpus") or []
        running = n.get("running") or []
        held = n.get("held") or []
        assert isinstance(free, list) and isinstance(running, list) and isinstance(held, list)
        rows.append(
            (
                str(n.get("node", "")),
                _state(n),
                f"{len(free)}/{n.get('gpus', '?')}",
                str(len(running)),
                ", ".join(str(t) for t in held) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _state(node: dict[str, object]) -> str:
    since = node.get("lost_since")
    return f"{node.get('state', '')} since {since}" if since else str(node.get("state", ""))


def run_nodes(args: argparse.Namespace) -> int:
    return _operator(args, "GET", "/nodes")


def run_drain(args: argparse.Namespace) -> int:
    return _operator(args, "POST", f"/nodes/{args.node}/drain", {"undo": bool(args.undo)})


def run_node_down(args: argparse.Namespace) -> int:
    body = {"reason": args.reason} if args.reason else {}
    return _operator(args, "POST", f"/nodes/{args.node}/down", body)


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
