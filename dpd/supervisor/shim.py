"""The per-job shim: owns one trainer run, outlives the daemon, records how the run ended.

``python -m dpd.supervisor.shim <job_dir>`` reads ``<job_dir>/launch.json`` (written by
``dpd.supervisor.launcher``), detaches (fork; the short-lived parent prints the shim's pid and
start time and exits, so the daemon never has to reap the shim; the shim's own stderr goes
to ``<job_dir>/shim.log``, it holds no descriptor of its caller) and supervises the trainer
the way slurmstepd or containerd-shim do (reliability.md §3, JC6; DESIGN §6).

Guarantees:
- At most one shim per job directory: ``shim.lock`` is flock'ed for the shim's whole life
  (taken before the fork); a second shim exits with ``EXIT_ALREADY_RUNNING``.
- The trainer runs in a new session (its pgid is its pid), stdin ``/dev/null``, stdout and
  stderr appended to train.log through the file itself: no pipe leads to the shim or the
  daemon, so neither can block it or kill it with SIGPIPE. SIGHUP, SIGINT, SIGTERM and
  SIGPIPE are reset to their defaults in the trainer.
- The shim is a child subreaper: workers orphaned inside the job (launcher killed, runner
  exited early) reparent to it rather than to init, so they are seen, reaped, never zombies.
- ``shim.json`` (atomic) records shim and trainer pids with their /proc start times and the
  boot id before the shim starts waiting.
- ``exit.json`` (atomic) is written once the trainer's runner has exited and nothing of the
  job remains: leftovers (descendants, group members, processes with the job's marker) get
  ``orphan_grace`` seconds, then SIGTERM, ``term_grace`` seconds, then SIGKILL.
  ``ended_at`` is when the runner was reaped.
- Fleet requeue mode (launch.json ``fence``, FLEET.md §9.4): every ``fence.check`` seconds
  the shim reads the daemon's lease; older than ``fence.after`` (or unreadable), it stops the
  trainer itself, staged (save_quit, SIGTERM, SIGKILL), even with the daemon dead or paused,
  and records the end with ``"fenced": true``. Leftovers of a fenced run are SIGKILLed at
  once: the whole stop fits in ``fence.deadline`` after the last renewal.
- Fleet mode (launch.json ``run_lock``, FLEET.md §10.2): before the trainer starts the shim
  takes ``flock(LOCK_EX|LOCK_NB)`` on the task's ``.dpd-run.lock`` in the shared output dir,
  inherited by the trainer's runner; if another host's trainer holds it, nothing starts and
  ``exit.json`` says ``duplicate_prevented`` (best effort: it depends on the filesystem).
- SIGHUP and SIGINT are ignored; SIGTERM to the shim is forwarded to the trainer's group and
  the shim keeps waiting (stopping the shim stops the job, and still records its end).

Not trusted: the trainer's exit code as a verdict (the daemon reads train.log for that).
Known weakness: a SIGKILL of the shim itself leaves the trainer without a supervisor and no
``exit.json``; the daemon detects it (pid + start time) and sweeps the job by its marker.

Imports stay at the standard library plus two light dpd modules: the shim's RSS is budgeted
(bench/bench_shim.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dpd.spool.atomic import write_json_atomic
from dpd.supervisor import proctree
from dpd.supervisor.shim_fleet import (
    DUPLICATE_PREVENTED,
    FENCED,
    kill_leftovers,
    take_run_lock,
    wait_fenced,
)
from dpd.supervisor.shim_leftovers import (
    KILL_WAIT,
    find_leftovers,
    log,
    signal_all,
    wait_until_empty,
)
from dpd.supervisor.shim_protocol import EXIT_FILE as EXIT_FILE
from dpd.supervisor.shim_protocol import JOB_MARKER as JOB_MARKER
from dpd.supervisor.shim_protocol import LAUNCH_FILE as LAUNCH_FILE
from dpd.supervisor.shim_protocol import LOCK_FILE as LOCK_FILE
from dpd.supervisor.shim_protocol import MARKER as MARKER
from dpd.supervisor.shim_protocol import SHIM_FILE as SHIM_FILE
from dpd.supervisor.shim_protocol import SHIM_LOG as SHIM_LOG
from dpd.supervisor.shim_protocol import JobMark as JobMark
from dpd.supervisor.shim_protocol import Launch as Launch

EXIT_USAGE = 2
EXIT_ALREADY_RUNNING = 3
EXIT_BAD_LAUNCH = 4

PR_SET_CHILD_SUBREAPER = 36
RESET_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ)


def decode_wait_status(status: int) -> tuple[int | None, int | None]:
    """(returncode, signal) of a waitpid status: exactly one of them is set."""
    code = os.waitstatus_to_exitcode(status)
    return (None, -code) if code < 0 else (code, None)


def describe_end(returncode: int | None, signum: int | None) -> str:
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {signum} ({name})"
    return f"exited with code {returncode}"


def resolve_executable(name: str, path_var: str | None, cwd: str) -> str:
    """Find the program the way the trainer's own PATH would (not the shim's)."""
    if "/" in name:
        return os.path.join(cwd, name)
    for folder in (path_var or os.defpath).split(":"):
        candidate = os.path.join(cwd, folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, "not found on the trainer's PATH", name)


def acquire_lock(job_dir: Path) -> int | None:
    """Take shim.lock; the descriptor is inherited by the detached shim and held until it exits."""
    fd = os.open(job_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def set_child_subreaper() -> bool:
    import ctypes  # only here: the detached shim pays for it, the launcher's checks do not

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def spawn_trainer(launch: Launch) -> int:
    """Start the command in a new session, output appended to the log file, stdin /dev/null."""
    os.chdir(launch.cwd)
    program = resolve_executable(launch.command[0], launch.env.get("PATH"), launch.cwd)
    log_fd = os.open(launch.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        return os.posix_spawn(
            program,
            launch.command,
            launch.env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
            setsigdef=RESET_SIGNALS,
        )
    finally:
        os.close(log_fd)


class Supervision:
    """The shim's mutable state, shared with its SIGTERM handler."""

    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.trainer_pid = 0
        self.stop_requested = False

    def on_sigterm(self, signum: int, frame: object) -> None:
        self.stop_requested = True
        log("SIGTERM received: forwarding it to the trainer's process group")
        self.forward(signal.SIGTERM)

    def forward(self, signum: int) -> None:
        if self.trainer_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.trainer_pid, signum)

    def install_handlers(self) -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self.on_sigterm)


