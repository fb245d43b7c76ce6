"""Events to NATS, end to end, beside raw nats-py measured in the same run as the ceiling.

Pipeline measured: trainer lines appended to train.log -> JobFollower (parser, batching)
-> EventBus (numbering, events.jsonl with fsync) -> NatsBridge -> a NATS subscriber.
A real nats-server (JetStream, file store) runs in a temp dir on 127.0.0.1.

  1. ceiling: raw nats-py core publish (small messages, and 500-line batches); raw
     JetStream with acks two ways: nats-py's publish_async (one Future per message), and
     a window of publishes with reply inboxes under one wildcard subscription (the client
     calls the bridge makes, without dpd around them).
  2. lines/s delivered: LINES lines already in train.log, followed back to back and as the
     supervisor's loop does (a backlog straight through). target >= 200k lines/s
  3. JetStream acked events/s: EVENTS events on disk republished (the catch-up after an
     outage), and events emitted live through the bus.    target >= 20k events/s
  4. latency line -> subscriber at RATE lines/s for SECONDS s, p50/p99. target p99 <= 200 ms

Acked rates also show CPU per message, of this process (all threads) and of nats-server,
read from /proc over the timed part: on a shared machine that cost is steadier than rates.

    python3 bench/bench_events.py [--lines 400000] [--events 50000] [--rate 1000] [--seconds 5]
                                  [--only jetstream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats

from bench import quick  # --quick, a few seconds for CI
from dpd.config import NatsConfig
from dpd.events.bus import EventBus
from dpd.events.nats_bridge import NatsBridge
from dpd.jobs.spec import validate_job
from dpd.spool.layout import SpoolLayout
from dpd.spool.store import JobStore, Submission
from dpd.supervisor.follower import JobFollower
from dpd.supervisor.wakeups import WatchTiming
from tests.jobfiles import job_document, make_data_root

# chatter, not step lines: each step line also becomes a metric event, and a real trainer
# prints one per step (seconds apart); a flood of lines is warnings and prints
LINE = "[2025-02-12 07:00:01,123] [WARNING] [engine.py:1234:step] chatter {n} t={t:.6f}"

WATCH_PERIOD = WatchTiming().period  # how often the supervisor reads a chatty log


# ------------------------------------------------------------------ setup

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Rate:
    """Messages per second, and CPU microseconds per message here and in nats-server."""

    per_second: float
    client_us: float
    server_us: float

    def __str__(self) -> str:
        return (
            f"{self.per_second:,.0f}/s, CPU {self.client_us:.1f} us client + "
            f"{self.server_us:.1f} us nats-server per message"
        )


class CpuClock:
    """CPU seconds used by this process and by nats-server since ``start``."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self._since = (0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float]:
        fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        server = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
        return time.perf_counter(), time.process_time(), server

    def start(self) -> None:
        self._since = self._now()

    def rate(self, count: int) -> Rate:
        wall, client, server = (b - a for a, b in zip(self._since, self._now(), strict=True))
        return Rate(count / wall, client / count * 1e6, server / count * 1e6)


def start_nats(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    command = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(root / "js")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"nats://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nats-server did not start")


