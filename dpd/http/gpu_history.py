"""The last hour of every GPU, for the dashboard's sparklines (``GET /api/v1/gpu/history``).

A listener on the GPU monitor appends one sample per GPU per snapshot: ``[unix_t, util_pct,
mem_used_mb, temp_c, power_w]`` (null where the GPU did not say). Samples older than
``KEEP_SECONDS`` are dropped as new ones come, and each GPU keeps at most ``MAX_SAMPLES``, so
memory stays bounded whatever the monitor interval. In memory only: a restart starts an
empty history. Who runs what on each GPU (``process_owners``) is found here too, for
``/gpu/status``: a process belongs to a job when one of its ancestors is the job's trainer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import psutil

from dpd.supervisor.gpus import GpuInfo, GpuProcess

KEEP_SECONDS: Final = 3600.0
MAX_SAMPLES: Final = 36_000  # one hour at the monitor's fastest useful interval (0.1 s)

Sample = tuple[float, int | None, int, int | None, int | None]


@dataclass
class GpuTrack:
    name: str
    samples: deque[Sample] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))


class GpuHistory:
    def __init__(self, keep_seconds: float = KEEP_SECONDS, clock: Callable[[], float] = time.time):
        self.keep_seconds = keep_seconds
        self.clock = clock
        self.tracks: dict[int, GpuTrack] = {}

    def record(self, snapshot: Iterable[GpuInfo]) -> None:
        """A monitor listener: one sample per GPU that answered."""
        now = self.clock()
        for gpu in snapshot:
            track = self.tracks.setdefault(gpu.gpu_id, GpuTrack(gpu.name))
            track.name = gpu.name
            if gpu.error is None:
                sample = (round(now, 3), gpu.utilization_gpu, gpu.memory_used,
                          gpu.temperature, gpu.power_usage)  # fmt: skip
                track.samples.append(sample)
            while track.samples and track.samples[0][0] < now - self.keep_seconds:
                track.samples.popleft()

    def view(self, seconds: float) -> list[dict[str, Any]]:
        since = self.clock() - seconds
        return [
            {
                "gpu_id": gpu_id,
                "name": track.name,
                "samples": [list(s) for s in track.samples if s[0] >= since],
            }
            for gpu_id, track in sorted(self.tracks.items())
        ]


# ------------------------------------------------------------------ process owners


def ancestors(pid: int) -> list[int]:
    """The pids above ``pid`` up to init (blocking: reads /proc); empty if it is gone."""
    try:
        return [p.pid for p in psutil.Process(pid).parents()]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def process_owners(
    processes: Iterable[GpuProcess],
    trainers: Mapping[int, str],
    parents_of: Callable[[int], list[int]] = ancestors,
) -> dict[int, str | None]:
    """pid -> the task whose trainer (pid in ``trainers``) it is or descends from; None for
    a foreign process (blocking with the default ``parents_of``)."""
    owners: dict[int, str | None] = {}
    for process in processes:
        if process.pid in trainers:
            owners[process.pid] = trainers[process.pid]
            continue
        owners[process.pid] = next(
            (trainers[p] for p in parents_of(process.pid) if p in trainers), None
        )
    return owners


def process_entries(
    processes: Iterable[GpuProcess], owners: Mapping[int, str | None]
) -> list[dict[str, Any]]:
    return [
        {
            "pid": p.pid,
            "used_memory_mb": p.used_memory_mb,
            "task_id": owners.get(p.pid),
            "foreign": owners.get(p.pid) is None,
        }
        for p in processes
    ]
