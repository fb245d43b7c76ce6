"""Every benchmark in quick mode, one after the other: ``python3 bench/run_quick.py``.

CI runs this after the tests so that no benchmark can rot: each ``bench/bench_*.py`` runs end
to end with ``--quick`` (small sizes, a few seconds) and prints its figures; a benchmark that
crashes, or runs past ``--timeout``, fails the run. No speed target is judged here: quick
figures are noise, the full runs (without ``--quick``) are the measurements.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def benchmarks() -> list[Path]:
    return sorted(BENCH.glob("bench_*.py"))


def run_one(script: Path, timeout: float) -> tuple[bool, float]:
    print(f"\n=== {script.name} --quick", flush=True)
    began = time.monotonic()
    try:
        result = subprocess.run([sys.executable, str(script), "--quick"], timeout=timeout)
        ok = result.returncode == 0
        why = f"exit status {result.returncode}"
    except subprocess.TimeoutExpired:
        ok, why = False, f"still running after {timeout:g} s"
    elapsed = time.monotonic() - began
    print(f"=== {script.name}: {'ok' if ok else 'FAILED, ' + why} in {elapsed:.1f} s", flush=True)
    return ok, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per benchmark")
    parser.add_argument("names", nargs="*", help="only these (e.g. bench_api.py)")
    args = parser.parse_args()
    chosen = [s for s in benchmarks() if not args.names or s.name in args.names]
    results = {script.name: run_one(script, args.timeout) for script in chosen}
    failed = [name for name, (ok, _) in results.items() if not ok]
    total = sum(elapsed for _, elapsed in results.values())
    print(f"\n{len(results) - len(failed)}/{len(results)} benchmarks ran in {total:.0f} s")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