class Pipeline:
    """Store, bus and bridge on this loop; a follower per task as the supervisor runs it."""

    def __init__(self, root: Path, url: str, jetstream: bool) -> None:
        layout = SpoolLayout(root / "spool")
        layout.ensure()
        self.data = make_data_root(root / "data")
        self.store = JobStore(layout, root / "out", "bench")
        self.store.load()
        config = replace(NatsConfig(), url=url, jetstream=jetstream)
        self.bus = EventBus(self.store, "bench")
        self.bridge = NatsBridge(config, self.bus, self.store, "bench", root / "state")
        self.tasks: list[asyncio.Task[Any]] = []

    def new_job(self, task_id: str) -> Path:
        spec = validate_job(job_document(self.data, task_id=task_id), data_roots=[self.data])
        self.store.create_job(spec, Submission("rest"))
        return self.store.layout.job_dir(task_id) / "train.log"

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self.bus.run()), asyncio.create_task(self.bridge.run())]
        while not self.bridge.connected or (
            self.bridge.jetstream is not None and not self.bridge.status()["stream_ready"]
        ):
            await asyncio.sleep(0.01)

    def follower(self, task_id: str) -> JobFollower:
        loop = asyncio.get_running_loop()

        def emit(scope: str, task: str, kind: str, data: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self.bus.emit, scope, task, kind, data)

        return JobFollower(self.store, emit, task_id, epochs=100, max_steps=None)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def follow(follower: JobFollower, pause: float, stop: asyncio.Event) -> None:
    """The supervisor's loop: poll in a thread; a backlog is read straight through, and
    between batches of new output it waits ``pause`` (0: back to back)."""
    while not stop.is_set():
        read = await asyncio.to_thread(follower.poll)
        if read and not follower.follower.at_eof:
            continue
        await asyncio.sleep(pause or 0.01)


async def wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------ ceiling


async def raw_core(url: str, count: int, payload: bytes) -> float:
    """Messages/s from one nats-py publisher to one subscriber."""
    sub_nc, pub_nc = await nats.connect(url), await nats.connect(url)
    received = 0
    done = asyncio.Event()

    async def on_message(_msg: Any) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    await sub_nc.subscribe("raw.core", cb=on_message, pending_msgs_limit=count + 1)
    await sub_nc.flush()
    started = time.perf_counter()
    for _ in range(count):
        await pub_nc.publish("raw.core", payload)
    await pub_nc.flush()
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await sub_nc.close()
    await pub_nc.close()
    return count / elapsed


async def raw_publish_async(url: str, clock: CpuClock, count: int, payload: bytes) -> Rate:
    """Acked messages/s with nats-py's publish_async (what the bridge used before)."""
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=8192)
    await js.add_stream(name="RAW", subjects=["raw.js.>"])
    clock.start()
    futures = [
        await js.publish_async("raw.js.x", payload, headers={"Nats-Msg-Id": f"r:{n}"})
        for n in range(count)
    ]
    await asyncio.gather(*futures)
    rate = clock.rate(count)
    await js.delete_stream("RAW")
    await nc.close()
    return rate


