"""GPU inventory: what each GPU of this machine is and holds right now (issue 3, item 1).

Two backends behind one small protocol, ``GpuInventory``:

- ``NvmlInventory`` asks NVML (the ``pynvml`` module of nvidia-ml-py). It never raises out of
  ``snapshot()``: a query that is not supported leaves that field ``None``; a GPU that fell
  off the bus, a driver that went away or any query failing on the GPU's memory marks that
  GPU with ``error`` (status ``unknown``) and NVML is initialised again on the next poll.
- ``StaticInventory`` lists the ``[[gpus.static]]`` entries of the configuration, for machines
  without NVIDIA GPUs, the demo and tests; memory use is whatever dpd reports with
  ``set_usage``.

``snapshot()`` blocks (NVML calls can take milliseconds, or hang on a sick GPU): callers run it
in a thread (``GpuMonitor``). Units follow the API document: memory in MB (MiB, as
nvidia-smi prints it), power in watts, temperature in °C, utilisation in percent.
``memory_utilization`` is memory used / total in percent, as the API document's figures are
(NVML's own "memory utilisation" is bus activity, which tells an operator nothing about room).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final, Protocol, TypeVar

from dpd.config import GpusConfig, StaticGpu
from dpd.errors import ConfigError

log = logging.getLogger("dpd.gpus")

MIB: Final = 1024 * 1024

# GPU statuses, as the REST API shows them (api.md §2.1, plus "busy" for a foreign process).
AVAILABLE: Final = "available"
TRAINING: Final = "training"
PREPROCESSING: Final = "preprocessing"
BUSY: Final = "busy"
UNKNOWN: Final = "unknown"
STATUSES: Final = (AVAILABLE, TRAINING, PREPROCESSING, BUSY, UNKNOWN)

# NVML error codes after which the library state is not to be trusted: shut down and
# initialise again on the next poll (a GPU may come back after a reset, a driver reload).
_REINIT_ERROR_NAMES: Final = (
    "NVML_ERROR_UNINITIALIZED",
    "NVML_ERROR_DRIVER_NOT_LOADED",
    "NVML_ERROR_LIBRARY_NOT_FOUND",
    "NVML_ERROR_GPU_IS_LOST",
    "NVML_ERROR_RESET_REQUIRED",
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
)
# Codes that mean "this value is not available here", not "this GPU is in trouble".
_FIELD_ERROR_NAMES: Final = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_NO_DATA",
    "NVML_ERROR_NOT_READY",
)


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_mb: int | None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU at one instant; field names as api.md §2.1. ``error`` set means unknown."""

    gpu_id: int
    name: str
    memory_total: int
    memory_used: int
    memory_free: int
    memory_utilization: int | None
    utilization_gpu: int | None
    temperature: int | None
    power_usage: int | None
    power_limit: int | None
    processes: tuple[GpuProcess, ...] = ()
    error: str | None = None


class GpuInventory(Protocol):
    backend: str

    def snapshot(self) -> list[GpuInfo]:
        """Every GPU now; blocking, called from a thread; never raises for a GPU problem."""
        ...

    def close(self) -> None: ...


def gpu_status(info: GpuInfo, assigned: Mapping[int, tuple[str, str]], own_pids: set[int]) -> str:
    """The status the API shows for one GPU.

    ``assigned`` maps gpu_id -> (task_id, "training" | "preprocessing") for dpd's own jobs.
    A GPU that is not assigned but runs a compute process dpd does not own is ``busy``: dpd
    never schedules onto it (someone else's job, or a leftover of ours that still holds memory).
    """
    if info.error is not None:
        return UNKNOWN
    if info.gpu_id in assigned:
        return assigned[info.gpu_id][1]
    if any(p.pid not in own_pids for p in info.processes):
        return BUSY
    return AVAILABLE


def unknown_gpu(gpu_id: int, name: str, memory_total: int, error: str) -> GpuInfo:
    """A GPU we cannot query: no free memory, so nothing is ever planned onto it."""
    return GpuInfo(gpu_id, name, memory_total, 0, 0, None, None, None, None, None, (), error)


def percent(part: int, whole: int) -> int | None:
    return round(100 * part / whole) if whole > 0 else None


# ------------------------------------------------------------------------ static backend


