"""Logs API speed on a large train.log: targets tail=100 <= 10 ms, keyword search >= 300 MB/s.

Generates a train.log of --size MiB (default 1024) shaped like diffusion-pipe's output
(a DeepSpeed logger line and a ``steps:`` line per step, rising timestamps, tqdm redraws,
warnings, an OOM traceback now and then), then prints, each beside a baseline measured in
the same run on the same file:
  - tail=100: read_tail cold (first call: counts every line for total_lines), first call
    on a live job's log (the supervisor's follower told the counter what it read), and warm
    (the line counter only looks at what was appended), against a streaming full pass
    (``collections.deque(file, 100)``, what a naive tail does);
  - tail=100 with since= (the last minute);
  - tail=100&level=ERROR (few such lines: the whole log is looked through) on a followed log
    (the follower built its line index as it read), and on a log without an index: the first
    request (it builds and saves train.log.idx), the next one in a new process (it loads
    it) and the next in the same process, against the same streaming full pass;
  - search: a rare keyword, a frequent keyword, a frequent one with ignore_case, and
    one-minute time ranges (bisection) early and late in the log, the late one with and
    without the line index, in MB/s, against a Python ``for line in file`` loop; and against
    ``grep -c`` when grep is installed.
Figures are with the file in the page cache (it was just written), the usual case for a log
being written.

Usage: python3 bench/bench_logs.py [--size MiB] [--path FILE] [--keep] [--reuse] [--repeat N]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import quick  # --quick, a few seconds for CI
from dpd.logs.entries import LineFilter, make_filter, parse_time
from dpd.logs.reader import read_tail
from dpd.logs.search import SearchQuery, search_log
from dpd.supervisor.follower import READ_BYTES
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.lineindex import SUFFIX
from tests.logs.logfactory import followed_counter as follow

TAIL_TARGET_MS = 10.0
SEARCH_TARGET_MBS = 300.0
START = datetime(2025, 2, 12, 7, 0, 0)
STEPS_PER_CHUNK = 4000


def chunk(first_step: int) -> str:
    """Output for STEPS_PER_CHUNK steps, 0.25 s apart."""
    lines = []
    for step in range(first_step, first_step + STEPS_PER_CHUNK):
        at = START + timedelta(seconds=step / 4)
        stamp = at.strftime("%Y-%m-%d %H:%M:%S") + f",{at.microsecond // 1000:03d}"
        lines.append(
            f"[{stamp}] [INFO] [logging.py:123:log_dist] [Rank 0] step={step}, skipped=0, "
            "lr=[2e-05], mom=[[0.9, 0.99]]"
        )
        lines.append(f"steps: {step} loss: {0.5 / (1 + step % 97):0.4f} iter time (s): 0.250 "
                     "samples/sec: 4.000")  # fmt: skip
        if step % 500 == 0:
            lines.append("eval:  50%|#    | 1/2 [00:01<00:01]\reval: 100%|##| 2/2 [00:02<00:00]")
            lines.append(f"[{stamp}] [WARNING] [engine.py:1:step] slow step {step}")
        if step % 100_003 == 0:
            lines.append("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    return "\n".join(lines) + "\n"


def generate(path: Path, size_mib: int) -> int:
    target, written, step = size_mib * 1024 * 1024, 0, 1
    with path.open("w") as handle:
        while written < target:
            text = chunk(step)
            handle.write(text)
            written += len(text)
            step += STEPS_PER_CHUNK
    return step


def last_generated_step(path: Path) -> int:
    """The step after the last one a generated log holds (what ``generate`` returned)."""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        tail = handle.read().decode()
    last = max(int(m) for m in re.findall(r"^steps: (\d+) ", tail, re.MULTILINE))
    return last + 1


def timed(function: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median seconds of ``repeat`` runs, and the last result."""
    seconds, _, result = timed_cpu(function, repeat)
    return seconds, result


def timed_cpu(function: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median wall seconds and median CPU seconds of this process over ``repeat`` runs, and
    the last result. CPU time holds on a machine shared with other work, where wall time
    measures the neighbours too."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        began, began_cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - began_cpu)
    return statistics.median(walls), statistics.median(cpus), result


def python_line_loop(path: Path, keyword: bytes) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if keyword in line)


