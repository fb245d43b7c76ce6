"""Preprocessing figures, each beside a baseline measured in the same run.

1. A 10 s 1080p clip through dpd (validation by ffprobe, plan, state writes, ffmpeg, caption,
   publish, the completed state on disk) vs. the identical ffmpeg command run alone, writing
   to a new file on the same file system, its filter chain read from stdin as in dpd (here
   from a regular file); runs interleaved.                             target: <= 1.1x
   dpd starts ffmpeg while it probes, so submit's time is validation and ffmpeg's start.
   Wall time on a shared machine is noisy: the CPU seconds of both are printed too.
2. Upload of a 2 GiB multipart body over loopback into a daemon process (the upload route and
   the manager, served by aiohttp in a child process): its RSS growth while receiving
   (target: <= 50 MB) and the throughput (target: >= 200 MB/s), beside a plain socket copy
   of the same bytes to /dev/null on the same machine.

Run: python3 bench/bench_preprocess.py [--upload-mib 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quick  # --quick, a few seconds for CI
from dpd.cli.preprocess import multipart_parts
from dpd.config import Config, DaemonConfig, HttpConfig
from dpd.preprocess.plan import ffmpeg_command, filter_chain, plan_clip
from dpd.preprocess.probe import probe_media
from dpd.preprocess.tasks import PreprocessManager, UploadRequest

CHUNK = 1 << 20


def config_for(root: Path) -> Config:
    daemon = DaemonConfig(
        node="bench",
        state_dir=root / "state",
        preprocessed_root=root / "pre",
        data_roots=[root],
    )
    return Config(daemon=daemon, http=HttpConfig(max_upload_mb=8192))


def make_clip(path: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=1920x1080:rate=30:duration=10",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip


def cpu_seconds() -> tuple[float, float]:
    """(this process, its reaped children): CPU time is what machine load does not inflate."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def ffmpeg_alone(command: list[str], chain: Path) -> tuple[float, float]:
    """(seconds, CPU seconds) of the command run by itself, the filter chain on stdin."""
    with chain.open("rb") as stdin:
        _, kids = cpu_seconds()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdin=stdin, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
    return elapsed, cpu_seconds()[1] - kids


async def through_dpd(root: Path, source: Path, run: int) -> tuple[float, float, float]:
    """(seconds from submit to the completed event, seconds of them in submit (validation,
    and ffmpeg's start alongside it), CPU seconds of dpd and its children). The completed
    event is emitted once the final state is on disk, after the clip and its caption were
    published (fsynced, renamed)."""
    done = asyncio.Event()
    outcome: dict[str, object] = {}

    def emit(scope: str, task_id: str, kind: str, data: dict[str, object]) -> None:
        if kind == "status" and data.get("status") in ("completed", "failed"):
            outcome.update(data)
            done.set()

    manager = PreprocessManager(config_for(root / f"dpd{run}"), emit)
    await manager.start()
    staged = manager.staging_path()
    staged.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, staged)  # the upload, received: the route's fsync is part of the upload
    own, kids = cpu_seconds()
    start = time.perf_counter()
    request = UploadRequest(staged, "clip.mp4", "bench", "wan", resolution=(832, 480))
    await manager.submit(request)
    validated = time.perf_counter() - start
    await done.wait()
    total = time.perf_counter() - start
    own_end, kids_end = cpu_seconds()
    await manager.close()
    assert outcome["status"] == "completed", outcome.get("error")
    return total, validated, own_end - own + kids_end - kids


async def transcode_figures(root: Path, runs: int) -> None:
    source = root / "clip1080.mp4"
    make_clip(source)
    media = await probe_media("ffprobe", source)
    plan = plan_clip(media, "wan", resolution=(832, 480))
    chain = root / "chain.txt"
    chain.write_text(filter_chain(plan))

    def command(run: int) -> list[str]:
        """dpd's command line, its output a new file in a new directory of the same file
        system, as dpd's work directory is."""
        out = root / f"alone{run}"
        out.mkdir()
        return ffmpeg_command("ffmpeg", str(source), str(out / "clip.mp4"), plan.kind)

    ffmpeg_alone(command(-1), chain)  # warm-up: libraries and the clip in the page cache
    alone, alone_cpu, dpd, dpd_cpu, checks, ratios, unvalidated = [], [], [], [], [], [], []
    for run in range(runs):  # interleaved, alternating who goes first: load hits both alike
        first_alone = run % 2 == 0
        if first_alone:
            a, a_cpu = ffmpeg_alone(command(run), chain)
        total, validated, cpu = await through_dpd(root, source, run)
        if not first_alone:
            a, a_cpu = ffmpeg_alone(command(run), chain)
        alone.append(a)
        alone_cpu.append(a_cpu)
        dpd.append(total)
        dpd_cpu.append(cpu)
        checks.append(validated)
        ratios.append(total / a)
        unvalidated.append((total - validated) / a)
    a, d, v = statistics.median(alone), statistics.median(dpd), statistics.median(checks)
    ac, dc = statistics.median(alone_cpu), statistics.median(dpd_cpu)
    print(f"10 s 1080p clip -> wan 832x480, {plan.frames} frames (median of {runs}):")
    print(f"  ffmpeg alone        {a:6.2f} s   cpu {ac:5.2f} s")
    print(f"  through dpd         {d:6.2f} s   cpu {dc:5.2f} s")
    print(
        f"  ratio               {statistics.median(ratios):6.2f}x (median of per-run ratios;"
        f" runs {min(ratios):.2f}-{max(ratios):.2f}) (target <= 1.1x); cpu ratio {dc / ac:.2f}x"
    )
    print(
        f"    of which submit (ffprobe validation, ffmpeg's start) {v:.2f} s;"
        f" without it {statistics.median(unvalidated):.2f}x"
    )
    print(f"    fastest runs: {min(alone):.2f} s alone, {min(dpd):.2f} s through dpd"
          f" ({min(dpd) / min(alone):.2f}x), submit {min(checks):.2f} s")  # fmt: skip


