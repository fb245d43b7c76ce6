"""Model download throughput against curl, and the daemon's CPU and memory while it downloads.

Three processes, as in production: a local hub (tests/models/hub_server.py: HEAD metadata,
a CDN redirect, sendfile with Range) serving one big file; `curl` fetching that file's CDN
URL; and a stand-in daemon (a DownloadManager alone in its process) downloading it through
the full path (metadata, Range-capable transfer, SHA-256 while writing, fsync, rename).
The daemon is timed from submit to completed (its start-up is not: imports, manager.start
and a first hub request, which builds the HTTP client a running daemon already has); curl's
time includes its process start. The parent samples the daemon's RSS with psutil. Runs
alternate ROUNDS times; the best of each is compared.

Both land their file on two storages in turn:

- memory (a tmpfs, /dev/shm unless --memory-dir says otherwise): storing costs both the
  same and the fsync nothing, so this compares the download paths themselves. The target
  (dpd >= 0.9x curl) is judged here.
- disk (--dir, the temporary directory by default): curl stops when its bytes are in the
  page cache; dpd's download is done only once the file is hashed and fsynced (a model
  marked installed must survive a power cut). When the disk cannot make data durable as
  fast as the network delivers it, that is what dpd waits for, so two more baselines
  show what durability costs on this disk: curl followed by an fsync of its file, and
  `dd conv=fdatasync` copying the file (already in the page cache) to the disk.

CPU seconds per GiB (curl's from getrusage, the daemon's own process time) show the work,
which a shared machine's load does not distort the way it distorts wall-clock figures.

    python3 bench/bench_download.py [--size-mb 2048] [--rounds 2] [--dir D] [--memory-dir M]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import quick  # noqa: E402  (--quick, a few seconds for CI)
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


def measure_dd(source: Path, target: Path) -> float:
    """Seconds for dd to copy ``source`` (in the page cache) to ``target`` durably."""
    started = time.perf_counter()
    subprocess.run(
        ["dd", f"if={source}", f"of={target}", "bs=4M", "conv=fdatasync", "status=none"],
        check=True,
    )
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


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


@dataclass
class Storage:
    name: str  # memory or disk
    path: Path
    curl: list[tuple[float, float, float]] = field(default_factory=list)
    dd: list[float] = field(default_factory=list)
    dpd: list[tuple[float, float, float]] = field(default_factory=list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--memory-dir", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--role", choices=("main", "hub", "daemon"), default="main")
    parser.add_argument("--hub")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--source", type=Path)
    args = quick.parse_args(parser, {"size_mb": 16, "rounds": 1})
    if args.role == "hub":
        asyncio.run(run_hub(args.source))
    elif args.role == "daemon":
        asyncio.run(run_daemon(args.hub, args.work))
    else:
        orchestrate(args.size_mb, args.rounds, args.dir, args.memory_dir)


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it)."""
    best, kind = "", "?"
    resolved = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fstype
    return kind


def orchestrate(size_mb: int, rounds: int, disk_dir: Path, memory_dir: Path) -> None:
    size = size_mb * 2**20
    with contextlib.ExitStack() as stack:
        disk = Path(
            stack.enter_context(tempfile.TemporaryDirectory(dir=disk_dir, prefix="dpd-bench-dl-"))
        )
        storages = [Storage("disk", disk)]
        if filesystem(memory_dir) != "tmpfs":
            print(f"memory: skipped, {memory_dir} is not a tmpfs")
        elif shutil.disk_usage(memory_dir).free < 2 * size:
            print(f"memory: skipped, {memory_dir} has less than {2 * size_mb} MiB free")
        else:
            memory = stack.enter_context(
                tempfile.TemporaryDirectory(dir=memory_dir, prefix="dpd-bench-dl-")
            )
            storages.insert(0, Storage("memory", Path(memory)))
        source = write_file(disk / "hub" / FILE, size)
        sync_file(source)  # else its write-back lands in the middle of the runs
        hub = subprocess.Popen(
            [sys.executable, __file__, "--role", "hub", "--source", str(source)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            urls = json.loads(hub.stdout.readline() if hub.stdout else "{}")
            for _ in range(rounds):
                for storage in storages:
                    storage.curl.append(measure_curl(urls["cdn"], storage.path / "curl.out"))
                    if storage.name == "disk":
                        storage.dd.append(measure_dd(source, storage.path / "dd.out"))
                    storage.dpd.append(measure_dpd(urls["url"], storage.path / "dpd"))
                    shutil.rmtree(storage.path / "dpd", ignore_errors=True)
        finally:
            hub.terminate()
            hub.wait()
    print(f"file: {size_mb} MiB from a local hub on 127.0.0.1 (rounds: {rounds})")
    for storage in storages:
        report(size, storage)


def report(size: int, storage: Storage) -> None:
    mib = size / 2**20
    gib = size / 2**30

    def line(label: str, seconds: float, detail: str = "") -> None:
        print(f"  {label:18s} {mib / seconds:6.0f} MiB/s  ({seconds:.2f} s{detail})")

    best_curl = min(run[0] for run in storage.curl)
    best_dpd = min(run[0] for run in storage.dpd)
    print(f"{storage.name}: {storage.path.parent} ({filesystem(storage.path)})")
    line("curl:", best_curl, ", page cache" if storage.name == "disk" else "")
    if storage.dd:
        best_durable = min(run[1] for run in storage.curl)
        best_dd = min(storage.dd)
        line("curl + fsync:", best_durable)
        line("dd conv=fdatasync:", best_dd, ", a copy of the cached file")
    line("dpd download:", best_dpd, ", metadata, SHA-256, fsync, rename")
    ratio = best_curl / best_dpd
    if storage.name == "memory":
        verdict = "met" if ratio >= 0.9 else "MISSED"
        print(f"  dpd / curl:         {ratio:6.2f}x  (target >= 0.9x: {verdict})")
    else:
        print(f"  dpd / curl:         {ratio:6.2f}x  (curl's file is not yet durable)")
        print(f"  dpd / curl + fsync: {best_durable / best_dpd:6.2f}x")
        print(
            f"  dpd / dd:           {best_dd / best_dpd:6.2f}x  (dd only copies, then syncs once)"
        )
    for seconds, durable, cpu in storage.curl:
        extra = f" ({durable:.2f} s with fsync)" if storage.name == "disk" else ""
        print(f"  curl run:   {seconds:6.2f} s{extra}, CPU {cpu / gib:.2f} s/GiB")
    for seconds, cpu, rss in storage.dpd:
        print(
            f"  daemon run: {seconds:6.2f} s, CPU {100 * cpu / seconds:5.0f}% of one core "
            f"({cpu / gib:.2f} s/GiB), peak RSS {rss:6.0f} MiB"
        )


if __name__ == "__main__":
    main()
