"""Trainer-output parsing speed: target >= 100k lines/s on one core.

Generates a realistic 1M-line diffusion-pipe output (lr + steps lines, DeepSpeed INFO dumps,
checkpoint lines, tqdm redraws, warnings, epoch lines) and prints lines/s for
  - a baseline: a loop doing one str.startswith per line (the floor of any Python parser),
  - OutputParser.feed + ProgressTracker.observe (what the follower runs per line),
  - classify_line (what the logs API runs per line),
  - LogFollower.read_new over the same output written to a file (redraws as "\\r"),
    beside a baseline that reads the file and splits it on "\\n".

Usage: python3 bench/bench_parser.py [--lines N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import quick  # --quick, a few seconds for CI
from dpd.supervisor.output_parser import OutputParser
from dpd.supervisor.progress import ProgressTracker
from dpd.trainlog.follow import LogFollower
from dpd.trainlog.lines import classify_line

TARGET = 100_000
STAMP = "[2025-02-12 07:02:00,123]"
STEPS_PER_EPOCH = 500


def block(step: int) -> list[tuple[str, str]]:
    """Output around one step as (line, terminator): "\\r" for bar redraw states."""
    lines = [
        (
            f"{STAMP} [INFO] [logging.py:123:log_dist] [Rank 0] step={step}, skipped=0, "
            f"lr=[{2e-5 * min(1.0, step / 100):.6g}], mom=[[0.9, 0.99]]",
            "\n",
        ),
        (
            f"steps: {step} loss: {0.5 / (1 + step / 1000):.4f} iter time (s): 1.234 "
            "samples/sec: 3.241",
            "\n",
        ),
    ]
    if step % 10 == 0:
        lines += [
            (f"{STAMP} [INFO] [config.py:1007:print]   zero_optimization ...... stage=0", "\n"),
            (f"{STAMP} [INFO] [engine.py:3000:_save] rank 0 memory 12.3 GB", "\n"),
            (
                f"{STAMP} [WARNING] [dataset.py:235:_get] Cound not find caption for /d/{step}.png."
                " Skipping image.",
                "\n",
            ),
            (
                "/usr/lib/python3/dist-packages/torch/utils/checkpoint.py:90: UserWarning: None of"
                " the inputs have requires_grad=True.",
                "\n",
            ),
        ]
    if step % 20 == 0:
        lines += [
            (f"  {p:3d}%|{'#' * (p // 10):<10}| {p}/100 [00:0{p % 10}<00:01, 9.1it/s]", "\r")
            for p in range(0, 101, 10)
        ]
        lines.append(("", "\n"))
    if step % STEPS_PER_EPOCH == 0:
        epoch = step // STEPS_PER_EPOCH
        tag = f"global_step{step}"
        lines += [
            (
                f"{STAMP} [INFO] [logging.py:123:log_dist] [Rank 0] [Torch] Checkpoint {tag} is"
                " about to be saved!",
                "\n",
            ),
            (
                f"{STAMP} [INFO] [logging.py:123:log_dist] [Rank 0] Saving model checkpoint: "
                f"/out/20250212_07-01-02/{tag}/mp_rank_00_model_states.pt",
                "\n",
            ),
            (f"Saving model to directory epoch{epoch}", "\n"),
            (f"Started new epoch: {epoch + 1}", "\n"),
        ]
    return lines


def generate(count: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    step = 0
    while len(out) < count:
        step += 1
        out.extend(block(step))
    return out[:count]


def rate(label: str, count: int, run: Callable[[], object], baseline: float | None = None) -> float:
    started = time.process_time()  # CPU time of this process: other load on the host is not
    run()  # counted against it; one thread, so this is the one-core figure
    seconds = time.process_time() - started
    per_second = count / seconds
    extra = f"  ({per_second / baseline:.2f}x baseline)" if baseline else ""
    verdict = "" if baseline is None else ("  OK" if per_second >= TARGET else "  BELOW TARGET")
    print(f"{label:<44} {per_second:>12,.0f} lines/s  {seconds:6.2f} s CPU{extra}{verdict}")
    return per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = quick.parse_args(parser, {"lines": 20_000})
    raw = generate(args.lines)
    lines = [text for text, _ in raw]  # every redraw state delivered: the parser's worst case
    count = len(lines)
    print(f"{count:,} lines, target {TARGET:,} lines/s on one core\n")

    def baseline() -> int:
        return sum(1 for line in lines if line.startswith("steps: "))

    def parse_and_track() -> None:
        output = OutputParser(epochs=1000, max_steps=None)
        tracker = ProgressTracker(epochs=1000, max_steps=None)
        now = 1.0
        for line in lines:
            now += 0.001
            for observation in output.feed(line, now):
                tracker.observe(observation, now)
        tracker.drain_metric_points()

    def classify() -> None:
        for line in lines:
            classify_line(line)

    base = rate("baseline: one str.startswith per line", count, baseline)
    rate("OutputParser.feed + ProgressTracker.observe", count, parse_and_track, base)
    rate("classify_line", count, classify, base)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.log"
        path.write_bytes("".join(text + end for text, end in raw).encode())
        size = path.stat().st_size

        def split_file() -> int:
            return len(path.read_bytes().split(b"\n"))

        def follow() -> int:
            follower, total = LogFollower(path), 0
            while True:
                got, _ = follower.read_new()
                if not got:
                    return total
                total += len(got)

        print(f"\nfile: {size / 1e6:.1f} MB")
        file_base = rate("baseline: read + split on \\n", count, split_file)
        rate("LogFollower.read_new (1 MiB reads)", count, follow, file_base)


if __name__ == "__main__":
    main()
