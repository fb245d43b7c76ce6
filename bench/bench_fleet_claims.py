"""FL7 (FLEET.md §13.3): claim contention. Three real ``dpd serve`` hosts (a: 2 GPUs, b: 1,
c: 4) on a real 3-node NATS cluster race to claim a burst of tiny 1-GPU jobs, first with no
claim stagger (every host's CAS at once), then with the default stagger (a host waits
``rank × claim_stagger`` so the best fit claims first). Printed per round: claims won and
lost, lost CAS per placed job, the time until every job completed, and runs per host; the
run oracle (every trainer run appends its start and end to one ledger) counts tasks run
twice. Exits 1 if any job was run twice or did not complete: the CAS, not the stagger,
is what keeps a job to one run.

    python3 bench/bench_fleet_claims.py [--jobs 500] [--quick]

``--jobs`` per host (FLEET.md's FL7: 500, so 1500 in a round).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_fleet import stats
from tests.fleet.hosts import Fleet, duplicates
from tests.fleet.natscluster import NatsCluster, why_no_fleet_server
from tests.fleet.test_fleet_hosts import all_done

HOSTS = ("a", "b", "c")
STAGGERS = (0.0, 0.05)  # none, then fleet.claim_stagger's default


def submit_all(fleet: Fleet, tag: str, per_host: int) -> list[str]:
    """Every host's share posted at once, one client thread per host; the task ids."""
    ids: list[str] = []
    lock = threading.Lock()
    refused: list[str] = []

    def client(host: str) -> None:
        for i in range(per_host):
            task_id = f"fl7-{tag}-{host}-{i}"
            code, body = fleet[host].request(
                "POST", "/api/v1/training/start", fleet.job(task_id=task_id)
            )
            with lock:
                (ids if code == 201 else refused).append(task_id if code == 201 else str(body))

    threads = [threading.Thread(target=client, args=(h,)) for h in HOSTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if refused:
        raise RuntimeError(f"{len(refused)} submissions refused, first: {refused[0]}")
    return ids


def one_round(root: Path, cluster: NatsCluster, stagger: float, per_host: int) -> bool:
    fleet = Fleet(
        cluster,
        root / f"stagger-{stagger:g}",
        {"a": 2, "b": 1, "c": 4},
        overrides={"fleet": {"claim_stagger": stagger}},
    )
    try:
        fleet.up()
        hosts = [fleet[h] for h in HOSTS]
        before = stats(hosts)
        began = time.monotonic()
        ids = submit_all(fleet, uuid.uuid4().hex[:6], per_host)
        deadline = began + 60 + 3 * len(ids)
        records: dict[str, Any] = {}
        while not records and time.monotonic() < deadline:
            records = all_done(cluster, set(ids))
            time.sleep(1)
        wall = time.monotonic() - began
        after = stats(hosts)
    finally:
        fleet.down()
    won = after["claims_won"] - before["claims_won"]
    lost = after["claims_lost"] - before["claims_lost"]
    runs = [r for r in fleet.runs() if r.task in set(ids)]
    twice = duplicates(runs)
    unfinished = [t for t in ids if t not in records or records[t].state.value != "completed"]
    per_node: dict[str, int] = {}
    for run in runs:
        per_node[run.host] = per_node.get(run.host, 0) + 1
    print(f"claim_stagger {stagger:g} s: {len(ids)} jobs of 1 GPU, {per_host} posted on each host")
    print(f"  claims won {won}, CAS lost {lost}: {lost / max(1, won):.2f} lost per placed job")
    print(f"  all completed in {wall:.1f} s; runs per host {dict(sorted(per_node.items()))}")
    print(f"  tasks run twice: {len(twice)}; not completed: {len(unfinished)}")
    for task_id in unfinished[:5]:
        record = records.get(task_id)
        why = (record.result.error if record and record.result else None) or ""
        print(f"  not completed: {task_id} {record.state.value if record else 'no record'} {why}")
    return not twice and not unfinished


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs posted on each host")
    parser.add_argument("--quick", action="store_true", help="8 jobs per host (CI)")
    args = parser.parse_args()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    reason = why_no_fleet_server()
    if reason:
        print(f"bench_fleet_claims: skipped: {reason}")
        return 0
    per_host = 8 if args.quick else args.jobs
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-claims-"))
    try:
        with NatsCluster(root / "nats", 3) as cluster:
            results = [one_round(root, cluster, s, per_host) for s in STAGGERS]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok = all(results)
    print("result:", "ok (0 run twice, all completed)" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
