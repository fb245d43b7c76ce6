"""Commands that talk to a running daemon over REST: submit, ls, show, logs, stop, resume,
gpus, watch (DESIGN §2).

Every command takes ``--url`` (``DPD_URL``, default http://127.0.0.1:5000), ``--key``
(``DPD_API_KEY``; on the daemon's machine the local key file, found through ``--config``) and
``--json`` (the answer's ``data`` as JSON for scripts; streams print one JSON object per
line). A 401 or 403 comes with a hint on how to get a key that works. Exit codes
(``dpd.cli``): 0 done; 1 the daemon answered with an error (or ``watch``: the task did not
complete); 2 bad command line or job file; 3 the daemon could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from dpd.cli import EXIT_FAILURE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE
from dpd.cli.connection import add_connection_options, auth_hint, completes_files, credentials
from dpd.cli.validate_local import check_job_file, error_lines, read_job_bytes
from dpd.client import DpdClient, DpdError, UnavailableError, ValidationError, display
from dpd.errors import FieldError

TERMINAL = frozenset({"completed", "failed", "stopped"})
STATUSES = ("queued", "running", "stopping", "completed", "failed", "stopped")
REDRAW_SECONDS = 0.2  # a terminal's bar at most this often
PLAIN_LINE_SECONDS = 5.0  # without a terminal: one line per phase/status change or this often

Command = Callable[[argparse.Namespace, DpdClient], int]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_connection_options(common)

    def add(name: str, command: Command, help_text: str) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, parents=[common], help=help_text)
        parser.set_defaults(handler=lambda args: run(args, command))
        return parser

    submit = add("submit", cmd_submit, "submit a job file (JSON or YAML)")
    completes_files(submit.add_argument("file", help="job document; - reads standard input"))
    submit.add_argument("--queue", action="store_true", help="wait for a busy GPU")
    listing = add("ls", cmd_ls, "list training tasks")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--limit", type=int, default=50)
    add("show", cmd_show, "show one task").add_argument("task_id")
    logs = add("logs", cmd_logs, "print a task's log")
    logs.add_argument("task_id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=100)
    logs.add_argument("--level", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    logs.add_argument("--type", choices=("train", "eval", "system", "all"))
    stop = add("stop", cmd_stop, "stop a task (graceful: checkpoint first)")
    stop.add_argument("task_id")
    stop.add_argument("--force", action="store_true", help="kill at once")
    add("resume", cmd_resume, "resume a stopped or failed task").add_argument("task_id")
    add("gpus", cmd_gpus, "GPU status")
    add("watch", cmd_watch, "live progress until the task ends").add_argument("task_id")


def run(args: argparse.Namespace, command: Command) -> int:
    """The one place remote errors become messages and exit codes."""
    who = credentials(args)
    client = DpdClient(who.url, who.key)
    try:
        return command(args, client)
    except UnavailableError as err:
        print(f"dpd: {err.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except DpdError as err:
        if args.json:
            print(json.dumps({"code": err.code, "message": err.message, "data": err.data}))
        print(f"dpd: error {err.code}: {err.message}", file=sys.stderr)
        hint = auth_hint(err.code, err.message, who)
        if hint:
            print(hint, file=sys.stderr)
        if isinstance(err, ValidationError):
            for problem in err.errors:
                print(f"  {problem.get('field')}: {problem.get('message')}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, ensure_ascii=False) if args.json else text)


# ------------------------------------------------------------------ commands


def cmd_submit(args: argparse.Namespace, client: DpdClient) -> int:
    """Checked here first with the daemon's validator (dpd.cli.validate_local): an
    unreadable file exits 2, an invalid one 1 with every ``field: message``; then sent."""
    try:
        checked = check_job_file(args.file, read_job_bytes(args.file))
    except OSError as err:
        print(f"dpd: {args.file}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    if checked.unreadable is not None:
        print(f"dpd: {args.file}: {checked.unreadable}", file=sys.stderr)
        return EXIT_USAGE
    if checked.document is None:
        return _print_local_errors(args, checked.errors)
    document = checked.document
    if args.queue:
        document["queue"] = True
    answer = client.submit(document)
    data = answer["data"]
    note = "" if answer["code"] == 201 else " (already submitted)"
    emit(args, data, f"{data['task_id']} {data['status']}{note}")
    return EXIT_OK


def _print_local_errors(args: argparse.Namespace, errors: tuple[FieldError, ...]) -> int:
    if args.json:
        listed = [error.as_dict() for error in errors]
        print(json.dumps({"code": 422, "message": "validation failed", "data": {"errors": listed}}))
    print(f"dpd: error 422: {args.file} is not a valid job (checked before sending):",
          file=sys.stderr)  # fmt: skip
    for line in error_lines(errors):
        print(line, file=sys.stderr)
    return EXIT_FAILURE


def cmd_ls(args: argparse.Namespace, client: DpdClient) -> int:
    data = client.list_trainings(status=args.status, limit=args.limit)["data"]
    emit(args, data, display.task_rows(data["tasks"]))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, client: DpdClient) -> int:
    data = client.get_training(args.task_id)["data"]
    emit(args, data, display.task_details(data))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, client: DpdClient) -> int:
    """The last ``--tail`` lines, then with ``-f`` every new line until the task ends."""
    data = client.get_logs(args.task_id, tail=args.tail, type=args.type, level=args.level)
    for entry in data["data"]["logs"]:
        emit(args, entry, display.log_line(entry))
    if args.follow:
        events = client.stream_logs(
            args.task_id,
            last_event_id=str(data["data"].get("last_seq", "")) or None,
            kinds="log",
            level=args.level,
            type=args.type,
        )
        for event in events:
            emit(args, event.data, display.log_line(event.data))
            sys.stdout.flush()
    return EXIT_OK


def cmd_stop(args: argparse.Namespace, client: DpdClient) -> int:
    data = client.stop_training(args.task_id, force=args.force)["data"]
    saved = data.get("last_checkpoint") or data.get("last_model")
    emit(args, data, f"{data['task_id']} {data['status']}" + (f", saved: {saved}" if saved else ""))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, client: DpdClient) -> int:
    data = client.resume_training(args.task_id)["data"]
    emit(args, data, f"{data['task_id']} {data['status']}")
    return EXIT_OK


def cmd_gpus(args: argparse.Namespace, client: DpdClient) -> int:
    data = client.gpu_status()["data"]
    emit(args, data, display.gpu_rows(data.get("gpus") or []))
    return EXIT_OK


# --------------------------------------------------------------------- watch


class WatchScreen:
    """Draws the progress bar: redrawn in place on a terminal, plain lines otherwise."""

    def __init__(self, task_id: str, tty: bool) -> None:
        self.task_id = task_id
        self.tty = tty
        self.status: str | None = None
        self.phase: str | None = None
        self.progress: dict[str, Any] = {}
        self.metrics: dict[str, Any] = {}
        self._drawn_at = 0.0
        self._drawn_key: tuple[str | None, str | None] = (None, None)

    def update(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "progress":
            self.progress = data
            self.phase = data.get("phase", self.phase)
        elif kind == "status":
            self.status = data.get("data", data).get("status", self.status)
        elif kind == "metrics":
            point = data.get("data", data)
            if point.get("metric") == "loss" and point.get("type") == "step":
                self.metrics["current_loss"] = point.get("value")

    def line(self) -> str:
        bar = display.progress_line(self.progress, self.metrics)
        return f"{self.task_id}  {self.status or '?'}  {self.phase or '-'}  {bar}"

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        key = (self.status, self.phase)
        every = REDRAW_SECONDS if self.tty else PLAIN_LINE_SECONDS
        if not force and key == self._drawn_key and now - self._drawn_at < every:
            return
        self._drawn_at, self._drawn_key = now, key
        if self.tty:
            line = display.fit_width(self.line(), display.terminal_columns(sys.stdout))
            sys.stdout.write("\r\x1b[2K" + line)
        else:
            sys.stdout.write(self.line() + "\n")
        sys.stdout.flush()


def cmd_watch(args: argparse.Namespace, client: DpdClient) -> int:
    """Live bar (percent, epoch, step, loss, ETA, phase) until the task ends; exit 0 only
    if it completed."""
    task_id = args.task_id
    current = client.get_training_progress(task_id)["data"]
    screen = WatchScreen(task_id, sys.stdout.isatty() and not args.json)
    screen.status, screen.progress = current["status"], dict(current.get("progress") or {})
    screen.phase = current.get("phase") or screen.progress.get("phase")
    screen.metrics = dict(current.get("metrics") or {})
    if args.json:
        print(json.dumps({"kind": "snapshot", "data": current}))
    else:
        screen.draw(force=True)
    if current["status"] not in TERMINAL:
        for event in client.stream_logs(task_id, kinds="progress,status,metrics"):
            data = event.data if event.kind != "progress" else event.data.get("data", {})
            if args.json:
                print(json.dumps({"kind": event.kind, "data": event.data}), flush=True)
            screen.update(event.kind, data)
            if not args.json:
                screen.draw(force=event.kind == "status")
    final = client.get_training(task_id)["data"]
    status = final["status"]
    if not args.json:
        screen.status = status
        screen.draw(force=True)
        if screen.tty:
            sys.stdout.write("\n")
        error = display.task_details({"error": final.get("error")}) if final.get("error") else ""
        print(f"{task_id} {status}" + (f"\n{error}" if error else ""))
    return EXIT_OK if status == "completed" else EXIT_FAILURE