def index_of(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def followed_counter(path: Path) -> LineCounter:
    """A LineCounter as the daemon holds it for a live job: told its count by the follower
    that read the log as it was written, holding the line index the follower built as it
    read (done here beforehand, untimed)."""
    index_of(path).unlink(missing_ok=True)
    return follow(path, READ_BYTES)


def tail_figures(path: Path, last_step: int) -> None:
    index_of(path).unlink(missing_ok=True)
    counter = LineCounter()
    cold, page = timed(lambda: read_tail(path, 100, LineFilter(), None, counter), 1)
    learned = followed_counter(path)
    live, live_page = timed(lambda: read_tail(path, 100, LineFilter(), None, learned), 1)
    assert live_page.total_lines == page.total_lines
    warm, _ = timed(lambda: read_tail(path, 100, LineFilter(), None, counter), 20)
    naive, _ = timed(lambda: collections.deque(path.open("rb"), 100), 1)
    end = START + timedelta(seconds=last_step / 4)
    since = parse_time("since", (end - timedelta(minutes=1)).astimezone().isoformat())
    since_time, _ = timed(lambda: read_tail(path, 100, LineFilter(), since, counter), 20)
    print(f"total_lines {page.total_lines:,}")
    verdict = "OK" if warm * 1000 <= TAIL_TARGET_MS else "MISSED"
    print(
        f"tail=100 warm          {warm * 1000:9.2f} ms   target <= {TAIL_TARGET_MS} ms  {verdict}"
    )
    print(f"tail=100 cold          {cold * 1000:9.2f} ms   (first call counts every line)")
    verdict = "OK" if live * 1000 <= TAIL_TARGET_MS else "MISSED"
    print(f"tail=100 first, live   {live * 1000:9.2f} ms   target <= {TAIL_TARGET_MS} ms  {verdict}"
          "  (a followed job: the count comes from the supervisor)")  # fmt: skip
    print(f"tail=100 since=1 min   {since_time * 1000:9.2f} ms")
    print(f"baseline deque(file)   {naive * 1000:9.2f} ms   (streaming full pass)")
    level_figures(path, learned, naive)


def level_figures(path: Path, learned: LineCounter, naive: float) -> None:
    """tail=100&level=ERROR: few such lines, so the whole log is looked through."""
    errors = make_filter("ERROR", None)
    followed, found = timed(lambda: read_tail(path, 100, errors, None, learned), 5)
    warnings = make_filter("WARNING", None)
    frequent, _ = timed(lambda: read_tail(path, 100, warnings, None, learned), 5)
    index_of(path).unlink(missing_ok=True)
    fresh = LineCounter()  # a daemon that never followed this log: no index yet
    first, first_found = timed(lambda: read_tail(path, 100, errors, None, fresh), 1)
    again, again_found = timed(lambda: read_tail(path, 100, errors, None, LineCounter()), 1)
    warm, _ = timed(lambda: read_tail(path, 100, errors, None, fresh), 5)
    assert first_found.entries == again_found.entries == found.entries
    print(f"tail=100 level=ERROR ({len(found.entries)} lines in the whole log):")
    print(f"  followed log           {followed * 1000:9.2f} ms   (the follower's line index)")
    print(f"  same, level=WARNING    {frequent * 1000:9.2f} ms   (a hint in every record)")
    print(
        f"  no index, first        {first * 1000:9.2f} ms   (counts the lines, then builds "
        f"and saves {index_of(path).name}: {index_of(path).stat().st_size:,} bytes)"
    )
    print(f"  no index, next         {again * 1000:9.2f} ms   (a new process: loads the index)")
    print(f"  no index, warm         {warm * 1000:9.2f} ms   (the same process)")
    print(f"  baseline deque(file)   {naive * 1000:9.2f} ms   (streaming full pass)")


def search_figures(path: Path, size: int, repeat: int, last_step: int) -> None:
    mib = size / (1024 * 1024)
    cases = [
        ("rare keyword 'CUDA out of memory'", SearchQuery("CUDA out of memory")),
        ("frequent keyword 'loss' (every 2nd line)", SearchQuery("loss")),
        ("frequent, ignore_case 'LOSS'", SearchQuery("LOSS", ignore_case=True)),
        (
            "keyword 'slow step' level=WARNING",
            SearchQuery("slow step", make_filter("WARNING", None)),
        ),
    ]
    for name, query in cases:
        seconds, cpu, page = timed_cpu(lambda q=query: search_log(path, q), repeat)
        rate = mib / seconds
        verdict = "OK" if rate >= SEARCH_TARGET_MBS else "MISSED"
        print(f"search {name:42s} {rate:8.0f} MiB/s  {page.total_matches:>10,} matches  "
              f"target >= {SEARCH_TARGET_MBS:.0f}  {verdict}  "
              f"(CPU: {mib / cpu:.0f} MiB/s)")  # fmt: skip
    start = parse_time("start_time", (START + timedelta(hours=2)).astimezone().isoformat())
    end = parse_time("end_time", (START + timedelta(hours=2, minutes=1)).astimezone().isoformat())
    seconds, page = timed(lambda: search_log(path, SearchQuery("loss", start=start, end=end)), 5)
    print(f"search 'loss' in a 1-minute range (bisection) {seconds * 1000:8.2f} ms  "
          f"{page.total_matches:,} matches")  # fmt: skip
    late_range(path, last_step)
    seconds, cpu, _ = timed_cpu(lambda: python_line_loop(path, b"CUDA out of memory"), 1)
    print(f"baseline python 'for line in file'           {mib / seconds:8.0f} MiB/s  "
          f"(CPU: {mib / cpu:.0f} MiB/s)")  # fmt: skip
    if shutil.which("grep"):
        seconds, _ = timed(lambda: subprocess.run(["grep", "-c", "CUDA out of memory", str(path)],
                                                  capture_output=True), 1)  # fmt: skip
        print(f"baseline grep -c (rare keyword)              {mib / seconds:8.0f} MiB/s")


def late_range(path: Path, last_step: int) -> None:
    """A one-minute range two minutes before the end: its first line number is the lines
    before it, counted from the start or taken from the line index."""
    last = START + timedelta(seconds=last_step / 4)
    start = parse_time("start_time", (last - timedelta(minutes=2)).astimezone().isoformat())
    end = parse_time("end_time", (last - timedelta(minutes=1)).astimezone().isoformat())
    query = SearchQuery("loss", start=start, end=end)
    counter = LineCounter()  # as the daemon's: the index is loaded once
    with_index, page = timed(lambda: search_log(path, query, counter), 5)
    saved = index_of(path).read_bytes()
    index_of(path).unlink()
    without, plain = timed(lambda: search_log(path, query, LineCounter()), 5)
    index_of(path).write_bytes(saved)
    assert plain.results == page.results
    print(f"search 'loss' in a late 1-minute range        {with_index * 1000:8.2f} ms  "
          f"{page.total_matches:,} matches (numbered from the line index; "
          f"{without * 1000:.2f} ms counting from the start)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="log size in MiB")
    parser.add_argument("--path", type=Path, help="where to write the log (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated log")
    parser.add_argument("--repeat", type=int, default=3, help="runs per search (median)")
    parser.add_argument("--reuse", action="store_true", help="search --path as it is")
    args = quick.parse_args(parser, {"size": 32, "repeat": 1})
    folder = None if args.path else tempfile.mkdtemp(prefix="dpd-bench-logs-")
    path = args.path or Path(folder or ".") / "train.log"
    try:
        began = time.perf_counter()
        if args.reuse and args.path and path.exists():
            last_step = last_generated_step(path)
        else:
            last_step = generate(path, args.size)
        size = path.stat().st_size
        print(f"log: {size / 2**20:.0f} MiB, made in {time.perf_counter() - began:.1f} s: {path}")
        tail_figures(path, last_step)
        search_figures(path, size, args.repeat, last_step)
    finally:
        index_of(path).unlink(missing_ok=True)
        if not args.keep:
            path.unlink(missing_ok=True)
            if folder:
                shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
