"""Fleet mode's acceptance run (issue 17): many jobs through a host kill -9 and a NATS
leader kill, with 0 lost and 0 duplicated.

Three real ``dpd serve`` hosts (a: 2 GPUs, b: 1, c: 4) on a real 3-node NATS cluster
(``sync_interval: always``, R3 buckets) and the stand-in trainer with its run oracle (every
trainer run appends its start and end to one ledger). One client thread per host submits
its share by REST, retrying a 503 or a lost answer with the same task_id as the API asks;
every fourth job is a spool file instead; ``--rate`` submissions a second in all. In the
middle of the stream:

  1. host b's daemon is killed with SIGKILL (its trainings go on without it) and started
     again two seconds later: it re-adopts what it was running and goes on;
  2. the NATS server leading ``KV_dpd_jobs`` is killed with SIGKILL and started again.

Then every job must complete. Printed: acknowledged submissions and spool files, jobs
lost (acknowledged, no record or not completed), jobs duplicated (a task run twice, or a
spool file that became two jobs: the oracle and the records), 503s retried, the longest
time without an acknowledgement around the leader kill, the wall time. The exit status is
1 when anything was lost or duplicated, so CI can run it as a gate.

    python3 bench/bench_fleet_chaos.py [--jobs 200] [--quick]
"""

from __future__ import annotations

import argparse
import io
import itertools
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpd.fleet.records import JobState
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster, why_no_fleet_server
from tests.fleet.test_fleet_hosts import kv_records

HOSTS = ("a", "b", "c")
SIZES = (1, 1, 2, 1, 4)  # mostly single-GPU jobs, as a lab's queue is