class StaticInventory:
    """GPUs from ``[[gpus.static]]``, ids 0..n-1; memory used is what dpd says it uses."""

    backend = "static"

    def __init__(self, gpus: Sequence[StaticGpu]) -> None:
        self._gpus = list(gpus)
        self._lock = threading.Lock()  # set_usage runs on the loop, snapshot in a thread
        self._usage: dict[int, tuple[int, int | None]] = {}

    def set_usage(self, gpu_id: int, memory_mb: int, utilization: int | None = None) -> None:
        """Report what a (simulated) job uses on a GPU; 0 frees it."""
        if not 0 <= gpu_id < len(self._gpus):
            raise ValueError(f"no static GPU {gpu_id}; there are {len(self._gpus)}")
        total = self._gpus[gpu_id].memory_mb
        with self._lock:
            self._usage[gpu_id] = (max(0, min(memory_mb, total)), utilization)

    def snapshot(self) -> list[GpuInfo]:
        with self._lock:
            usage = dict(self._usage)
        return [self._info(i, gpu, *usage.get(i, (0, None))) for i, gpu in enumerate(self._gpus)]

    @staticmethod
    def _info(gpu_id: int, gpu: StaticGpu, used: int, utilization: int | None) -> GpuInfo:
        total = gpu.memory_mb
        return GpuInfo(
            gpu_id=gpu_id,
            name=gpu.name,
            memory_total=total,
            memory_used=used,
            memory_free=total - used,
            memory_utilization=percent(used, total),
            # an idle simulated GPU is known to be idle; a busy one only if dpd says how busy
            utilization_gpu=utilization if utilization is not None else (0 if not used else None),
            temperature=None,
            power_usage=None,
            power_limit=None,
        )

    def close(self) -> None:
        pass


# -------------------------------------------------------------------------- NVML backend

T = TypeVar("T")
CLOSE_LOCK_TIMEOUT: Final = 1.0  # seconds close() waits for a poll that may hang in NVML


class _GpuFailed(Exception):
    """A query failed in a way that makes the whole GPU unknown."""

    def __init__(self, text: str, reinit: bool) -> None:
        super().__init__(text)
        self.reinit = reinit  # the library state is suspect: initialise again next poll