async def raw_windowed(
    url: str, clock: CpuClock, count: int, payload: bytes, window: int = 4096
) -> Rate:
    """Acked messages/s publishing with reply inboxes, up to ``window`` unacked, acks
    matched by the inbox's last token: the bridge's client calls, nothing else."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="RAW", subjects=["raw.js.>"])
    inbox = nc.new_inbox()
    pending: set[int] = set()
    acked = [0]
    room, done = asyncio.Event(), asyncio.Event()

    async def on_ack(msg: Any) -> None:
        pending.discard(int(msg.subject.rsplit(".", 1)[1]))
        if b'"seq"' not in msg.data:
            raise RuntimeError(f"not acked: {msg.data!r}")
        acked[0] += 1
        if len(pending) <= window // 2:
            room.set()
        if acked[0] == count:
            done.set()

    await nc.subscribe(f"{inbox}.*", cb=on_ack, pending_msgs_limit=4 * window)
    clock.start()
    for n in range(count):
        while len(pending) >= window:
            room.clear()
            await room.wait()
        pending.add(n)
        await nc.publish(
            "raw.js.x", payload, reply=f"{inbox}.{n}", headers={"Nats-Msg-Id": f"r:{n}"}
        )
        if n % 256 == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(done.wait(), 120)
    rate = clock.rate(count)
    await js.delete_stream("RAW")
    await nc.close()
    return rate


# ------------------------------------------------------------------ end to end


async def subscriber(url: str, subject: str, on_payload: Callable[[dict[str, Any]], None]) -> Any:
    nc = await nats.connect(url)

    async def on_message(msg: Any) -> None:
        on_payload(json.loads(msg.data))

    await nc.subscribe(subject, cb=on_message, pending_msgs_limit=1_000_000)
    await nc.flush()
    return nc


async def lines_delivered(root: Path, url: str, lines: int, pause: float) -> tuple[float, int]:
    """(lines/s from train.log to a subscriber, NATS log messages used)."""
    pipeline = Pipeline(root, url, jetstream=False)
    log_path = pipeline.new_job("lines")
    log_path.write_text("".join(LINE.format(n=n, t=0.0) + "\n" for n in range(lines)))
    got = {"lines": 0, "messages": 0}

    def count(payload: dict[str, Any]) -> None:
        got["lines"] += len(payload["data"].get("lines", ()))
        got["messages"] += 1

    nc = await subscriber(url, "dpd.jobs.lines.log", count)
    await pipeline.start()
    stop = asyncio.Event()
    started = time.perf_counter()
    reader = asyncio.create_task(follow(pipeline.follower("lines"), pause, stop))
    await wait_for(lambda: got["lines"] >= lines)
    elapsed = time.perf_counter() - started
    stop.set()
    await reader
    await pipeline.stop()
    await nc.close()
    return lines / elapsed, got["messages"]


async def jetstream_catch_up(
    root: Path, url: str, clock: CpuClock, events: int, tasks: int = 10
) -> Rate:
    """Acked events/s republishing EVENTS events from events.jsonl (after an outage)."""
    pipeline = Pipeline(root, url, jetstream=True)
    per_task = events // tasks
    for index in range(tasks):
        task_id = f"catch{index}"
        pipeline.new_job(task_id)
        lines = [
            json.dumps(
                {"type": "metrics", "task_id": task_id, "node": "bench", "seq": seq,
                 "timestamp": time.time(), "data": {"metric": "loss", "step": seq}},
                separators=(",", ":"),
            )
            for seq in range(2, per_task + 2)
        ]  # fmt: skip
        with (pipeline.store.layout.job_dir(task_id) / "events.jsonl").open("a") as handle:
            handle.write("\n".join(lines) + "\n")
    pipeline.store.load()
    clock.start()
    await pipeline.start()
    await wait_for(lambda: pipeline.bridge.status()["acked_seq_lag"] == 0)
    rate = clock.rate(tasks * (per_task + 1))
    await pipeline.stop()
    return rate


async def jetstream_live(
    root: Path, url: str, clock: CpuClock, events: int, tasks: int = 8
) -> Rate:
    """Acked events/s for events emitted through the bus (each fsynced to events.jsonl)."""
    pipeline = Pipeline(root, url, jetstream=True)
    ids = [f"live{index}" for index in range(tasks)]
    for task_id in ids:
        pipeline.new_job(task_id)
    await pipeline.start()
    clock.start()
    for n in range(events // tasks):
        for task_id in ids:
            pipeline.bus.emit("jobs", task_id, "metrics", {"metric": "loss", "step": n})
        if n % 100 == 0:
            await asyncio.sleep(0)
    await wait_for(
        lambda: pipeline.bridge.status()["acked"] >= (events // tasks) * tasks + tasks, 300
    )
    rate = clock.rate((events // tasks) * tasks)
    await pipeline.stop()
    return rate


async def latency(root: Path, url: str, rate: int, seconds: float) -> list[float]:
    """Seconds from a line's write to its arrival at a subscriber, RATE lines/s."""
    pipeline = Pipeline(root, url, jetstream=False)
    log_path = pipeline.new_job("latency")
    delays: list[float] = []

    def measure(payload: dict[str, Any]) -> None:
        now = time.time()
        for line in payload["data"].get("lines", ()):
            if "t=" in line:
                delays.append(now - float(line.rsplit("t=", 1)[1]))

    nc = await subscriber(url, "dpd.jobs.latency.log", measure)
    await pipeline.start()
    stop = asyncio.Event()
    reader = asyncio.create_task(follow(pipeline.follower("latency"), 0.1, stop))
    total = int(rate * seconds)
    writer = threading.Thread(target=write_paced, args=(log_path, rate, total))
    writer.start()
    await asyncio.to_thread(writer.join)
    await wait_for(lambda: len(delays) >= total, 30)
    stop.set()
    await reader
    await pipeline.stop()
    await nc.close()
    return delays


