"""GPU inventory: the static backend, the NVML backend against tests/fakes/fake_nvml.py (and
the real pynvml where it can run), and the status a GPU shows."""

from __future__ import annotations

import logging

import pynvml
import pytest

from dpd.config import GpusConfig, StaticGpu
from dpd.supervisor.gpus import (
    GpuInfo,
    GpuProcess,
    NvmlInventory,
    StaticInventory,
    gpu_status,
    open_inventory,
)
from tests.fakes import fake_nvml
from tests.fakes.fake_nvml import FakeGpu, FakeMachine

NVML_FUNCTIONS = [
    "nvmlInit",
    "nvmlShutdown",
    "nvmlDeviceGetCount",
    "nvmlDeviceGetHandleByIndex",
    "nvmlDeviceGetName",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetTemperature",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetEnforcedPowerLimit",
    "nvmlDeviceGetComputeRunningProcesses",
]


def machine(*gpus: FakeGpu) -> FakeMachine:
    return FakeMachine(gpus=list(gpus) or [FakeGpu(), FakeGpu()])


def inventory(m: FakeMachine) -> NvmlInventory:
    inv = NvmlInventory(fake_nvml.module(m))
    inv.start()
    return inv


def info(gpu_id: int = 0, processes: tuple[GpuProcess, ...] = (), error: str | None = None):
    return GpuInfo(gpu_id, "g", 100, 0, 100, 0, 0, 40, 10, 100, processes, error)


# ------------------------------------------------------------------ the fake is faithful


def test_fake_has_pynvml_names_constants_and_error_classes() -> None:
    fake = fake_nvml.module(FakeMachine())
    for name in NVML_FUNCTIONS:
        assert callable(getattr(pynvml, name)), name
        assert callable(getattr(fake, name)), name
    for name in dir(fake_nvml):
        if name.startswith("NVML_") and name != "NVML_TEMPERATURE_GPU":
            assert getattr(pynvml, name) == getattr(fake_nvml, name), name
    assert fake.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU
    for code, cls in fake_nvml.ERROR_CLASSES.items():
        real = getattr(pynvml, cls.__name__)  # same class name for the same code
        assert real().value == code == cls().value
        assert type(pynvml.NVMLError(code)).__name__ == type(fake_nvml.NVMLError(code)).__name__
    for code, text in fake_nvml._ERROR_TEXT.items():
        assert str(pynvml.NVMLError(code)) == text == str(fake_nvml.NVMLError(code))


def test_real_pynvml_without_a_driver_falls_back_to_static() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVML")
    config = GpusConfig(backend="auto", static=[StaticGpu("Sim", 8000)])
    chosen = open_inventory(config)
    assert chosen.backend == "static"
    assert [g.name for g in chosen.snapshot()] == ["Sim"]
    real = NvmlInventory(pynvml)
    assert real.snapshot() == []  # no GPU was ever seen; nothing raised
    real.close()


# --------------------------------------------------------------------------- static


def test_static_inventory_lists_configured_gpus_and_reported_usage() -> None:
    inv = StaticInventory([StaticGpu("A", 24576), StaticGpu("B", 8192)])
    first, second = inv.snapshot()
    assert (first.gpu_id, first.name, first.memory_total, first.memory_free) == (
        0,
        "A",
        24576,
        24576,
    )
    assert (second.gpu_id, second.memory_total) == (1, 8192)
    inv.set_usage(0, 8192, utilization=75)
    first = inv.snapshot()[0]
    assert (first.memory_used, first.memory_free, first.memory_utilization) == (8192, 16384, 33)
    assert first.utilization_gpu == 75 and first.error is None
    inv.set_usage(0, 0)
    assert inv.snapshot()[0].memory_free == 24576
    with pytest.raises(ValueError):
        inv.set_usage(2, 1)


def test_open_inventory_static_and_empty_static() -> None:
    assert open_inventory(GpusConfig(backend="static")).snapshot() == []
    two = open_inventory(GpusConfig(backend="static", static=[StaticGpu(), StaticGpu()]))
    assert [g.gpu_id for g in two.snapshot()] == [0, 1]


# ----------------------------------------------------------------------------- NVML


def test_nvml_snapshot_converts_units() -> None:
    m = machine(
        FakeGpu(
            name="NVIDIA H100",
            memory_total_mb=81559,
            memory_used_mb=20480,
            utilization_gpu=98,
            temperature=71,
            power_mw=419_600,
            power_limit_mw=700_000,
            processes=[(4242, 20000), (4243, None)],
        )
    )
    (gpu,) = inventory(m).snapshot()
    assert gpu == GpuInfo(
        gpu_id=0,
        name="NVIDIA H100",
        memory_total=81559,
        memory_used=20480,
        memory_free=81559 - 20480,
        memory_utilization=25,
        utilization_gpu=98,
        temperature=71,
        power_usage=420,
        power_limit=700,
        processes=(GpuProcess(4242, 20000), GpuProcess(4243, None)),
        error=None,
    )