class NvmlInventory:
    """GPUs through NVML. ``nvml`` is the pynvml module (or a faithful stand-in in tests).

    Indices are NVML's, which are CUDA's under ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (DESIGN §6).
    GPUs seen once stay listed: one that disappears after a re-initialisation is reported
    ``unknown`` rather than silently dropped, so a job pinned to it is not planned elsewhere.
    One GPU failing never hides the others: each GPU's handle and queries fail alone.
    """

    backend = "nvml"

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml: Any = nvml if nvml is not None else importlib.import_module("pynvml")
        self.error_class: type[Exception] = self._nvml.NVMLError
        self._codes = _error_codes(self._nvml)
        self._handles: list[Any] | None = None  # per index: a handle or a _GpuFailed
        self._known: dict[int, tuple[str, int]] = {}  # gpu_id -> (name, memory_total MB)
        self._lock = threading.Lock()

    def start(self) -> int:
        """Initialise NVML and find the GPUs; raises ``error_class`` if NVML cannot start."""
        with self._lock:
            return self._start()

    def _start(self) -> int:
        self._nvml.nvmlInit()
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self.error_class:
            with contextlib.suppress(self.error_class):
                self._nvml.nvmlShutdown()
            raise
        self._handles = [self._handle(i) for i in range(count)]
        return count

    def _handle(self, index: int) -> Any:
        try:
            return self._nvml.nvmlDeviceGetHandleByIndex(index)
        except self.error_class as err:
            return _GpuFailed(f"nvmlDeviceGetHandleByIndex: {err}", reinit=True)

    def snapshot(self) -> list[GpuInfo]:
        with self._lock:
            if self._handles is None:
                try:
                    self._start()
                except self.error_class as err:
                    return self._all_unknown(f"NVML unavailable: {err}")
            assert self._handles is not None
            results = [self._query(i, handle) for i, handle in enumerate(self._handles)]
            infos = [info for info, _ in results]
            seen = {info.gpu_id for info in infos}
            infos += [
                unknown_gpu(gpu_id, name, total, "GPU no longer visible to NVML")
                for gpu_id, (name, total) in sorted(self._known.items())
                if gpu_id not in seen
            ]
            if any(reinit for _, reinit in results):
                self._shutdown()  # initialise again next poll: the GPU may be back
            return infos

    def close(self) -> None:
        # A poll hung inside NVML holds the lock; shutting down under it would hang too.
        if self._lock.acquire(timeout=CLOSE_LOCK_TIMEOUT):
            try:
                self._shutdown()
            finally:
                self._lock.release()

    def _shutdown(self) -> None:
        if self._handles is None:
            return
        self._handles = None
        try:
            self._nvml.nvmlShutdown()
        except self.error_class as err:
            log.debug("nvmlShutdown failed: %s", err)

    def _all_unknown(self, error: str) -> list[GpuInfo]:
        return [
            unknown_gpu(gpu_id, name, total, error)
            for gpu_id, (name, total) in sorted(self._known.items())
        ]

    def _query(self, gpu_id: int, handle: Any) -> tuple[GpuInfo, bool]:
        """The GPU's info, and whether NVML should be initialised again."""
        name, total = self._known.get(gpu_id, (f"GPU {gpu_id}", 0))
        try:
            if isinstance(handle, _GpuFailed):
                raise handle
            name = self._field(self._nvml.nvmlDeviceGetName, handle) or name
            memory = self._essential(self._nvml.nvmlDeviceGetMemoryInfo, handle)
            total, used = int(memory.total) // MIB, int(memory.used) // MIB
            self._known[gpu_id] = (name, total)
            return self._info(gpu_id, name, total, used, int(memory.free) // MIB, handle), False
        except _GpuFailed as failed:
            self._known[gpu_id] = (name, total)
            return unknown_gpu(gpu_id, name, total, str(failed)), failed.reinit

    def _info(
        self, gpu_id: int, name: str, total: int, used: int, free: int, handle: Any
    ) -> GpuInfo:
        nvml = self._nvml
        rates = self._field(nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = self._field(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        return GpuInfo(
            gpu_id=gpu_id,
            name=name,
            memory_total=total,
            memory_used=used,
            memory_free=max(0, free),
            memory_utilization=percent(used, total),
            utilization_gpu=int(rates.gpu) if rates is not None else None,
            temperature=int(temperature) if temperature is not None else None,
            power_usage=_watts(self._field(nvml.nvmlDeviceGetPowerUsage, handle)),
            power_limit=_watts(self._field(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)),
            processes=self._processes(handle),
        )

    def _processes(self, handle: Any) -> tuple[GpuProcess, ...]:
        found = self._field(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        return tuple(
            GpuProcess(
                int(p.pid), int(p.usedGpuMemory) // MIB if p.usedGpuMemory is not None else None
            )
            for p in found
        )

    def _essential(self, query: Callable[..., T], *args: Any) -> T:
        """A query the GPU cannot be scheduled without: any failure makes it unknown."""
        try:
            return query(*args)
        except self.error_class as err:
            reinit = getattr(err, "value", None) in self._codes.reinit
            raise _GpuFailed(f"{query.__name__}: {err}", reinit) from err

    def _field(self, query: Callable[..., T], *args: Any) -> T | None:
        """An optional value: unsupported -> None; a lost GPU or driver -> the GPU fails."""
        try:
            return query(*args)
        except self.error_class as err:
            code = getattr(err, "value", None)
            if code in self._codes.reinit:
                raise _GpuFailed(f"{query.__name__}: {err}", reinit=True) from err
            if code not in self._codes.field:
                log.debug("%s failed: %s", query.__name__, err)
            return None


@dataclass(frozen=True)
class _ErrorCodes:
    reinit: frozenset[int]
    field: frozenset[int]


def _error_codes(nvml: Any) -> _ErrorCodes:
    def codes(names: Sequence[str]) -> frozenset[int]:
        return frozenset(getattr(nvml, n) for n in names if hasattr(nvml, n))

    return _ErrorCodes(codes(_REINIT_ERROR_NAMES), codes(_FIELD_ERROR_NAMES))


def _watts(milliwatts: int | None) -> int | None:
    return round(milliwatts / 1000) if milliwatts is not None else None


# ------------------------------------------------------------------------------ choice


def open_inventory(config: GpusConfig, nvml: ModuleType | None = None) -> GpuInventory:
    """The configured backend. ``auto``: NVML if it loads and sees at least one GPU, else the
    static list. An explicit ``nvml`` that cannot start still returns the NVML backend (it
    retries every poll and shows no GPUs meanwhile): the operator asked for real GPUs."""
    if config.backend == "static":
        return StaticInventory(config.static)
    try:
        inventory = NvmlInventory(nvml)
    except ImportError as err:
        if config.backend == "nvml":
            raise ConfigError(
                f"[gpus] backend = 'nvml' but pynvml cannot be imported: {err}"
            ) from err
        log.info("pynvml not importable (%s); using the static GPU list", err)
        return StaticInventory(config.static)
    try:
        count = inventory.start()
    except inventory.error_class as err:
        if config.backend == "nvml":
            log.error("NVML cannot start (%s); retrying on every poll", err)
            return inventory
        log.info("NVML unavailable (%s); using the static GPU list", err)
        return StaticInventory(config.static)
    if count == 0 and config.backend == "auto":
        inventory.close()
        log.info("NVML sees no GPU; using the static GPU list")
        return StaticInventory(config.static)
    log.info("GPU inventory: NVML, %d GPU(s)", count)
    return inventory
