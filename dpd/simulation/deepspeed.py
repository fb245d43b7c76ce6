"""Stand-in for the `deepspeed` launcher (DeepSpeed 0.18.4), single-node mode. STDLIB ONLY.

It is a simulation: it never touches a GPU. It exists so that tests, and `dpd demo` on
machines without GPUs, can run the daemon's real launch command against a trainer that
behaves like the real one (reference: diffusion-pipe.md §1.3, §6.2, §6.3).

Label: the runner prints exactly one line on stderr at start, beginning with
`[dpd-simulation]`. Nothing else differs from the real programs' formats.

Process tree, as the real launcher builds it:

- Runner A (this file, no mode argument): parses the runner options, prints the hostfile
  warning, applies the `CUDA_VISIBLE_DEVICES` rules, spawns B and waits. A installs no
  signal handlers (single-node mode), so a SIGTERM to A alone kills only A and orphans B
  and the workers. A exits with B's code when it is > 0, otherwise 0 (so B killed by a
  signal gives 0).
- Launcher B (this file, first argument `--dpd-sim-launch`, standing in for
  `python -u -m deepspeed.launcher.launch`): spawns one worker per GPU
  (`python -u train.py --local_rank=<i> <user args>`) with RANK, LOCAL_RANK, WORLD_SIZE,
  LOCAL_SIZE, MASTER_ADDR, MASTER_PORT, CROSS_RANK, CROSS_SIZE, CUDA_VISIBLE_DEVICES;
  polls them every second; on SIGTERM/SIGINT, or when a worker exits non-zero, terminates
  every worker's process tree (SIGTERM, wait, SIGKILL survivors) and exits 1 (signal) or
  with the worker's code (a worker killed by signal N gives 256-N).

Environment knobs (simulation only):

- DPD_SIM_GPU_COUNT: how many GPUs the simulated machine has (default 8; 0 gives the
  real "no GPU resources" error).
- DPD_SIM_TERMINATE_SECONDS: how long B waits after SIGTERM before SIGKILL (default 30,
  as psutil.wait_procs in the real launcher).
- DPD_SIM_POLL_SECONDS: B's poll period (default 1, as the real launcher; tests use less).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

LAUNCH_MODE = "--dpd-sim-launch"
SIMULATION_LABEL = (
    "[dpd-simulation] simulated deepspeed launcher and trainer: "
    "no GPU is used and nothing is trained"
)
_SIG_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def log(level: str, where: str, message: str) -> None:
    """DeepSpeed's logger format; it writes to stdout."""
    now = datetime.now()
    stamp = now.strftime("%Y-%m-%d %H:%M:%S") + f",{now.microsecond // 1000:03d}"
    sys.stdout.write(f"[{stamp}] [{level}] [{where}] {message}\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- runner (A)


def runner_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepspeed", description="DeepSpeed runner (dpd simulation)"
    )
    parser.add_argument("-H", "--hostfile", type=str, default="/job/hostfile")
    parser.add_argument("-i", "--include", type=str, default="")
    parser.add_argument("-e", "--exclude", type=str, default="")
    parser.add_argument("--num_nodes", type=int, default=-1)
    parser.add_argument("--num_gpus", "--num_accelerators", type=int, default=-1)
    parser.add_argument("--master_port", type=int, default=29500)
    parser.add_argument("--master_addr", type=str, default="")
    parser.add_argument("--module", action="store_true")
    parser.add_argument("--no_python", action="store_true")
    parser.add_argument("--no_local_rank", action="store_true")
    parser.add_argument("--save_pid", action="store_true")
    parser.add_argument("--enable_each_rank_log", type=str, default="None")
    parser.add_argument("--log_level", type=str, default="info")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("user_script", type=str)
    parser.add_argument("user_args", nargs=argparse.REMAINDER)
    return parser


def _parse_filter(text: str) -> dict[str, list[int]]:
    """`localhost:0,1@otherhost` -> {"localhost": [0, 1], "otherhost": []}."""
    hosts: dict[str, list[int]] = {}
    for part in text.split("@"):
        host, _, slots = part.partition(":")
        hosts[host] = [int(s) for s in slots.split(",")] if slots else []
    return hosts


def select_gpus(args: argparse.Namespace, gpu_count: int) -> list[int]:
    """The runner's resource filter on the single local host."""
    if gpu_count <= 0:
        raise RuntimeError("Unable to proceed, no GPU resources available")
    available = list(range(gpu_count))
    if args.include:
        chosen: list[int] = []
        for host, slots in _parse_filter(args.include).items():
            if host != "localhost":
                raise ValueError(f"Hostname '{host}' not found in hostfile")
            for slot in slots or available:
                if slot not in available:
                    raise ValueError(f"No slot '{slot}' specified on host '{host}'")
                chosen.append(slot)
        available = sorted(set(chosen))
    if args.exclude:
        for host, slots in _parse_filter(args.exclude).items():
            if host != "localhost":
                raise ValueError(f"Hostname '{host}' not found in hostfile")
            available = [] if not slots else [g for g in available if g not in slots]
    if args.num_gpus > 0:
        available = available[: args.num_gpus]
    return available


