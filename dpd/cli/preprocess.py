"""``dpd preprocess FILE --prompt ... --model wan [--dataset NAME] [--wait]``.

Uploads over REST with the standard library only: the multipart body is streamed from the
file with a known Content-Length (never read whole into memory), with an upload progress
bar, then, with ``--wait``, the task is followed to its end with a processing progress bar.
The HTTP plumbing is deliberately small and self-contained; the SDK will take it over.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from dpd.cli.connection import (
    Credentials,
    add_connection_options,
    auth_hint,
    completes_files,
    credentials,
)
from dpd.client import display

CHUNK = 1 << 20
POLL_INTERVAL = 0.5
TERMINAL = ("completed", "failed", "stopped")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("preprocess", help="upload a clip or image into a dataset")
    completes_files(
        parser.add_argument("file", type=Path, help="video (mp4, avi, mov, mkv, webm) or image")
    )
    parser.add_argument("--prompt", required=True, help="the caption")
    parser.add_argument("--model", required=True, help="model type, e.g. wan, hunyuan-video")
    parser.add_argument("--dataset", help="dataset directory name (default: the model type)")
    parser.add_argument("--fps", type=int, help="output frame rate (default: the model's)")
    parser.add_argument("--resolution", help="WIDTHxHEIGHT, e.g. 512x512")
    parser.add_argument("--frame-buckets", help="e.g. 1,33,65 (default: the model's)")
    parser.add_argument("--wait", action="store_true", help="follow the task to its end")
    add_connection_options(parser)  # its --json: the final envelope as JSON
    parser.set_defaults(handler=run)


class Connection:
    """One daemon address and key; every call returns the decoded envelope."""

    def __init__(self, url: str, key: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.parts = parts
        self.key = key

    def open(self) -> http.client.HTTPConnection:
        cls = (
            http.client.HTTPSConnection
            if self.parts.scheme == "https"
            else http.client.HTTPConnection
        )
        return cls(self.parts.hostname or "", self.parts.port, timeout=60)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def path(self, route: str) -> str:
        return self.parts.path.rstrip("/") + "/api/v1" + route

    def get(self, route: str) -> dict[str, Any]:
        conn = self.open()
        try:
            conn.request("GET", self.path(route), headers=self.headers())
            return _envelope(conn.getresponse())
        finally:
            conn.close()


def _envelope(response: http.client.HTTPResponse) -> dict[str, Any]:
    body = response.read()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return {
            "code": response.status,
            "message": body[:200].decode(errors="replace"),
            "data": None,
        }
    return data


def multipart_parts(fields: dict[str, str], filename: str, boundary: str) -> tuple[bytes, bytes]:
    """The bytes before and after the file's content."""
    head = b""
    for name, value in fields.items():
        head += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        head += value.encode() + b"\r\n"
    quoted = filename.replace("\\", "_").replace('"', "_")
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="{quoted}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


def upload(
    connection: Connection, path: Path, fields: dict[str, str], show: bool = True
) -> dict[str, Any]:
    """Stream ``path`` with ``fields`` to /preprocess/upload; the envelope comes back."""
    boundary = "dpd" + secrets.token_hex(12)
    head, tail = multipart_parts(fields, path.name, boundary)
    size = path.stat().st_size
    conn = connection.open()
    try:
        conn.putrequest("POST", connection.path("/preprocess/upload"))
        for name, value in connection.headers().items():
            conn.putheader(name, value)
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
        conn.endheaders()
        try:
            conn.send(head)
            with path.open("rb") as f:
                _send_file(conn, f, size, show)
            conn.send(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused early (413, 401...): its answer says why
        return _envelope(conn.getresponse())
    finally:
        conn.close()


def _send_file(conn: http.client.HTTPConnection, f: BinaryIO, size: int, show: bool) -> None:
    sent = 0
    while chunk := f.read(CHUNK):
        conn.send(chunk)
        sent += len(chunk)
        if show:
            _bar(sent / size if size else 1.0, f"upload {sent >> 20}/{size >> 20} MiB")
    if show:
        sys.stderr.write("\n")


def _bar(fraction: float, label: str) -> None:
    filled = int(30 * min(1.0, fraction))
    line = f"[{'#' * filled}{'-' * (30 - filled)}] {fraction * 100:5.1f}% {label}"
    if sys.stderr.isatty():
        line = "\x1b[2K" + display.fit_width(line, display.terminal_columns(sys.stderr))
    sys.stderr.write("\r" + line)
    sys.stderr.flush()


def follow(connection: Connection, task_id: str, show: bool = True) -> dict[str, Any]:
    """Poll the status until the task ends; the last envelope comes back."""
    while True:
        envelope = connection.get(f"/preprocess/status/{task_id}")
        data = envelope.get("data") or {}
        if envelope.get("code") != 200 or data.get("status") in TERMINAL:
            if show:
                sys.stderr.write("\n")
            return envelope
        if show:
            eta = data.get("eta_seconds")
            step = data.get("current_step") or data.get("status")
            _bar(
                float(data.get("progress") or 0) / 100,
                f"{step}" + (f" eta {eta:.0f}s" if eta else ""),
            )
        time.sleep(POLL_INTERVAL)


def run(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"dpd preprocess: {args.file}: no such file", file=sys.stderr)
        return EXIT_USAGE
    fields = {"prompt": args.prompt, "model_type": args.model}
    for name in ("dataset", "fps", "resolution", "frame_buckets"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = str(value)
    show = not args.json
    who = credentials(args)
    try:
        connection = Connection(who.url, who.key or "")
        envelope = upload(connection, args.file, fields, show)
        if envelope.get("code") == 202 and args.wait:
            envelope = follow(connection, envelope["data"]["task_id"], show)
    except (OSError, http.client.HTTPException, ValueError) as err:
        print(f"dpd preprocess: cannot reach the daemon at {who.url}: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return _report(envelope, args.json, who)


def _report(envelope: dict[str, Any], as_json: bool, who: Credentials) -> int:
    data = envelope.get("data") or {}
    ok = envelope.get("code") in (200, 202) and data.get("status") not in ("failed", "stopped")
    if as_json:
        print(json.dumps(envelope, ensure_ascii=False, indent=1))
    elif not ok:
        print(f"error {envelope.get('code')}: {envelope.get('message')}", file=sys.stderr)
        code = envelope.get("code")
        hint = auth_hint(code if isinstance(code, int) else 0, str(envelope.get("message")), who)
        if hint:
            print(hint, file=sys.stderr)
        for problem in (data.get("errors") or []) if isinstance(data, dict) else []:
            print(f"  {problem.get('field')}: {problem.get('message')}", file=sys.stderr)
        if data.get("error"):
            print(f"  {data['error']}", file=sys.stderr)
    else:
        result = data.get("result") or {}
        print(f"{data.get('task_id')}: {data.get('status')}")
        if result:
            print(f"  {result.get('video_path')}  (dataset {result.get('dataset_dir')})")
    return EXIT_OK if ok else EXIT_FAILURE