def wait_for(pid: int) -> int:
    """Block until ``pid`` ends, reaping every other (reparented) child on the way."""
    while True:
        reaped, status = os.waitpid(-1, 0)
        if reaped == pid:
            return status


def clean_leftovers(launch: Launch, pgid: int) -> int:
    """Leave nothing of the job behind; returns how many processes had to be signalled."""

    def probe() -> list[int]:
        return find_leftovers(launch, pgid)

    remaining = wait_until_empty(probe, launch.orphan_grace)
    signalled: set[int] = set()
    for signum, grace in ((signal.SIGTERM, launch.term_grace), (signal.SIGKILL, KILL_WAIT)):
        if not remaining:
            break
        log(f"{len(remaining)} leftover process(es) {remaining}: sending {signum.name}")
        signalled.update(remaining)
        signal_all(remaining, pgid, signum)
        remaining = wait_until_empty(probe, grace)
    if remaining:
        log(f"processes {remaining} survived SIGKILL (uninterruptible?)")
    return len(signalled)


def shim_record(launch: Launch, trainer_pid: int, started_at: float) -> dict[str, Any]:
    me = os.getpid()
    return {
        "task_id": launch.task_id,
        "run": launch.run,
        "boot_id": proctree.boot_id(),
        "shim_pid": me,
        "shim_start_time": proctree.start_time(me),
        "trainer_pid": trainer_pid,
        "trainer_pgid": trainer_pid,
        "trainer_start_time": proctree.start_time(trainer_pid),
        "started_at": started_at,
    }


def write_exit(job_dir: Path, launch: Launch, end: dict[str, Any]) -> None:
    record = {"task_id": launch.task_id, "run": launch.run, **end}
    write_json_atomic(job_dir / EXIT_FILE, record)
    log(f"exit recorded: {record['reason']}")