def apply_visible_devices_rule(args: argparse.Namespace, env: dict[str, str]) -> None:
    """The runner deletes CUDA_VISIBLE_DEVICES, or turns it into --include (§1.3)."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return
    if args.num_gpus >= 0 or args.include or args.exclude or args.num_nodes >= 0:
        log(
            "INFO",
            "runner.py:470:main",
            f"Detected VISIBLE_DEVICES={visible} but ignoring it because one or several of "
            "--include/--exclude/--num_gpus/--num_nodes cl args were used. If you want to use "
            "CUDA_VISIBLE_DEVICES don't pass any of these arguments to deepspeed.",
        )
    else:
        args.include = f"localhost:{visible}"
        log(
            "INFO",
            "runner.py:475:main",
            f"Detected VISIBLE_DEVICES={visible}: setting --include={args.include}",
        )
    del env["CUDA_VISIBLE_DEVICES"]


def launcher_command(args: argparse.Namespace, gpus: list[int]) -> list[str]:
    world_info = base64.urlsafe_b64encode(json.dumps({"localhost": gpus}).encode()).decode()
    cmd = [sys.executable, "-u", os.path.abspath(__file__), LAUNCH_MODE]
    cmd += [
        f"--world_info={world_info}",
        f"--master_addr={args.master_addr or '127.0.0.1'}",
        f"--master_port={args.master_port}",
        f"--enable_each_rank_log={args.enable_each_rank_log}",
        f"--log_level={args.log_level}",
    ]
    if args.save_pid:
        cmd.append(f"--save_pid={os.getpid()}")
    for flag in ("module", "no_python", "no_local_rank"):
        if getattr(args, flag):
            cmd.append(f"--{flag}")
    return [*cmd, args.user_script, *args.user_args]


def run_runner(argv: list[str]) -> int:
    """Process A. Deliberately installs no signal handlers."""
    sys.stderr.write(SIMULATION_LABEL + "\n")
    sys.stderr.flush()
    args = runner_parser().parse_args(argv)
    if (args.num_nodes >= 0 or args.num_gpus >= 0) and (args.include or args.exclude):
        raise ValueError("Cannot specify num_nodes/gpus with include/exclude")
    if not os.path.isfile(args.hostfile):
        log(
            "WARNING",
            "runner.py:215:fetch_hostfile",
            "Unable to find hostfile, will proceed with training with local resources only.",
        )
    env = dict(os.environ)
    apply_visible_devices_rule(args, env)
    gpus = select_gpus(args, int(os.environ.get("DPD_SIM_GPU_COUNT", "8")))
    cmd = launcher_command(args, gpus)
    log("INFO", "runner.py:607:main", "cmd = " + " ".join(cmd))
    result = subprocess.Popen(cmd, env=env)
    result.wait()
    # Like the real runner: only a positive code is propagated; a signal death gives 0.
    return result.returncode if result.returncode > 0 else 0


# --------------------------------------------------------------------------- launcher (B)


def launch_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepspeed.launcher.launch")
    parser.add_argument("--node_rank", type=int, default=0)
    parser.add_argument("--master_addr", type=str, default="127.0.0.1")
    parser.add_argument("--master_port", type=int, default=29500)
    parser.add_argument("--world_info", type=str, default="None")
    parser.add_argument("--module", action="store_true")
    parser.add_argument("--no_python", action="store_true")
    parser.add_argument("--no_local_rank", action="store_true")
    parser.add_argument("--save_pid", type=int, default=0)
    parser.add_argument("--enable_each_rank_log", type=str, default="None")
    parser.add_argument("--log_level", type=str, default="info")
    parser.add_argument("training_script", type=str)
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    return parser


def descendants(pid: int) -> list[int]:
    """All descendants of pid, from one /proc scan (the stdlib stand-in for psutil)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _alive(pid: int, worker: subprocess.Popen[bytes] | None) -> bool:
    if worker is not None:
        return worker.poll() is None
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def terminate_process_tree(worker: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the worker and its descendants, wait up to `grace`, SIGKILL survivors."""
    targets: list[tuple[int, subprocess.Popen[bytes] | None]] = [
        (pid, None) for pid in descendants(worker.pid)
    ]
    targets.append((worker.pid, worker))
    for pid, _ in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p, w) for p, w in targets):
        time.sleep(0.05)
    for pid, owner in targets:
        if _alive(pid, owner):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Launcher:
    """Process B: owns the workers; kills their trees when it is told to stop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workers: list[subprocess.Popen[bytes]] = []
        self.last_cmd: list[str] = []
        self.last_return_code: int | None = None
        self.grace = float(os.environ.get("DPD_SIM_TERMINATE_SECONDS", "30"))
        self.poll = float(os.environ.get("DPD_SIM_POLL_SECONDS", "1"))

    def worker_env(self, gpus: list[int]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MASTER_ADDR=self.args.master_addr,
            MASTER_PORT=str(self.args.master_port),
            WORLD_SIZE=str(len(gpus)),
            CROSS_RANK="0",
            CROSS_SIZE="1",
            LOCAL_SIZE=str(len(gpus)),
            CUDA_VISIBLE_DEVICES=",".join(str(g) for g in gpus),
        )
        return env

    def spawn(self, gpus: list[int]) -> None:
        base_env = self.worker_env(gpus)
        for local_rank in range(len(gpus)):
            env = dict(base_env, RANK=str(local_rank), LOCAL_RANK=str(local_rank))
            cmd = [sys.executable, "-u", self.args.training_script]
            if not self.args.no_local_rank:
                cmd.append(f"--local_rank={local_rank}")
            cmd += self.args.training_script_args
            output = self._rank_log(local_rank)
            worker = subprocess.Popen(cmd, env=env, stdout=output, stderr=output)
            if output is not None:
                output.close()
            self.workers.append(worker)
            self.last_cmd = cmd
            log("INFO", "launch.py:256:main", f"process {worker.pid} spawned with command: {cmd}")

    def _rank_log(self, rank: int) -> Any:
        directory = self.args.enable_each_rank_log
        if directory == "None":
            return None
        os.makedirs(directory, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        return open(os.path.join(directory, f"{stamp}_rank{rank}.log"), "w")

    def stop(self, signum: int, _frame: object = None) -> NoReturn:
        """The real launcher's sigkill_handler: used for signals and for failed workers."""
        for worker in self.workers:
            log("INFO", "launch.py:319:sigkill_handler", f"Killing subprocess {worker.pid}")
            with contextlib.suppress(OSError):
                terminate_process_tree(worker, self.grace)
        if self.last_return_code is not None:
            log(
                "ERROR",
                "launch.py:325:sigkill_handler",
                f"{self.last_cmd} exits with return code = {self.last_return_code}",
            )
            sys.exit(self.last_return_code)
        if signum in _SIG_NAMES:
            log(
                "INFO",
                "launch.py:330:sigkill_handler",
                f"Main process received {_SIG_NAMES[signal.Signals(signum)]}, exiting",
            )
        self._remove_pid_file()
        sys.exit(1)

    def _remove_pid_file(self) -> None:
        if self.args.save_pid:
            with contextlib.suppress(OSError):
                os.remove(f"/tmp/{self.args.save_pid}.deepspeed")

    def supervise(self) -> int:
        alive = set(self.workers)
        while alive:
            finished = []
            for worker in alive:
                code = worker.poll()
                if code is None:
                    continue
                if code != 0:
                    self.last_return_code = code
                    self.stop(signal.SIGTERM)
                log("INFO", "launch.py:367:main", f"Process {worker.pid} exits successfully.")
                finished.append(worker)
            alive -= set(finished)
            time.sleep(self.poll)
        self._remove_pid_file()
        return 0


def run_launcher(argv: list[str]) -> int:
    """Process B."""
    args = launch_parser().parse_args(argv)
    world = json.loads(base64.urlsafe_b64decode(args.world_info))
    gpus = [int(g) for g in world["localhost"]]
    log("INFO", "launch.py:146:main", f"WORLD INFO DICT: {world}")
    log("INFO", "launch.py:152:main", f"nnodes=1, num_local_procs={len(gpus)}, node_rank=0")
    mapping = {"localhost": list(range(len(gpus)))}
    log(
        "INFO",
        "launch.py:163:main",
        f"global_rank_mapping=defaultdict(<class 'list'>, {mapping})",
    )
    log("INFO", "launch.py:164:main", f"dist_world_size={len(gpus)}")
    log("INFO", "launch.py:168:main", "Setting CUDA_VISIBLE_DEVICES=" + ",".join(map(str, gpus)))
    if args.save_pid:
        with open(f"/tmp/{args.save_pid}.deepspeed", "w") as handle:
            handle.write(str(os.getpid()))
        print(f"launcher pid: {os.getpid()}", flush=True)
    launcher = Launcher(args)
    handler: Callable[[int, Any], None] = launcher.stop
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    launcher.spawn(gpus)
    return launcher.supervise()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [LAUNCH_MODE]:
        return run_launcher(argv[1:])
    return run_runner(argv)


if __name__ == "__main__":
    sys.exit(main())
