"""Output formats of the simulated trainer (reference §4.2-§4.4, §6.4). STDLIB ONLY.

stdout: print() lines and DeepSpeed logger lines. stderr: tqdm bars (\\r redraws) and
tracebacks (with the `[rank<N>]: ` prefix torch installs after process-group init).
"""

from __future__ import annotations

import sys
import time
import traceback
from datetime import datetime
from types import TracebackType


class OutOfMemoryError(RuntimeError):
    """Prints as `torch.OutOfMemoryError: CUDA out of memory. ...`."""


OutOfMemoryError.__module__ = "torch"


class DistNetworkError(RuntimeError):
    """Prints as `torch.distributed.DistNetworkError: ...` (c10d store bind failure)."""


DistNetworkError.__module__ = "torch.distributed"


def oom_message(gpu: int, tried_gib: float = 2.0) -> str:
    return (
        f"CUDA out of memory. Tried to allocate {tried_gib:.2f} GiB. GPU {gpu} has a total "
        "capacity of 23.55 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this "
        "process has 22.48 GiB memory in use. Of the allocated memory 21.71 GiB is allocated "
        "by PyTorch, and 318.52 MiB is reserved by PyTorch but unallocated. If reserved but "
        "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
        "to avoid fragmentation.  See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
    )


CUDA_CRASH_MESSAGE = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\n"
    "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)


def eaddrinuse_message(port: int) -> str:
    return (
        "The server socket has failed to listen on any local network address. "
        f"port: {port}, useIpv6: false, code: -98, name: EADDRINUSE, "
        "message: address already in use"
    )


def install_rank_excepthook(rank: int) -> None:
    """torch >= 2.3 prefixes every traceback line once the process group exists."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write("".join(f"[rank{rank}]: {line}\n" for line in text.splitlines()))
        sys.stderr.flush()

    sys.excepthook = hook


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def log(level: str, where: str, message: str) -> None:
    """DeepSpeed's logger line, on stdout."""
    now = datetime.now()
    stamp = now.strftime("%Y-%m-%d %H:%M:%S") + f",{now.microsecond // 1000:03d}"
    out(f"[{stamp}] [{level}] [{where}] {message}")


def log_dist(message: str) -> None:
    """DeepSpeed's log_dist(..., ranks=[0]) as 0.18.4 prints it."""
    log("INFO", "logging.py:123:log_dist", f"[Rank 0] {message}")


def step_line(step: int, loss: float, iter_time: float, samples_per_sec: float) -> str:
    return (
        f"steps: {step} loss: {loss:0.4f} iter time (s): {iter_time:0.3f} "
        f"samples/sec: {samples_per_sec:0.3f}"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class Bar:
    """A tqdm-like bar on stderr, redrawn with \\r, closed with a newline."""

    def __init__(self, total: int, desc: str = "") -> None:
        self.total = max(0, total)
        self.desc = desc
        self.count = 0
        self.started = time.monotonic()
        self._draw()

    def update(self, n: int = 1) -> None:
        self.count = min(self.total, self.count + n)
        self._draw()

    def close(self) -> None:
        self._draw()
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self.started
        rate = self.count / elapsed if elapsed > 0 and self.count else 0.0
        remaining = (self.total - self.count) / rate if rate else 0.0
        fraction = self.count / self.total if self.total else 1.0
        filled = int(fraction * 10)
        bar = "█" * filled + " " * (10 - filled)
        prefix = f"{self.desc}: " if self.desc else ""
        rate_text = f"{rate:.2f}it/s" if rate else "?it/s"
        sys.stderr.write(
            f"\r{prefix}{int(fraction * 100):3d}%|{bar}| {self.count}/{self.total} "
            f"[{_clock(elapsed)}<{_clock(remaining)}, {rate_text}]"
        )
        sys.stderr.flush()


def paced_bar(total: int, seconds: float, desc: str = "") -> None:
    """Run a bar to completion over about `seconds`."""
    bar = Bar(total, desc)
    for _ in range(total):
        if seconds > 0 and total:
            time.sleep(seconds / total)
        bar.update()
    bar.close()