def write_paced(path: Path, rate: int, total: int) -> None:
    start = time.perf_counter()
    with path.open("a", buffering=1) as handle:
        for n in range(total):
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            handle.write(LINE.format(n=n, t=time.time()) + "\n")


# ------------------------------------------------------------------ main


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="dpd-bench-events-") as tmp:
        root = Path(tmp)
        server, url = start_nats(root)
        try:
            await report(root, url, CpuClock(server.pid), args)
        finally:
            server.terminate()
            server.wait()


async def report(root: Path, url: str, clock: CpuClock, args: argparse.Namespace) -> None:
    small = json.dumps({"type": "metrics", "seq": 1, "data": {"loss": 0.1}}).encode()
    step = section
    if args.only == "all":
        await core_report(root, url, args, small)
    js_async = await step(
        "raw JetStream publish_async+ack", raw_publish_async(url, clock, 50_000, small)
    )
    print(f"  {js_async}")
    raw_js = await step(
        "raw JetStream windowed publish+ack", raw_windowed(url, clock, 50_000, small)
    )
    print(f"  {raw_js}")
    catch_up = await step(
        "JetStream catch-up from disk", jetstream_catch_up(root / "cu", url, clock, args.events)
    )
    print(f"  acked events {catch_up}")
    print(f"  (target >= 20,000/s; raw ceiling {raw_js.per_second:,.0f}/s windowed, "
          f"{js_async.per_second:,.0f}/s with publish_async)")  # fmt: skip
    live = await step(
        "JetStream live through the bus", jetstream_live(root / "live", url, clock, 20_000)
    )
    print(f"  acked events {live}")
    print("  (each event fsynced to events.jsonl first)")
    if args.only == "all":
        await latency_report(root, url, args)


async def core_report(root: Path, url: str, args: argparse.Namespace, small: bytes) -> None:
    batch = json.dumps({"lines": [LINE.format(n=n, t=0.0) for n in range(500)]}).encode()
    step = section
    core_small = await step("raw core publish, small msgs", raw_core(url, 200_000, small))
    core_batch = await step("raw core publish, 500-line batches", raw_core(url, 2_000, batch))
    print(f"  ceiling: {core_small:,.0f} msg/s core, {core_batch * 500:,.0f} lines/s in "
          "batches")  # fmt: skip
    cadence = f"supervisor's loop (backlog straight through, else every {WATCH_PERIOD} s)"
    for label, pause in (("back to back", 0.0), (cadence, WATCH_PERIOD)):
        rate, messages = await step(
            f"trainer lines -> subscriber, {label}",
            lines_delivered(root / f"lines{pause}", url, args.lines, pause),
        )
        print(f"  {rate:,.0f} lines/s in {messages} messages (target >= 200,000)")


async def latency_report(root: Path, url: str, args: argparse.Namespace) -> None:
    delays = await section(
        f"latency at {args.rate} lines/s", latency(root / "lat", url, args.rate, args.seconds)
    )
    quantiles = statistics.quantiles(delays, n=100)
    p50, p99, worst = quantiles[49] * 1000, quantiles[98] * 1000, max(delays) * 1000
    print(f"  p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms over {len(delays)} lines")
    print("  (target p99 <= 200 ms)")


async def section(title: str, work: Awaitable[Any]) -> Any:
    print(f"{title} ...", flush=True)
    return await work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=400_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=("all", "jetstream"), default="all")
    quick_sizes = {"lines": 20_000, "events": 2_000, "rate": 500, "seconds": 1.0}
    asyncio.run(run(quick.parse_args(parser, quick_sizes)))


if __name__ == "__main__":
    main()
