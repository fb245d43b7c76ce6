"""A stand-in for the ``pynvml`` module (nvidia-ml-py) over a simulated machine.

NVML needs a driver and GPUs, which test machines lack: this is the boundary we fake. The
fake keeps pynvml's surface for what dpd calls: the same function names and argument order,
the same constants and error codes, the same exception hierarchy (``NVMLError(code)``
returns the matching ``NVMLError_<Name>`` subclass, ``err.value`` is the code), and the same
units (memory in bytes, power in milliwatts, names already decoded to ``str``). NVML
behaviour mirrored: calls before ``nvmlInit`` raise Uninitialized; init/shutdown are
reference-counted; a handle index past the count raises InvalidArgument; a GPU that fell off
the bus raises GpuIsLost on every query; a driver that is not loaded fails ``nvmlInit``.

``FakeMachine`` is the simulated hardware a test changes between polls; ``module(machine)``
builds a fresh module object bound to it, passed to ``NvmlInventory(nvml=...)``.
tests/supervisor/test_gpus.py checks this surface against the installed pynvml.
"""

from __future__ import annotations

import string
import sys
import types
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0

_ERROR_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """``NVMLError(code)`` is an instance of that code's subclass, as in pynvml."""

    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012 - pynvml's name
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value


def _define_error_classes() -> None:
    """NVML_ERROR_GPU_IS_LOST -> class NVMLError_GpuIsLost(NVMLError), pynvml's scheme."""
    module = sys.modules[__name__]
    for constant in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        suffix = string.capwords(constant.removeprefix("NVML_ERROR_"), "_").replace("_", "")
        code = getattr(module, constant)

        def new(cls: type[NVMLError], *args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(cls, _code)

        cls = type(f"NVMLError_{suffix}", (NVMLError,), {"__new__": new})
        cls.__module__ = __name__
        setattr(module, cls.__name__, cls)
        NVMLError._valClassMapping[code] = cls


_define_error_classes()
ERROR_CLASSES = dict(NVMLError._valClassMapping)


@dataclass
class FakeGpu:
    """One simulated GPU; tests change its fields between polls."""

    name: str = "NVIDIA GeForce RTX 4090"
    memory_total_mb: int = 24564
    memory_used_mb: int = 0
    utilization_gpu: int = 0
    utilization_memory: int = 0
    temperature: int = 40
    power_mw: int = 30_500
    power_limit_mw: int = 450_000
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, used MB)
    lost: bool = False  # fell off the bus: every query raises GpuIsLost
    unsupported: set[str] = field(default_factory=set)  # function names -> NotSupported


@dataclass
class FakeMachine:
    gpus: list[FakeGpu] = field(default_factory=list)
    driver_loaded: bool = True
    library_present: bool = True
    refcount: int = 0
    init_calls: int = 0
    shutdown_calls: int = 0


@dataclass(frozen=True)
class _Handle:
    index: int


class _Struct:
    """pynvml returns ctypes structures or "friendly objects": plain attribute access."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def module(machine: FakeMachine) -> types.ModuleType:
    """A fresh module with pynvml's names, its functions acting on ``machine``."""
    fake = types.ModuleType("fake_pynvml")
    this = sys.modules[__name__]
    for name in dir(this):
        if name.startswith(("NVML_", "NVMLError")):
            setattr(fake, name, getattr(this, name))
    for name, function in _functions(machine).items():
        function.__name__ = name
        setattr(fake, name, function)
    return fake


def _functions(machine: FakeMachine) -> dict[str, Any]:
    def check_init() -> None:
        if machine.refcount == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def gpu(handle: _Handle, function: str) -> FakeGpu:
        check_init()
        device = machine.gpus[handle.index]
        if device.lost or not machine.driver_loaded:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if function in device.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return device

    def nvmlInit() -> None:
        machine.init_calls += 1
        if not machine.library_present:
            raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
        if not machine.driver_loaded:
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
        machine.refcount += 1

    def nvmlShutdown() -> None:
        machine.shutdown_calls += 1
        check_init()
        machine.refcount -= 1

    def nvmlDeviceGetCount() -> int:
        check_init()
        return len(machine.gpus)

    def nvmlDeviceGetHandleByIndex(index: int) -> _Handle:
        check_init()
        if not 0 <= index < len(machine.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        handle = _Handle(index)
        gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetName(handle: _Handle) -> str:
        return gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetMemoryInfo(handle: _Handle, version: int | None = None) -> _Struct:
        device = gpu(handle, "nvmlDeviceGetMemoryInfo")
        total, used = device.memory_total_mb * MIB, device.memory_used_mb * MIB
        return _Struct(total=total, free=total - used, used=used)

    def nvmlDeviceGetUtilizationRates(handle: _Handle) -> _Struct:
        device = gpu(handle, "nvmlDeviceGetUtilizationRates")
        return _Struct(gpu=device.utilization_gpu, memory=device.utilization_memory)

    def nvmlDeviceGetTemperature(handle: _Handle, sensor: int) -> int:
        device = gpu(handle, "nvmlDeviceGetTemperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return device.temperature

    def nvmlDeviceGetPowerUsage(handle: _Handle) -> int:
        return gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(handle: _Handle) -> int:
        return gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetComputeRunningProcesses(handle: _Handle) -> list[_Struct]:
        device = gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [
            _Struct(
                pid=pid,
                usedGpuMemory=None if used is None else used * MIB,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
            for pid, used in device.processes
        ]

    return {name: value for name, value in locals().items() if name.startswith("nvml")}
