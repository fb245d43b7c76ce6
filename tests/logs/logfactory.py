"""Generated train.log files shaped like the stand-in trainer's output, and a naive model of
the logs API (whole file in memory) to check the streaming readers against."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from dpd.logs.entries import LineFilter, classify, display_text, entry, line_stamp, matched_text
from dpd.trainlog.counter import LineCounter
from dpd.trainlog.follow import LogFollower

START = datetime(2025, 2, 12, 7, 0, 0)


def stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") + f",{at.microsecond // 1000:03d}"


def make_log(path: Path, steps: int, final_newline: bool = True) -> Path:
    """Startup lines without timestamps, then per step a DeepSpeed logger line and a plain
    ``steps:`` line; a tqdm bar with redraws, warnings and a traceback now and then."""
    lines = ["Grouped metadata is not cached. Caching it now.", "caching latents: /data/cats"]
    for step in range(1, steps + 1):
        at = START + timedelta(seconds=step)
        lines.append(
            f"[{stamp(at)}] [INFO] [logging.py:123:log_dist] [Rank 0] step={step}, "
            "skipped=0, lr=[2e-05], mom=[(0.9, 0.99)]"
        )
        lines.append(f"steps: {step} loss: {0.5 / step:0.4f} iter time (s): 0.200 samples/sec: 5.0")
        if step % 50 == 0:
            lines.append("eval:  50%|#   | 1/2\reval: 100%|##| 2/2 [00:01<00:00]")
            lines.append(f"[{stamp(at)}] [WARNING] [engine.py:1:step] slow step {step}")
        if step % 333 == 0:
            lines.append("Traceback (most recent call last):")
            lines.append("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
            lines.append("")
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_text(text)
    return path


def naive_lines(path: Path) -> list[tuple[int, bytes, str | None]]:
    """(line number, raw bytes, effective local stamp) of every physical line."""
    data = path.read_bytes()
    raws = data.split(b"\n")
    if data.endswith(b"\n"):
        raws.pop()
    out, last = [], None
    for number, raw in enumerate(raws, start=1):
        last = line_stamp(raw) or last
        out.append((number, raw, last))
    return out


def naive_tail(
    path: Path, count: int, keep: LineFilter, since: str | None = None
) -> list[dict[str, Any]]:
    kept = []
    for number, raw, eff in naive_lines(path):
        text = display_text(raw)
        if not text.strip():
            continue
        if since is not None and (eff is None or eff < since):
            continue
        line = classify(text)
        if keep.keeps(line):
            kept.append(entry(line, eff, number))
    return kept[-count:]


def naive_search(
    path: Path,
    keyword: str,
    keep: LineFilter,
    start: str | None = None,
    end: str | None = None,
    ignore_case: bool = False,
) -> list[dict[str, Any]]:
    hits = []
    for number, raw, eff in naive_lines(path):
        text = display_text(raw)
        matched = matched_text(text, keyword, ignore_case)
        if matched is None:
            continue
        if start is not None and (eff is None or eff < start):
            continue
        if end is not None and eff is not None and eff > end:
            continue
        line = classify(text)
        if keep.keeps(line):
            hit = entry(line, eff, number)
            hit["matched_text"] = matched
            hits.append(hit)
    return hits


def make_hinted_log(path: Path, steps: int, seed: int = 0) -> Path:
    """A log in which level hints lie everywhere a reader could trip: errors with and without
    a logger timestamp (tracebacks, rank prefixes, torch's native "[E" lines), warnings, hints
    only in an overdrawn tqdm state, "\\r\\n" endings, blank lines, runs of untimed lines
    longer than a tail's timestamp look-back before an error, a line longer than an index
    record, an error on the first line and an unfinished last line."""
    lines = ["Traceback (most recent call last):", "caching latents: /data/cats"]
    for step in range(1, steps + 1):
        at = START + timedelta(seconds=step + seed)
        logged = f"[{stamp(at)}] [INFO] [logging.py:123:log_dist] [Rank 0] step={step}"
        lines += [logged, f"steps: {step} loss: {0.5 / step:0.4f} iter time (s): 0.200"]
        if (step + seed) % 37 == 0:
            lines.append(f"[{stamp(at)}] [WARNING] [engine.py:1:step] slow step {step}\r")
        if (step + seed) % 53 == 0:
            lines.append(f"[{stamp(at)}] [ERROR] [engine.py:2:step] step {step} failed")
        if (step + seed) % 101 == 0:
            lines += ["Traceback (most recent call last):", '  File "train.py", line 1, in f']
            lines += ["RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", ""]
        if (step + seed) % 97 == 0:
            lines.append("Error while loading\rloading: 100%|##| 2/2 [00:01<00:00]")
        if (step + seed) % 151 == 0:
            lines += [f"[rank1]: [E socket.cpp:1] connection lost at {step}", "[W] retrying"]
        if (step + seed) % 211 == 0:
            lines += [f"plain print {n} " + "x" * 90 for n in range(800)]  # about 80 KiB
            lines.append("ValueError: bad batch")
        if (step + seed) % 499 == 0:
            lines.append("y" * 9000 + " Exception: in a long line " + "z" * 9000)
    text = "\n".join(lines) + "\nKeyboardInterrupt"
    path.write_bytes(text.encode())
    return path


def followed_counter(log: Path, read_size: int) -> LineCounter:
    """The counter as the daemon holds it for a live job: told by a follower that read the
    log in pieces of ``read_size`` bytes, and holding the line index it built."""
    counter = LineCounter()
    follower = LogFollower(log, index=counter.index(log))
    while follower.read_new(max_bytes=read_size)[1] < log.stat().st_size:
        pass
    assert follower.tell(counter)
    return counter
