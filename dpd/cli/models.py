"""``dpd models``: the catalog with what is installed, and model downloads with a progress
bar, through a running daemon's REST API (``--url``/``DPD_URL``, ``--key``/``DPD_API_KEY``).

    dpd models                       table of model types and installed components
    dpd models pull ID [--component NAME ...] [--version V] [--json] [--detach]
    dpd models downloads             recent downloads
    dpd models cancel DOWNLOAD_ID

``pull`` follows the download until it ends; Ctrl-C stops following, not the download.
The HTTP plumbing is deliberately minimal (stdlib urllib) until the shared SDK exists.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE
from dpd.cli.connection import Credentials, add_connection_options, auth_hint, credentials, shared
from dpd.client import display
from dpd.models.progress import human_duration, human_size

POLL_SECONDS = 0.5
BAR_WIDTH = 30


class ApiError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.data = data


class Unavailable(Exception):
    pass


def register(subparsers: Any) -> None:
    group, repeated = shared(add_connection_options)
    parser = subparsers.add_parser("models", parents=[group], help="model catalog and downloads")
    parser.set_defaults(handler=list_command)
    commands = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    pull = commands.add_parser("pull", parents=[repeated], help="download a model's weights")
    pull.add_argument("model_id")
    pull.add_argument("--component", action="append", dest="components", metavar="NAME")
    pull.add_argument("--version")
    pull.add_argument("--detach", action="store_true", help="start it and return at once")
    pull.set_defaults(handler=pull_command)
    downloads = commands.add_parser("downloads", parents=[repeated], help="list model downloads")
    downloads.set_defaults(handler=downloads_command)
    cancel = commands.add_parser("cancel", parents=[repeated], help="cancel a model download")
    cancel.add_argument("download_id")
    cancel.set_defaults(handler=cancel_command)


# ----------------------------------------------------------------- HTTP


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    """One REST call; returns the envelope's data or raises ApiError / Unavailable."""
    who: Credentials = args.credentials
    base, key = who.url, who.key
    request = urllib.request.Request(
        base.rstrip("/") + "/api/v1" + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {key}"} if key else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["data"]
    except urllib.error.HTTPError as err:
        try:
            envelope = json.loads(err.read())
        except ValueError:
            raise ApiError(err.code, err.reason) from None
        raise ApiError(
            err.code, envelope.get("message", err.reason), envelope.get("data")
        ) from None
    except (urllib.error.URLError, OSError) as err:
        raise Unavailable(f"cannot reach the daemon at {base}: {err}") from None


def _guarded(run: Any, args: argparse.Namespace) -> int:
    args.credentials = credentials(args)
    try:
        return int(run(args))
    except ApiError as err:
        print(f"error {err.code}: {err}", file=sys.stderr)
        hint = auth_hint(err.code, str(err), args.credentials)
        if hint:
            print(hint, file=sys.stderr)
        for problem in (err.data or {}).get("errors", []) if isinstance(err.data, dict) else []:
            print(f"  {problem['field']}: {problem['message']}", file=sys.stderr)
        return EXIT_FAILURE
    except Unavailable as err:
        print(err, file=sys.stderr)
        return EXIT_UNAVAILABLE


# ----------------------------------------------------------------- commands


def list_command(args: argparse.Namespace) -> int:
    return _guarded(_list, args)


def pull_command(args: argparse.Namespace) -> int:
    return _guarded(_pull, args)


def downloads_command(args: argparse.Namespace) -> int:
    return _guarded(_downloads, args)


def cancel_command(args: argparse.Namespace) -> int:
    return _guarded(_cancel, args)


def _list(args: argparse.Namespace) -> int:
    models = call(args, "GET", "/models/list")["models"]
    if args.json:
        print(json.dumps(models, indent=1))
        return EXIT_OK
    print(models_table(models))
    return EXIT_OK


def _pull(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model_id": args.model_id}
    if args.components:
        body["components"] = args.components
    if args.version:
        body["version"] = args.version
    view = call(args, "POST", "/models/download", body)
    print(f"download {view['download_id']} started", file=sys.stderr)
    if not args.detach:
        try:
            view = follow(args, view, sys.stderr)
        except KeyboardInterrupt:
            print(f"\nstill downloading: dpd models cancel {view['download_id']}", file=sys.stderr)
            return EXIT_FAILURE
    if args.json:
        print(json.dumps(view, indent=1))
    elif view["status"] == "failed":
        print(f"failed: {view['error']}", file=sys.stderr)
    return EXIT_OK if view["status"] in ("completed", "downloading") else EXIT_FAILURE


def _downloads(args: argparse.Namespace) -> int:
    downloads = call(args, "GET", "/models/downloads")["downloads"]
    if args.json:
        print(json.dumps(downloads, indent=1))
        return EXIT_OK
    print(f"{'DOWNLOAD':<22} {'MODEL':<18} {'STATUS':<12} {'PROGRESS':>8}  SIZE")
    for d in downloads:
        size = human_size(d["bytes_total"])
        progress = f"{d['progress']}%"
        print(f"{d['download_id']:<22} {d['model_id']:<18} {d['status']:<12} {progress:>8}  {size}")
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    view = call(args, "POST", f"/models/download/{args.download_id}/cancel")
    print(f"{view['download_id']} {view['status']}")
    return EXIT_OK


def follow(args: argparse.Namespace, view: dict[str, Any], out: TextIO) -> dict[str, Any]:
    """Poll until the download ends, drawing one bar line (redrawn in place on a terminal)."""
    interactive = out.isatty()
    last_line = ""
    while True:
        line = progress_line(view)
        if line != last_line:
            shown = display.fit_width(line, display.terminal_columns(out))
            out.write(("\r\x1b[2K" + shown) if interactive else line + "\n")
            out.flush()
            last_line = line
        if view["status"] != "downloading":
            if interactive:
                out.write("\n")
            return view
        time.sleep(POLL_SECONDS)
        view = call(args, "GET", f"/models/download/{view['download_id']}")


# ----------------------------------------------------------------- text shaping (pure)


def progress_line(view: dict[str, Any]) -> str:
    filled = int(BAR_WIDTH * view["progress"] / 100)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    done, total = human_size(view["bytes_done"]), human_size(view["bytes_total"])
    line = f"[{bar}] {view['progress']:5.1f}% {done}/{total}"
    if view["status"] == "downloading":
        speed = human_size(view["speed_bps"]) + "/s"
        eta = human_duration(view["eta_seconds"]) or "?"
        return f"{line} {speed} ETA {eta}"
    return f"{line} {view['status']}"


def models_table(models: list[dict[str, Any]]) -> str:
    rows = [("ID", "TYPE", "LORA", "FFT", "FP8", "VRAM GB", "INSTALLED")]
    for m in models:
        components = m["components"]
        have = sum(1 for c in components if c["installed"])
        rows.append(
            (
                m["id"],
                m["type"],
                _yes(m["supports_lora"]),
                _yes(m["supports_full_finetune"]),
                _yes(m["supports_fp8"]),
                f"{m['min_vram_gb']:g}/{m['recommended_vram_gb']:g}",
                "yes" if have == len(components) else f"{have}/{len(components)} components",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
