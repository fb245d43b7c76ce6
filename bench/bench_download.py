"""Model download throughput against curl, and the daemon's CPU and memory while it downloads.

Three processes, as in production: a local hub (tests/models/hub_server.py: HEAD metadata,
a CDN redirect, sendfile with Range) serving one big file; `curl` fetching that file's CDN
URL; and a stand-in daemon (a DownloadManager alone in its process) downloading it through
the full path (metadata, Range-capable transfer, SHA-256 while writing, fsync, rename).
The daemon is timed from submit to completed (its start-up is not: imports, manager.start
and a first hub request, which builds the HTTP client a running daemon already has); curl's
time includes its process start. The parent samples the daemon's RSS with psutil. Runs
alternate curl / dpd ROUNDS times; the best of each is compared (target: dpd >= 0.9x curl).

curl stops when its bytes are in the page cache; dpd's download is done only once the file
is hashed and fsynced (a model marked installed must survive a power cut). So a second
baseline, curl followed by fsync of its file, shows what a durable copy costs on this disk,
and CPU seconds per GiB (curl's from getrusage, the daemon's own process time) show the work,
which a shared machine's load does not distort the way it distorts wall-clock figures.

    python3 bench/bench_download.py [--size-mb 2048] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dpd.models.catalog import parse_catalog  # noqa: E402
from dpd.models.downloads import DownloadManager  # noqa: E402
from dpd.models.hub import HubClient  # noqa: E402
from tests.models.hub_server import FakeHub, serve_hub, write_file  # noqa: E402

REPO = "bench/big"
FILE = "model.safetensors"
CATALOG = {
    "models": [
        {
            "id": "big",
            "name": "Big",
            "type": "image",
            "version": "1",
            "supports_lora": True,
            "supports_full_finetune": True,
            "supports_fp8": True,
            "min_vram_gb": 1,
            "recommended_vram_gb": 1,
            "components": [
                {
                    "name": "weights",
                    "repo": REPO,
                    "files": [FILE],
                    "dir": "big",
                    "config_key": "transformer_path",
                }
            ],
        }
    ]
}


# ----------------------------------------------------------------- child roles


async def run_hub(source: Path) -> None:
    hub = FakeHub()
    hub.add_repo(REPO, {FILE: source})
    hub.sha256(REPO, FILE)  # hash once before serving
    async with serve_hub(hub):
        sha = hub.sha256(REPO, FILE)
        print(
            json.dumps({"url": hub.url, "cdn": f"{hub.cdn_url}/cdn/{sha}?repo={REPO}&path={FILE}"}),
            flush=True,
        )
        await asyncio.Event().wait()


async def run_daemon(hub_url: str, work: Path) -> None:
    manager = DownloadManager(
        parse_catalog(CATALOG), HubClient(hub_url, None), work / "models", work / "state"
    )
    await manager.start()
    # A running daemon has made a hub request before: the first one builds the library's
    # HTTP client (its TLS context alone takes ~35 ms). Start-up, not download, like the
    # imports and manager.start above.
    await asyncio.to_thread(manager.hub.metadata, REPO, FILE, "main")
    started, cpu_started = time.perf_counter(), time.process_time()
    view = await manager.wait((await manager.submit({"model_id": "big"}))["download_id"])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await manager.close()
    result = {"status": view["status"], "error": view["error"], "seconds": elapsed, "cpu": cpu}
    print(json.dumps(result), flush=True)


# ----------------------------------------------------------------- measurements


def measure_curl(url: str, target: Path) -> tuple[float, float, float]:
    """(seconds, seconds including an fsync of the file, CPU seconds of curl)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(target), url], check=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sync_file(target)
    durable = time.perf_counter() - started
    target.unlink()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, durable, cpu


def sync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure_dpd(hub_url: str, work: Path) -> tuple[float, float, float]:
    """(seconds, CPU seconds of the download (every thread, start-up not counted), peak RSS
    MiB) of the stand-in daemon."""
    shutil.rmtree(work, ignore_errors=True)
    child = subprocess.Popen(
        [sys.executable, __file__, "--role", "daemon", "--hub", hub_url, "--work", str(work)],
        stdout=subprocess.PIPE,
        text=True,
    )
    process = psutil.Process(child.pid)
    peak_rss = 0
    while child.poll() is None:
        try:
            peak_rss = max(peak_rss, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    result = json.loads(child.stdout.read() if child.stdout else "{}")
    if result.get("status") != "completed":
        raise SystemExit(f"download failed: {result}")
    return result["seconds"], result["cpu"], peak_rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--role", choices=("main", "hub", "daemon"), default="main")
    parser.add_argument("--hub")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--source", type=Path)
    args = parser.parse_args()
    if args.role == "hub":
        asyncio.run(run_hub(args.source))
    elif args.role == "daemon":
        asyncio.run(run_daemon(args.hub, args.work))
    else:
        orchestrate(args.size_mb, args.rounds)


def orchestrate(size_mb: int, rounds: int) -> None:
    size = size_mb * 2**20
    with tempfile.TemporaryDirectory(prefix="dpd-bench-dl-") as tmp:
        source = write_file(Path(tmp) / "hub" / FILE, size)
        sync_file(source)  # else its write-back lands in the middle of the runs
        hub = subprocess.Popen(
            [sys.executable, __file__, "--role", "hub", "--source", str(source)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            urls = json.loads(hub.stdout.readline() if hub.stdout else "{}")
            curl_runs, dpd_runs = [], []
            for _ in range(rounds):
                curl_runs.append(measure_curl(urls["cdn"], Path(tmp) / "curl.out"))
                dpd_runs.append(measure_dpd(urls["url"], Path(tmp) / "dpd"))
                shutil.rmtree(Path(tmp) / "dpd", ignore_errors=True)
        finally:
            hub.terminate()
            hub.wait()
    report(size, curl_runs, dpd_runs)


def report(
    size: int,
    curl_runs: list[tuple[float, float, float]],
    dpd_runs: list[tuple[float, float, float]],
) -> None:
    mib = size / 2**20
    gib = size / 2**30
    best_curl = min(run[0] for run in curl_runs)
    best_durable = min(run[1] for run in curl_runs)
    best_dpd = min(dpd_runs)
    print(f"file: {mib:.0f} MiB from a local hub on 127.0.0.1 (rounds: {len(curl_runs)})")
    print(f"curl (baseline):  {mib / best_curl:8.0f} MiB/s  ({best_curl:.2f} s)")
    print(f"curl + fsync:     {mib / best_durable:8.0f} MiB/s  ({best_durable:.2f} s)")
    print(
        f"dpd download:     {mib / best_dpd[0]:8.0f} MiB/s  ({best_dpd[0]:.2f} s, incl. metadata, "
        "SHA-256, fsync, rename)"
    )
    print(f"ratio dpd/curl:   {best_curl / best_dpd[0]:8.2f}x  (target >= 0.9x)")
    print(f"ratio dpd/(curl + fsync): {best_durable / best_dpd[0]:.2f}x")
    for seconds, durable, cpu in curl_runs:
        print(
            f"curl run:   {seconds:6.2f} s ({durable:.2f} s with fsync), CPU {cpu / gib:.2f} s/GiB"
        )
    for seconds, cpu, rss in dpd_runs:
        print(
            f"daemon run: {seconds:6.2f} s, CPU {100 * cpu / seconds:5.0f}% of one core "
            f"({cpu / gib:.2f} s/GiB), peak RSS {rss:6.0f} MiB"
        )


if __name__ == "__main__":
    main()
