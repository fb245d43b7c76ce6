"""Spool pickup latency and ingestion throughput, beside a naive 1-second poller.

Latency: a job file renamed into incoming/ -> its state.json says "queued" on disk,
measured one drop at a time (p50/p99 over DROPS drops). Throughput: BURST files renamed in
at once -> all of them durable jobs (their files gone from incoming/). Both for dpd's
inotify watcher, which ingests what is waiting in batches (with durable writes, fsync
everywhere), and for a poller that lists incoming/ once a second and ingests file by file,
run in this process. The CPU the whole process used per job in the burst is printed too:
on a shared machine it says more than the wall clock.

    python3 bench/bench_spool.py [--drops 500] [--burst 1000] [--dir DIR]

The spool is made in a temporary directory under DIR (default: the system's, $TMPDIR or
/tmp). Where it lives matters on ext4: without a journal (``ext4 -O ^has_journal``), the
inode allocator skips every inode deleted in the last 5 to 35 seconds, reading its inode
table entry each time, so a file system that has just deleted thousands of files (a test
run, the last bench) makes every file creation cost up to a millisecond of kernel CPU.
Both phases' spools are therefore removed only when the run ends, and figures from a
journal-less file system are only comparable between runs started after half a minute of
quiet. ``--dir`` on a journaled ext4 (or xfs) gives what a production spool would see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import quick  # --quick, a few seconds for CI
from dpd.daemon import INGEST_WORKERS
from dpd.spool.ingest import ingest_file, ingest_files
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore
from dpd.spool.watcher import SpoolWatcher
from tests.jobfiles import job_document, make_data_root

WORKERS = INGEST_WORKERS  # as dpd serve runs it
_spools: list[tempfile.TemporaryDirectory[str]] = []  # removed when the run ends


class Setup:
    def __init__(self, root: Path) -> None:
        self.data = make_data_root(root / "data")
        self.layout = SpoolLayout(root / "spool")
        self.layout.ensure()
        self.store = JobStore(self.layout, root / "out", "bench")
        self.store.load()
        self.counter = 0

    def prepare(self) -> tuple[str, Path]:
        """A finished job file under a dot-name, ready to be renamed in."""
        self.counter += 1
        task_id = f"bench{self.counter:06d}"
        text = json.dumps(job_document(self.data, task_id=task_id))
        temporary = self.layout.incoming / f".{task_id}.tmp"
        temporary.write_text(text)
        old = time.time() - 10
        os.utime(temporary, (old, old))
        return task_id, temporary

    def rename_in(self, task_id: str, temporary: Path) -> str:
        os.rename(temporary, self.layout.incoming / f"{task_id}.json")
        return task_id

    def queued(self, task_id: str) -> bool:
        try:
            state = (self.layout.job_dir(task_id) / "state.json").read_bytes()
        except FileNotFoundError:
            return False
        return b'"queued"' in state


def wait_until(condition: Callable[[], bool], timeout: float = 180.0, poll: float = 0.0002) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("ingestion did not finish")
        time.sleep(poll)  # let the watcher's threads have the GIL (a spin would starve them)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(setup: Setup, drops: int, burst: int) -> tuple[list[float], float, float]:
    """Latencies (ms), burst throughput (jobs/s) and CPU per job in the burst (ms)."""
    latencies = []
    for _ in range(drops):
        prepared = setup.prepare()
        start = time.perf_counter()
        task_id = setup.rename_in(*prepared)
        wait_until(lambda t=task_id: setup.queued(t))  # type: ignore[misc]
        latencies.append((time.perf_counter() - start) * 1000)
    prepared = [setup.prepare() for _ in range(burst)]
    start, cpu = time.perf_counter(), cpu_seconds()
    ids = [setup.rename_in(*p) for p in prepared]
    # A file leaves incoming/ only once its job is durable; then check every state.json once.
    # Listing 1000 names costs the watcher CPU, so look once a millisecond (error < 0.1%).
    wait_until(
        lambda: not [n for n in os.listdir(setup.layout.incoming) if n[0] != "."], poll=0.005
    )
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert all(setup.queued(t) for t in ids)
    return latencies, burst / elapsed, cpu / burst * 1000


def run_watcher(setup: Setup, stop: threading.Event) -> None:
    async def main() -> None:
        async def ingest(names):  # type: ignore[no-untyped-def]
            return await asyncio.to_thread(
                ingest_files, setup.layout, setup.store, names, [setup.data]
            )

        watcher = SpoolWatcher(setup.layout, ingest, workers=WORKERS)
        task = asyncio.create_task(watcher.run())
        while not stop.is_set():
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(main())


def run_poller(setup: Setup, stop: threading.Event) -> None:
    while not stop.is_set():
        for name in sorted(os.listdir(setup.layout.incoming)):
            if not name.startswith("."):
                ingest_file(setup.layout, setup.store, name, [setup.data])
        stop.wait(1.0)


def bench(
    kind: str,
    target: Callable[[Setup, threading.Event], None],
    drops: int,
    burst: int,
    directory: str | None,
) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="dpd-bench-", dir=directory)
    _spools.append(tmp)
    setup = Setup(Path(tmp.name))
    stop = threading.Event()
    thread = threading.Thread(target=target, args=(setup, stop), daemon=True)
    thread.start()
    time.sleep(0.3)
    latencies, throughput, cpu = measure(setup, drops, burst)
    stop.set()
    thread.join(5)
    quantiles = statistics.quantiles(latencies, n=100)
    print(
        f"{kind:<22} drops={drops:<5} p50={quantiles[49]:8.2f} ms  p99={quantiles[98]:8.2f} ms  "
        f"burst={burst:<5} throughput={throughput:8.1f} jobs/s  cpu={cpu:5.2f} ms/job"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drops", type=int, default=500)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--baseline-drops", type=int, default=20)
    parser.add_argument("--dir", default=None, help="where to make the spool (default: $TMPDIR)")
    args = quick.parse_args(parser, {"drops": 40, "burst": 100, "baseline_drops": 3})
    where = args.dir or tempfile.gettempdir()
    print(f"spool pickup: rename into incoming/ -> state.json queued (durable writes), in {where}")
    bench("dpd inotify watcher", run_watcher, args.drops, args.burst, args.dir)
    bench("baseline 1 s poller", run_poller, args.baseline_drops, args.burst, args.dir)
    print("targets: p50 <= 10 ms, p99 <= 50 ms, >= 500 jobs/s")
    for spool in _spools:
        spool.cleanup()


if __name__ == "__main__":
    main()
