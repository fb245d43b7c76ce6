"""Shim cost: its resident memory beside a bare Python process, and a trainer's wall time
alone vs. under the shim (spawn → exit.json recorded). Budget: shim RSS <= 20 MB.

    python3 bench/bench_shim.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpd.supervisor.launcher import LaunchSpec, ShimLauncher, build_trainer_env
from dpd.supervisor.shim import JobMark

RSS_BUDGET_KB = 20 * 1024
# A trainer-like load: CPU work and a stream of log lines into train.log.
TRAINER = (
    "import hashlib, sys\n"
    "h = b'x'\n"
    "for step in range(20000):\n"
    "    h = hashlib.sha256(h * 64).digest()\n"
    "    print(f'steps: {step} loss: 0.1234 iter time (s): 0.001', flush=step % 100 == 0)\n"
)


def vm_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def settled_rss(pid: int) -> int:
    """RSS once it stops changing (start-up imports finished)."""
    last = -1
    for _ in range(50):
        now = vm_kb(pid, "VmRSS")
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def baseline_rss() -> int:
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(9)"])
    try:
        time.sleep(0.3)
        return settled_rss(bare.pid)
    finally:
        bare.kill()
        bare.wait()


def spec_for(work: Path, name: str, command: list[str]) -> LaunchSpec:
    job_dir = work / name
    job_dir.mkdir()
    env = build_trainer_env(os.environ, {}, JobMark.of(f"bench-{name}", job_dir))
    return LaunchSpec(f"bench-{name}", 1, command, job_dir, env, job_dir / "train.log", job_dir)


async def shim_rss(work: Path) -> tuple[int, int]:
    launcher = ShimLauncher()
    info = await launcher.spawn(spec_for(work, "rss", ["sleep", "30"]))
    try:
        return settled_rss(info.shim_pid), vm_kb(info.shim_pid, "VmHWM")
    finally:
        await launcher.stop(info, graceful=False, run_dir=None, training=False, timeout=0)


def trainer_alone(work: Path, run: int) -> float:
    with open(work / f"alone-{run}.log", "wb") as log:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", TRAINER], stdout=log, stderr=log, check=True)
        return time.perf_counter() - started


async def trainer_under_shim(work: Path, run: int) -> float:
    launcher = ShimLauncher(poll_interval=0.01)
    started = time.perf_counter()
    info = await launcher.spawn(spec_for(work, f"shim-{run}", [sys.executable, "-c", TRAINER]))
    status = await launcher.wait_exit(info, timeout=120)
    elapsed = time.perf_counter() - started
    assert status.returncode == 0, status
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, a few seconds: figures, no targets"
    )
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = baseline_rss()
        rss, peak = await shim_rss(work)
        alone = [trainer_alone(work, i) for i in range(runs)]
        shimmed = [await trainer_under_shim(work, i) for i in range(runs)]
    verdict = "OK" if rss <= RSS_BUDGET_KB else "OVER BUDGET"
    print(f"RSS  bare python3 sleep (baseline): {base / 1024:6.1f} MB")
    print(f"RSS  shim while supervising:        {rss / 1024:6.1f} MB  (peak {peak / 1024:.1f} MB)")
    print(f"     budget {RSS_BUDGET_KB / 1024:.0f} MB: {verdict}")
    a, s = statistics.median(alone), statistics.median(shimmed)
    print(f"wall trainer alone (median of {runs}):          {a:.3f} s")
    print(f"wall trainer under shim, spawn -> exit.json: {s:.3f} s  (+{s - a:.3f} s)")


if __name__ == "__main__":
    asyncio.run(main())
