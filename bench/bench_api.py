"""REST read paths under load: ``GET /training/{id}/progress`` and ``GET /training/list`` on a
real ``dpd serve`` holding 10,000 tasks, beside a trivial aiohttp handler (the ceiling: same
aiohttp, same Python, one process, an envelope-sized JSON answer) measured in the same run.

Load comes from separate client processes (aiohttp, keep-alive connections spread over
them), so the server's loop competes with no client code. Every request carries a real API
key, so auth is part of the cost. Figures: requests/s, p50 and p99 latency, per connection
count, and the server's CPU time per request (from /proc/<pid>/stat, so it holds on a
loaded machine where requests/s mostly measure the neighbours; "cpu share" is the ceiling's
CPU per request over the route's: the share of the ceiling's requests/s the route would reach
with the server's core to itself). Targets (issue 4): >= 50 % of the ceiling's requests/s;
p99 <= 10 ms at 16 connections.

    python3 bench/bench_api.py [--tasks 10000] [--seconds 3] [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import tomlkit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import quick  # --quick, a few seconds for CI
from dpd.jobs.spec import parse_job_document, validate_job
from dpd.jobs.states import Status
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission
from tests.jobfiles import job_document, make_data_root

KEY = "bench-bootstrap-key"
CEILING_APP = textwrap.dedent(
    """
    import sys, time
    from aiohttp import web
    async def handler(request):
        return web.json_response(
            {"code": 200, "message": "success", "data": {"task_id": request.match_info["id"]},
             "timestamp": int(time.time())})
    app = web.Application()
    app.router.add_get("/api/v1/trivial/{id}", handler)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def populate(root: Path, tasks: int) -> None:
    """``tasks`` finished jobs (finished, so the scheduler has nothing to do meanwhile)."""
    data = make_data_root(root / "data")
    layout = SpoolLayout(root / "spool")
    layout.ensure()
    store = JobStore(layout, data / "training_runs", "bench")
    store.load()
    for index in range(tasks):
        document = job_document(data, task_id=f"bench{index:06d}")
        body = json.dumps(document).encode()
        spec = validate_job(parse_job_document(body, "json"), data_roots=[data])
        task_id = store.create_job(spec, Submission("cli", "bench"))["task_id"]
        store.transition(task_id, Status.QUEUED, Status.RUNNING, gpu_id=0, gpu_ids=[0])
        progress = {"current_step": 16, "total_steps": 16, "current_epoch": 2, "total_epochs": 2}
        store.transition(task_id, Status.RUNNING, Status.COMPLETED, progress=progress)


def write_config(root: Path, port: int) -> Path:
    data = root / "data"
    config = {
        "daemon": {
            "node": "bench",
            "spool_dir": str(root / "spool"),
            "state_dir": str(root / "state"),
            "storage_root": str(data),
            "output_root": str(data / "training_runs"),
            "data_roots": [str(data)],
            "log_level": "WARNING",
        },
        "http": {"host": "127.0.0.1", "port": port},
        "auth": {"enabled": True, "bootstrap_key": KEY},
        "gpus": {"backend": "static", "static": [{"name": "Bench GPU", "memory_mb": 24576}]},
    }
    path = root / "dpd.toml"
    path.write_text(tomlkit.dumps(config))
    return path