SERVER = """
import asyncio, sys
from pathlib import Path
from aiohttp import web
sys.path.insert(0, {repo!r})
from bench.bench_preprocess import config_for
from dpd.events import discard_event
from dpd.http.common import PRINCIPAL, Principal
from dpd.http.middlewares import error_middleware
from dpd.http.routes import preprocess
from dpd.preprocess.tasks import PreprocessManager

@web.middleware
async def everyone(request, handler):
    request[PRINCIPAL] = Principal("bench", "bench", frozenset({{"admin"}}))
    return await handler(request)

async def main():
    config = config_for(Path({root!r}))
    manager = PreprocessManager(config, discard_event)
    await manager.start()
    app = web.Application(middlewares=[error_middleware, everyone])
    preprocess.setup(app, manager, config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", {port})
    await site.start()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_upload(port: int, total: int) -> tuple[int, float]:
    head, tail = multipart_parts({"prompt": "p", "model_type": "wan"}, "big.mp4", "benchXYZ")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.putrequest("POST", "/api/v1/preprocess/upload")
    conn.putheader("Content-Type", "multipart/form-data; boundary=benchXYZ")
    conn.putheader("Content-Length", str(len(head) + total + len(tail)))
    conn.endheaders()
    block = b"\x00" * CHUNK
    start = time.perf_counter()
    conn.send(head)
    for _ in range(total // CHUNK):
        conn.send(block)
    conn.send(tail)
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    conn.close()
    return response.status, elapsed


def socket_baseline(total: int) -> float:
    """The same bytes through a loopback socket into a reader that discards them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def drain() -> None:
        conn, _ = server.accept()
        while conn.recv(CHUNK):
            pass
        conn.close()

    thread = threading.Thread(target=drain)
    thread.start()
    client = socket.create_connection(server.getsockname())
    block = b"\x00" * CHUNK
    start = time.perf_counter()
    for _ in range(total // CHUNK):
        client.sendall(block)
    client.close()
    thread.join()
    server.close()
    return time.perf_counter() - start


def upload_figures(root: Path, mib: int) -> None:
    port = free_port()
    repo = str(Path(__file__).resolve().parents[1])
    code = SERVER.format(repo=repo, root=str(root), port=port)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        daemon = psutil.Process(proc.pid)
        before = daemon.memory_info().rss
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak[0] = max(peak[0], daemon.memory_info().rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        total = mib * CHUNK
        status, elapsed = send_upload(port, total)
        stop.set()
        sampler.join()
    finally:
        proc.terminate()
        proc.wait()
    baseline = socket_baseline(total)
    print(f"upload of {mib} MiB over loopback (answer {status}: the bytes are not a video):")
    print(f"  plain socket copy   {total / baseline / 1e6:8.0f} MB/s")
    print(f"  dpd upload route    {total / elapsed / 1e6:8.0f} MB/s (target >= 200 MB/s)")
    growth = (peak[0] - before) / 1e6
    print(
        f"  daemon RSS          {before / 1e6:.0f} MB before, +{growth:.1f} MB peak"
        " (target <= 50 MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upload-mib", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--skip-transcode", action="store_true")
    parser.add_argument("--skip-upload", action="store_true")
    args = quick.parse_args(parser, {"upload_mib": 32, "runs": 1})
    with tempfile.TemporaryDirectory(prefix="dpd-bench-") as tmp:
        root = Path(tmp)
        if not args.skip_transcode:
            asyncio.run(transcode_figures(root, args.runs))
        if not args.skip_upload:
            upload_figures(root, args.upload_mib)


if __name__ == "__main__":
    main()
