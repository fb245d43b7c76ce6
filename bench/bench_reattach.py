"""How long a restarted daemon takes to load its job store and re-attach to one running job,
by the size of the job's log.

A first follower reads a generated train.log (bench_parser's realistic diffusion-pipe output)
to its end, writing metrics.jsonl, events.jsonl (through the job store, as the daemon's bus
does) and state.json. Then, in the same run:

- the job store is loaded, and ``JobFollower.restore`` runs on that state.json, as dpd does:
  it takes back the saved parser state (``output_state``) and reads only the ends of
  events.jsonl and metrics.jsonl;
- the baselines: what a start did before, for each such job: restore replaying the run's
  output through the parser (a state.json without ``output_state``), and reading
  events.jsonl and metrics.jsonl whole.

Jobs are re-attached one after another before the daemon reports ready, and systemd gives
it TimeoutStartSec=120 to do so.

    python3 bench/bench_reattach.py [--mb 64 256]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_parser import block

from bench import quick  # --quick, a few seconds for CI
from dpd.jobs.states import Status
from dpd.spool.store import JobStore
from dpd.supervisor.follower import JobFollower, PendingEvents
from tests.jobfiles import add_job, new_store

TASK = "big"


def write_log(path: Path, size: int) -> int:
    """Realistic output of at least ``size`` bytes; returns the number of steps written."""
    step = 0
    with path.open("w") as handle:
        while handle.tell() < size:
            chunk = []
            for _ in range(1000):
                step += 1
                chunk.extend(text + end for text, end in block(step))
            handle.write("".join(chunk))
    return step


def read_whole(path: Path) -> list[Any]:
    """What start-up and re-attach did before, for each running job."""
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1] if line.strip()]


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(root: Path, mib: int) -> None:
    store, data = new_store(root)
    add_job(store, data, TASK)
    store.transition(TASK, Status.QUEUED, Status.RUNNING)
    job_dir = store.layout.job_dir(TASK)
    steps = write_log(job_dir / "train.log", mib * 2**20)
    pending = PendingEvents()
    first = JobFollower(store, pending, TASK, epochs=None, max_steps=None)

    def read_all() -> None:  # events go to events.jsonl a read at a time, as the bus does
        recorded: list[tuple[str, dict[str, Any]]] = []

        def keep(scope: str, task_id: str, kind: str, data: dict[str, Any]) -> None:
            recorded.append((kind, data))

        while first.poll():
            pending.flush(keep)
            store.append_events(TASK, recorded)
            recorded.clear()

    read = seconds(read_all)
    first.write_state()
    state = store.get(TASK)

    def follower() -> JobFollower:
        return JobFollower(store, PendingEvents(), TASK, epochs=None, max_steps=None)

    load = seconds(lambda: JobStore(store.layout, data / "training_runs", "test").load())
    saved = seconds(lambda: follower().restore(state))
    replay = follower()
    replayed = seconds(lambda: replay.restore({**state, "output_state": None}))
    assert replay.tracker.current_step == first.tracker.current_step == steps
    whole = seconds(
        lambda: (
            read_whole(job_dir / "events.jsonl"),
            read_whole(job_dir / "metrics.jsonl"),
        )
    )
    sizes = sum((job_dir / name).stat().st_size for name in ("events.jsonl", "metrics.jsonl"))
    print(
        f"{mib:5d} MiB log ({steps:,} steps, {sizes / 2**20:,.0f} MiB of events and metrics), "
        f"first read {read:.1f} s"
    )
    print(f"  now:      store load {load * 1000:7.1f} ms, restore {saved * 1000:7.1f} ms")
    print(
        f"  baseline: replay {replayed:6.2f} s + events and metrics read whole {whole:5.2f} s "
        f"({(replayed + whole) / saved:,.0f}x the restore)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, nargs="+", default=[64, 256])
    args = quick.parse_args(parser, {"mb": [4]})
    for mib in args.mb:
        with tempfile.TemporaryDirectory(prefix="dpd-bench-reattach-") as tmp:
            measure(Path(tmp), mib)


if __name__ == "__main__":
    main()