def test_unsupported_field_is_none_and_the_gpu_stays_usable() -> None:
    m = machine(FakeGpu(unsupported={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetTemperature"}))
    (gpu,) = inventory(m).snapshot()
    assert gpu.power_usage is None and gpu.temperature is None
    assert gpu.power_limit == 450 and gpu.error is None
    assert gpu_status(gpu, {}, set()) == "available"


def test_gpu_lost_mid_run_is_unknown_alone_and_recovers_after_reinit() -> None:
    m = machine()
    inv = inventory(m)
    assert [g.error for g in inv.snapshot()] == [None, None]
    m.gpus[1].lost = True
    zero, one = inv.snapshot()
    assert zero.error is None and gpu_status(zero, {}, set()) == "available"
    assert one.error and "GPU is lost" in one.error
    assert gpu_status(one, {}, set()) == "unknown"
    assert (one.name, one.memory_total, one.memory_free) == (m.gpus[1].name, 24564, 0)
    assert m.refcount == 0  # shut down, to initialise again on the next poll
    m.gpus[1].lost = False
    assert [g.error for g in inv.snapshot()] == [None, None]
    assert m.init_calls == 2 and m.refcount == 1


def test_gpu_lost_at_start_does_not_hide_the_others() -> None:
    m = machine()
    m.gpus[0].lost = True
    inv = inventory(m)
    zero, one = inv.snapshot()
    assert zero.error and one.error is None


def test_driver_gone_mid_run_every_gpu_unknown_then_back() -> None:
    m = machine()
    inv = inventory(m)
    inv.snapshot()
    m.driver_loaded = False
    assert all(g.error for g in inv.snapshot())
    again = inv.snapshot()  # re-init fails: still the same GPUs, unknown, nothing raised
    assert [g.gpu_id for g in again] == [0, 1]
    assert all("Driver Not Loaded" in (g.error or "") for g in again)
    m.driver_loaded = True
    assert [g.error for g in inv.snapshot()] == [None, None]


def test_gpu_vanishing_from_the_count_stays_listed_as_unknown() -> None:
    m = machine(FakeGpu(), FakeGpu(), FakeGpu())
    inv = inventory(m)
    inv.snapshot()
    m.gpus[2].lost = True
    inv.snapshot()
    del m.gpus[2]  # after the re-init NVML counts two
    snapshot = inv.snapshot()
    assert [g.gpu_id for g in snapshot] == [0, 1, 2]
    assert snapshot[2].error == "GPU no longer visible to NVML"


def test_driver_gone_at_init_auto_chooses_static_nvml_keeps_retrying() -> None:
    m = machine()
    m.driver_loaded = False
    static = [StaticGpu("Sim", 1000)]
    auto = open_inventory(GpusConfig(backend="auto", static=static), nvml=fake_nvml.module(m))
    assert auto.backend == "static"
    forced = open_inventory(GpusConfig(backend="nvml", static=static), nvml=fake_nvml.module(m))
    assert forced.backend == "nvml"
    assert forced.snapshot() == []
    m.driver_loaded = True
    assert [g.error for g in forced.snapshot()] == [None, None]


def test_auto_without_gpus_is_static_with_gpus_is_nvml() -> None:
    empty = FakeMachine(gpus=[])
    chosen = open_inventory(GpusConfig(backend="auto"), nvml=fake_nvml.module(empty))
    assert chosen.backend == "static" and empty.refcount == 0
    m = machine()
    chosen = open_inventory(GpusConfig(backend="auto"), nvml=fake_nvml.module(m))
    assert chosen.backend == "nvml" and len(chosen.snapshot()) == 2
    chosen.close()
    assert m.refcount == 0


def test_a_failing_optional_query_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    m = machine(FakeGpu())
    fake = fake_nvml.module(m)

    def broken(handle: object) -> int:
        raise fake_nvml.NVMLError(fake_nvml.NVML_ERROR_UNKNOWN)

    fake.nvmlDeviceGetPowerUsage = broken
    inv = NvmlInventory(fake)
    inv.start()
    with caplog.at_level(logging.DEBUG, "dpd.gpus"):
        (gpu,) = inv.snapshot()
    assert gpu.error is None and gpu.power_usage is None
    assert "Unknown Error" in caplog.text


# ---------------------------------------------------------------------------- status


def test_gpu_status_rules() -> None:
    foreign = (GpuProcess(999, 100),)
    assert gpu_status(info(), {}, set()) == "available"
    assert gpu_status(info(processes=foreign), {}, set()) == "busy"
    assert gpu_status(info(processes=foreign), {}, {999}) == "available"
    assert gpu_status(info(), {0: ("t1", "training")}, set()) == "training"
    assert gpu_status(info(processes=foreign), {0: ("p1", "preprocessing")}, set()) == (
        "preprocessing"
    )
    assert gpu_status(info(error="lost"), {0: ("t1", "training")}, set()) == "unknown"


def test_foreign_process_on_nvml_gpu_makes_it_busy() -> None:
    m = machine()
    inv = inventory(m)
    m.gpus[1].processes = [(31337, 4000)]
    zero, one = inv.snapshot()
    assert gpu_status(zero, {}, set()) == "available"
    assert gpu_status(one, {}, set()) == "busy"
    assert gpu_status(one, {}, {31337}) == "available"