def run_job(job_dir: Path, launch: Launch) -> int:
    """The detached shim's life: start, record, wait, clean up, record the end."""
    if not set_child_subreaper():
        log("prctl(PR_SET_CHILD_SUBREAPER) failed: orphans will reparent to init")
    supervision = Supervision(launch)
    supervision.install_handlers()
    if launch.run_lock and take_run_lock(launch.run_lock) is None:
        reason = f"{DUPLICATE_PREVENTED}: another trainer of this task holds {launch.run_lock}"
        end = {"returncode": None, "signal": None, "ended_at": time.time()}
        write_exit(job_dir, launch, {**end, "reason": reason, "leftovers_killed": 0,
                                     DUPLICATE_PREVENTED: True})  # fmt: skip
        return 0
    try:
        trainer_pid = spawn_trainer(launch)
    except OSError as err:
        reason = f"could not start the trainer: {err}"
        end = {"returncode": None, "signal": None, "ended_at": time.time()}
        write_exit(job_dir, launch, {**end, "reason": reason, "leftovers_killed": 0})
        return 0
    supervision.trainer_pid = trainer_pid
    if supervision.stop_requested:
        supervision.forward(signal.SIGTERM)
    try:
        write_json_atomic(job_dir / SHIM_FILE, shim_record(launch, trainer_pid, time.time()))
    except OSError as err:
        log(f"cannot record shim.json ({err}): killing the trainer, nothing can adopt it")
        supervision.forward(signal.SIGKILL)
        wait_for(trainer_pid)
        return 1
    log(f"trainer started: pid {trainer_pid}, run {launch.run}")
    return finish(job_dir, launch, trainer_pid)


def finish(job_dir: Path, launch: Launch, trainer_pid: int) -> int:
    if launch.fence is None:
        status, fenced = wait_for(trainer_pid), False
    else:
        status, fenced = wait_fenced(launch, launch.fence, trainer_pid)
    ended_at = time.time()
    returncode, signum = decode_wait_status(status)
    if fenced:
        leftovers = kill_leftovers(launch, trainer_pid)
        reason = f"{FENCED}: the node's fleet lease ran out; {describe_end(returncode, signum)}"
    else:
        leftovers = clean_leftovers(launch, trainer_pid)
        reason = describe_end(returncode, signum)
    end = {
        "returncode": returncode,
        "signal": signum,
        "ended_at": ended_at,
        "reason": reason,
        "leftovers_killed": leftovers,
        "trainer_pid": trainer_pid,
        **({"fenced": True} if fenced else {}),
    }
    try:
        write_exit(job_dir, launch, end)
    except OSError as err:
        log(f"cannot record exit.json: {err}")
        return 1
    return 0


def read_launch(job_dir: Path) -> Launch:
    with open(job_dir / LAUNCH_FILE, encoding="utf-8") as handle:
        return Launch.from_dict(json.load(handle))


def detach(job_dir: Path) -> bool:
    """Fork; the parent reports the child's pid and start time on stdout and returns True.
    The child keeps none of the caller's descriptors (they may be pipes): its stderr is
    shim.log from here on."""
    child = os.fork()
    if child:
        stat = proctree.read_stat(child)
        print(f"{child} {stat.start_time if stat else -1}", flush=True)
        return True
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    shim_log = os.open(job_dir / SHIM_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for fd, target in ((devnull, 0), (devnull, 1), (shim_log, 2)):
        os.dup2(fd, target)
    os.close(devnull)
    os.close(shim_log)
    return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m dpd.supervisor.shim <job_dir>", file=sys.stderr)
        return EXIT_USAGE
    job_dir = Path(argv[1]).resolve()
    try:
        launch = read_launch(job_dir)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log(f"unusable {LAUNCH_FILE}: {err!r}")
        return EXIT_BAD_LAUNCH
    if acquire_lock(job_dir) is None:
        log(f"another shim holds {job_dir / LOCK_FILE}")
        return EXIT_ALREADY_RUNNING
    if detach(job_dir):
        os._exit(0)  # no atexit, no buffered output: the child owns everything now
    return run_job(job_dir, launch)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