def wait_up(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


# ------------------------------------------------------------------ load generation


async def _drive(
    urls: list[str], connections: int, seconds: float, warmup: float
) -> tuple[list[float], int]:
    """Latencies after the warm-up, and how many requests were answered in all."""
    import aiohttp

    latencies: list[float] = []
    answered = 0
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + seconds

        async def worker(offset: int) -> None:
            nonlocal answered
            index = offset
            while (now := time.perf_counter()) < end:
                async with session.get(urls[index % len(urls)]) as response:
                    await response.read()
                    if response.status != 200:
                        raise SystemExit(f"{response.status} from {response.url}")
                done = time.perf_counter()
                answered += 1
                if now >= measure_from:
                    latencies.append(done - now)
                index += connections

        await asyncio.gather(*(worker(i) for i in range(connections)))
    return latencies, answered


def _client(args: tuple[list[str], int, float, float]) -> tuple[list[float], int]:
    return asyncio.run(_drive(*args))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    urls: list[str],
    connections: int,
    clients: int,
    seconds: float,
    server_pid: int,
    warmup: float = 0.5,
) -> dict[str, float]:
    """Load figures; ``cpu_us`` is the server's CPU per request over the whole run (warm-up
    included, so over every request it answered, counted by the clients)."""
    per_client = [connections // clients + (i < connections % clients) for i in range(clients)]
    cpu_before = cpu_seconds(server_pid)
    with multiprocessing.Pool(clients) as pool:
        results = pool.map(_client, [(urls, n, seconds, warmup) for n in per_client])
    cpu = cpu_seconds(server_pid) - cpu_before
    latencies = sorted(x for result, _ in results for x in result)
    answered = sum(count for _, count in results)
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "cpu_us": 1e6 * cpu / max(1, answered),
    }


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)))
    args = quick.parse_args(parser, {"tasks": 300, "seconds": 0.3, "clients": 1})
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="dpd-bench-api-", dir=base) as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        populate(root, args.tasks)
        print(f"store: {args.tasks} tasks written in {time.perf_counter() - began:.1f} s")
        dpd_port, ceiling_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DPD_", "API_"))}
        config = write_config(root, dpd_port)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "dpd", "serve", "--config", str(config)],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        ceiling = subprocess.Popen([sys.executable, "-c", CEILING_APP, str(ceiling_port)])
        try:
            wait_up(f"http://127.0.0.1:{dpd_port}/healthz")
            wait_up(f"http://127.0.0.1:{ceiling_port}/api/v1/trivial/x")
            run_all(args, (dpd_port, daemon.pid), (ceiling_port, ceiling.pid))
        finally:
            for process in (daemon, ceiling):
                process.send_signal(signal.SIGTERM)
                process.wait(30)


def run_all(
    args: argparse.Namespace, dpd_server: tuple[int, int], ceiling_server: tuple[int, int]
) -> None:
    """Every figure; each server is (port, pid)."""
    (dpd_port, dpd_pid), (ceiling_port, ceiling_pid) = dpd_server, ceiling_server
    dpd = f"http://127.0.0.1:{dpd_port}/api/v1/training"
    ids = [f"bench{i:06d}" for i in range(0, args.tasks, max(1, args.tasks // 500))]
    targets = {
        "ceiling": [f"http://127.0.0.1:{ceiling_port}/api/v1/trivial/{i}" for i in ids],
        "GET /training/{id}/progress": [f"{dpd}/{i}/progress" for i in ids],
        "GET /training/list": [f"{dpd}/list", f"{dpd}/list?offset=5000&limit=50"],
    }
    pids = {"ceiling": ceiling_pid}
    print(f"load: {args.clients} client process(es), {args.seconds:g} s per figure")
    print(
        f"{'route':32} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs ceiling':>10}"
        f" {'srv us/req':>10} {'cpu share':>9}"
    )
    verdicts = []
    for connections in (16, 64):

        def run(name: str, conns: int = connections) -> dict[str, float]:
            pid = pids.get(name, dpd_pid)
            return measure(targets[name], conns, args.clients, args.seconds, pid)

        # the ceiling is measured before and after the routes; the better figure counts
        ceiling = [run("ceiling")]
        figures_by_route = {name: run(name) for name in targets if name != "ceiling"}
        ceiling.append(run("ceiling"))
        best = max(ceiling, key=lambda f: f["rps"])
        ceiling_rps = best["rps"]
        ceiling_cpu = min(f["cpu_us"] for f in ceiling)
        rows = {"ceiling (trivial handler)": {**best, "cpu_us": ceiling_cpu}, **figures_by_route}
        for name, figures in rows.items():
            share = figures["rps"] / ceiling_rps
            cpu_share = ceiling_cpu / figures["cpu_us"]
            print(
                f"{name:32} {connections:5d} {figures['rps']:9.0f} {figures['p50_ms']:8.2f} "
                f"{figures['p99_ms']:8.2f} {share:9.0%} {figures['cpu_us']:10.0f} {cpu_share:9.0%}"
            )
            if not name.startswith("ceiling"):
                verdicts.append(
                    f"{name} @{connections}: {share:.0%} of ceiling (target >= 50%); "
                    f"server CPU per request {cpu_share:.0%} of the ceiling's efficiency"
                )
                if connections == 16:
                    verdicts.append(f"{name} @16: p99 {figures['p99_ms']:.2f} ms (target <= 10 ms)")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