@dataclass
class Tally:
    """What the clients saw; one lock guards it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, float] = field(default_factory=dict)  # task_id -> ack time (monotonic)
    dropped: dict[str, str] = field(default_factory=dict)  # description -> host
    retries: int = 0
    refused: list[str] = field(default_factory=list)

    def count(self) -> int:
        with self.lock:
            return len(self.acked) + len(self.dropped)


def job(fleet: Fleet, i: int, tag: str, **extra: Any) -> dict[str, Any]:
    doc = fleet.job(description=f"chaos-{tag}-{i}", priority=i % 3, **extra)
    size = SIZES[i % len(SIZES)]
    if size > 1:
        doc["data_parallel"] = size
    return doc


def client(
    fleet: Fleet, host: str, numbers: list[int], tag: str, tally: Tally, pause: float
) -> None:
    for i in numbers:
        time.sleep(pause)  # a steady stream, so that the kills land in the middle of it
        if i % 4 == 3:
            fleet[host].drop(f"chaos-{tag}-{i}.json", job(fleet, i, tag))
            with tally.lock:
                tally.dropped[f"chaos-{tag}-{i}"] = host
            continue
        task_id = f"chaos-{tag}-{i}"
        doc = job(fleet, i, tag, task_id=task_id)
        deadline = time.monotonic() + 120
        while True:
            try:
                code, body = fleet[host].request("POST", "/api/v1/training/start", doc)
            except OSError:  # the host is down, or the answer was lost: the same id again
                code, body = 0, {}
            if code in (200, 201):
                with tally.lock:
                    tally.acked[task_id] = time.monotonic()
                break
            if code not in (0, 503) or time.monotonic() > deadline:
                with tally.lock:
                    tally.refused.append(f"{task_id}: {code} {body.get('message', '')}")
                break
            with tally.lock:
                tally.retries += 1
            time.sleep(0.3)


def wait_count(tally: Tally, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while tally.count() < n and time.monotonic() < deadline:
        time.sleep(0.1)


def chaos(fleet: Fleet, cluster: NatsCluster, tally: Tally, total: int, log: list[str]) -> None:
    wait_count(tally, total // 4, 300)
    fleet["b"].kill9()
    log.append(f"host b's daemon killed (SIGKILL) after {tally.count()} submissions")
    time.sleep(2)
    fleet["b"].start(wait=False)
    log.append("host b's daemon started again")
    wait_count(tally, total // 2, 300)
    leader = cluster.leader_of("KV_dpd_jobs")
    cluster.kill(leader)
    log.append(f"NATS server {leader} (leader of KV_dpd_jobs) killed after {tally.count()}")
    time.sleep(3)
    cluster.start(leader, wait=False)
    log.append(f"NATS server {leader} started again")


def longest_gap(times: list[float]) -> float:
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=0.0)


def run(jobs: int, root: Path, timeout: float, rate: float) -> int:
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    with NatsCluster(root / "nats", 3) as cluster:
        fleet = Fleet(cluster, root / "hosts", {"a": 2, "b": 1, "c": 4})
        try:
            fleet.up()
            tally = Tally()
            log: list[str] = []
            pause = len(HOSTS) / rate
            threads = [
                threading.Thread(
                    target=client,
                    args=(fleet, h, list(range(k, jobs, len(HOSTS))), tag, tally, pause),
                )
                for k, h in enumerate(HOSTS)
            ]
            troublemaker = threading.Thread(target=chaos, args=(fleet, cluster, tally, jobs, log))
            troublemaker.start()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            troublemaker.join()
            for line in log:
                print(" ", line)
            cluster.wait_healthy()
            records = settle(fleet, cluster, tag, tally, timeout)
            return report(fleet, tally, records, jobs, time.monotonic() - started)
        finally:
            fleet.down()


def exited(fleet: Fleet) -> list[str]:
    """Hosts whose daemon is not running, each with its exit status and last log line."""
    out = []
    for name, host in fleet.hosts.items():
        code = host.process.poll() if host.process is not None else None
        if code is not None:
            last = (host.log().strip().splitlines() or [""])[-1]
            out.append(f"host {name}'s daemon exited with status {code}: {last}")
    return out


def settle(
    fleet: Fleet, cluster: NatsCluster, tag: str, tally: Tally, timeout: float
) -> dict[str, Any]:
    """Our records once every acknowledged job and spool file has one and all are terminal,
    or whatever there is at the timeout, or as soon as a host's daemon has exited (nothing
    would finish its jobs: the run fails at once, saying why)."""
    deadline = time.monotonic() + timeout
    next_word = time.monotonic() + 15
    while True:
        ours = {
            t: r
            for t, r in kv_records(cluster).items()
            if (r.spec or {}).get("description", "").startswith(f"chaos-{tag}-")
        }
        described = {(r.spec or {}).get("description") for r in ours.values()}
        complete = set(tally.acked) <= set(ours) and set(tally.dropped) <= described
        if complete and all(r.terminal for r in ours.values()):
            return ours
        if time.monotonic() > deadline:
            print(f"  not settled after {timeout:.0f} s")
            return ours
        gone = exited(fleet)
        if gone:
            for line in gone:
                print(" ", line)
            return ours
        if time.monotonic() > next_word:
            ended = sum(r.terminal for r in ours.values())
            print(f"  settling: {ended} of {len(ours)} records terminal")
            next_word += 15
        time.sleep(1)


def report(fleet: Fleet, tally: Tally, records: dict[str, Any], jobs: int, wall: float) -> int:
    runs = fleet.runs()
    twice = duplicates([r for r in runs if r.task in records])
    by_description: dict[str, list[str]] = {}
    for task_id, record in records.items():
        by_description.setdefault((record.spec or {}).get("description", ""), []).append(task_id)
    spool_twice = [d for d in tally.dropped if len(by_description.get(d, [])) > 1]
    lost = [t for t in tally.acked if t not in records]
    lost += [d for d in tally.dropped if d not in by_description]
    unfinished = [t for t, r in records.items() if r.state is not JobState.COMPLETED]
    per_host: dict[str, int] = {}
    for r in runs:
        if r.task in records and r.completed:
            per_host[r.host] = per_host.get(r.host, 0) + 1
    print(
        f"  {jobs} jobs: {len(tally.acked)} acknowledged by REST, {len(tally.dropped)} spool "
        f"files; {tally.retries} submissions answered 503 or lost and retried"
    )
    print(f"  completed runs per host: {dict(sorted(per_host.items()))}")
    print(
        "  longest time without an acknowledgement:",
        f"{longest_gap(list(tally.acked.values())):.1f} s",
    )
    print(f"  jobs lost: {len(lost)}; not completed: {len(unfinished)}")
    print(f"  jobs duplicated: {len(twice)} run twice, {len(spool_twice)} spool files as two jobs")
    print(f"  wall time: {wall:.0f} s")
    for line in tally.refused[:10]:
        print("  refused:", line)
    for task_id in (lost + unfinished)[:10]:
        record = records.get(task_id)
        print("  lost or unfinished:", task_id, record.state if record else "no record")
    gone = exited(fleet)
    bad = lost or unfinished or twice or spool_twice or tally.refused or gone
    print("result:", "FAIL" if bad else "ok (0 lost, 0 duplicated)")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="30 jobs (CI's quick pass)")
    parser.add_argument(
        "--timeout", type=float, help="for all jobs to end (600 s; 60 s with --quick)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="submissions per second")
    args = parser.parse_args()
    missing = why_no_fleet_server()
    if missing:
        print(f"skipped: {missing}")
        return 0
    if isinstance(sys.stdout, io.TextIOWrapper):  # a run cut off still shows how far it got
        sys.stdout.reconfigure(line_buffering=True)
    jobs = 30 if args.quick else args.jobs
    timeout = args.timeout if args.timeout is not None else (60.0 if args.quick else 600.0)
    root = Path(tempfile.mkdtemp(prefix="dpd-chaos-"))
    try:
        return run(jobs, root, timeout, args.rate)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
