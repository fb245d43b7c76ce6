"""Jobs trained end to end by a real daemon, a real shim and the stand-in trainer.

Every test runs ``dpd serve`` as a subprocess with the static GPU backend and the
simulation from dpd.simulation as diffusion-pipe, then checks what was recorded: state.json,
events.jsonl, metrics.jsonl, the run directory and the process table.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from dpd.simulation import simulation_paths
from tests.daemon_harness import DaemonProcess, job_processes, wait_for
from tests.jobfiles import job_document, make_data_root
from tests.jsonl import complete_records
from tests.ports import master_port_range

TERMINAL = ("completed", "failed", "stopped")


def make_daemon(
    root: Path, gpus: int = 1, step_seconds: float = 0.05, **sim_env: str
) -> DaemonProcess:
    deepspeed, diffusion_pipe_dir = simulation_paths()
    env = {"DPD_SIM_STEP_SECONDS": str(step_seconds), "DPD_SIM_CACHE_SECONDS": "0.1"}
    env.update(sim_env)
    base_port = free_base_port()
    daemon = DaemonProcess(
        root,
        {
            "gpus": {
                "backend": "static",
                "static": [{"name": f"Simulated GPU {i}", "memory_mb": 24576} for i in range(gpus)],
            },
            "trainer": {
                "deepspeed": deepspeed,
                "diffusion_pipe_dir": str(diffusion_pipe_dir),
                "env": env,
                "stop_timeout": 5,
                "master_port_range": [base_port, base_port + 40],
            },
        },
    )
    make_data_root(daemon.data, images=4)
    return daemon


def free_base_port() -> int:
    return master_port_range(41)[0]


def status(daemon: DaemonProcess, task_id: str) -> str | None:
    state = daemon.job_state(task_id)
    return state["status"] if state else None


def wait_event_status(daemon: DaemonProcess, task_id: str, final: str) -> list[str]:
    """The status event follows state.json closely (state first, then the announcement)."""
    wait_for(lambda: final in statuses(daemon, task_id))
    return statuses(daemon, task_id)


def wait_status(
    daemon: DaemonProcess, task_id: str, wanted: tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:
    wait_for(lambda: status(daemon, task_id) in wanted, timeout=timeout)
    state = daemon.job_state(task_id)
    assert state is not None
    return state


def events(daemon: DaemonProcess, task_id: str) -> list[dict[str, Any]]:
    return complete_records(daemon.spool / "jobs" / task_id / "events.jsonl")


def statuses(daemon: DaemonProcess, task_id: str) -> list[str]:
    return [e["data"]["status"] for e in events(daemon, task_id) if e["type"] == "status"]


def metrics(daemon: DaemonProcess, task_id: str) -> list[dict[str, Any]]:
    return complete_records(daemon.spool / "jobs" / task_id / "metrics.jsonl")


def test_full_lifecycle_of_a_job(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("cats.json", job_document(daemon.data, task_id="cats"))
    state = wait_status(daemon, "cats", TERMINAL)
    assert state["status"] == "completed", state.get("error")
    assert wait_event_status(daemon, "cats", "completed") == ["queued", "running", "completed"]
    seqs = [e["seq"] for e in events(daemon, "cats")]
    assert seqs == list(range(1, len(seqs) + 1))
    # 4 images x 2 repeats, batch 1 -> 8 steps per epoch, 2 epochs
    steps = [m for m in metrics(daemon, "cats") if m["type"] == "step" and m["metric"] == "loss"]
    assert [m["step"] for m in steps] == list(range(1, 17))
    assert state["progress"]["current_step"] == 16
    assert state["progress"]["total_steps"] == 16
    assert state["metrics"]["best_loss"] is not None
    assert state["last_model"] == "epoch2"
    run_dir = Path(state["run_dir"])
    assert (run_dir / "epoch1").is_dir() and (run_dir / "epoch2").is_dir()
    assert state["last_checkpoint"] and (run_dir / state["last_checkpoint"]).is_dir()
    log = (daemon.spool / "jobs" / "cats" / "train.log").read_text()
    assert "TRAINING COMPLETE!" in log
    assert job_processes("cats") == []


def test_two_jobs_run_at_once_on_two_gpus_with_their_own_ports(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, gpus=2, step_seconds=0.2)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("a.json", job_document(daemon.data, task_id="a"))
    daemon.drop("b.json", job_document(daemon.data, task_id="b"))
    a = wait_status(daemon, "a", ("running",))
    b = wait_status(daemon, "b", ("running",))
    assert {a["gpu_id"], b["gpu_id"]} == {0, 1}
    assert a["master_port"] != b["master_port"]
    command_lines = []
    for task_id in ("a", "b"):
        wait_for(lambda t=task_id: job_processes(t))
        for pid in job_processes(task_id):
            with contextlib.suppress(psutil.NoSuchProcess):
                command_lines.append(" ".join(psutil.Process(pid).cmdline()))
    assert any(f"--master_port={a['master_port']}" in c for c in command_lines)
    assert any(f"--master_port={b['master_port']}" in c for c in command_lines)
    for task_id in ("a", "b"):
        assert wait_status(daemon, task_id, TERMINAL, timeout=60)["status"] == "completed"


def test_a_queued_job_starts_when_its_gpu_frees_and_priority_wins(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, gpus=1, step_seconds=0.05)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("first.json", job_document(daemon.data, task_id="first"))
    wait_status(daemon, "first", ("running",))
    daemon.drop("low.json", job_document(daemon.data, task_id="low"))
    daemon.drop("high.json", job_document(daemon.data, task_id="high", priority=5))
    wait_for(lambda: status(daemon, "high") == "queued" and status(daemon, "low") == "queued")
    first = wait_status(daemon, "first", TERMINAL)
    high = wait_status(daemon, "high", ("running", *TERMINAL))
    assert status(daemon, "low") == "queued"
    ended = first["ended_at"]
    assert high["started_at"] >= ended
    wait_status(daemon, "high", TERMINAL)
    assert wait_status(daemon, "low", TERMINAL, timeout=60)["status"] == "completed"


def test_multi_gpu_job_gets_all_its_gpus_at_once(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path, gpus=2, step_seconds=0.1)
    daemons.append(daemon)
    daemon.start()
    document = job_document(daemon.data, task_id="wide", gpu_ids=[0, 1])
    daemon.drop("wide.json", document)
    state = wait_status(daemon, "wide", ("running",))
    assert state["gpu_ids"] == [0, 1]
    wait_for(lambda: len(job_processes("wide")) >= 4)  # runner, launcher, two workers
    cmdlines = [" ".join(psutil.Process(p).cmdline()) for p in job_processes("wide")]
    assert any("--include localhost:0,1" in c or "--include=localhost:0,1" in c for c in cmdlines)
    assert wait_status(daemon, "wide", TERMINAL, timeout=60)["status"] == "completed"


def test_graceful_stop_checkpoints_and_leaves_no_process(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.2)
    daemons.append(daemon)
    daemon.start()
    daemon.drop(
        "long.json",
        job_document(
            daemon.data,
            task_id="long",
            config={**job_document(daemon.data)["config"], "epochs": 50},
        ),
    )
    wait_for(
        lambda: (
            (daemon.job_state("long") or {}).get("progress", {})
            and (daemon.job_state("long")["progress"].get("current_step") or 0) >= 2
        ),
        timeout=30,
    )
    code, body = daemon.request("POST", "/api/v1/training/stop/long")
    assert code == 200, body
    assert body["data"]["status"] == "stopped"
    assert body["data"]["last_checkpoint"], body
    assert wait_event_status(daemon, "long", "stopped")[-2:] == ["stopping", "stopped"]
    assert "Manually quitting" in (daemon.spool / "jobs" / "long" / "train.log").read_text()
    assert job_processes("long") == []


def test_forced_stop_kills_the_whole_tree_at_once(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(
        tmp_path, step_seconds=0.2, DPD_SIM_IGNORE_SIGTERM="1", DPD_SIM_GRANDCHILD="1"
    )
    daemons.append(daemon)
    daemon.start()
    daemon.drop(
        "f.json",
        job_document(
            daemon.data, task_id="f", config={**job_document(daemon.data)["config"], "epochs": 50}
        ),
    )
    wait_status(daemon, "f", ("running",))
    wait_for(lambda: len(job_processes("f")) >= 3)
    started = time.monotonic()
    code, body = daemon.request("POST", "/api/v1/training/stop/f?force=true")
    assert code == 200 and body["data"]["status"] == "stopped"
    assert time.monotonic() - started < 10
    assert job_processes("f") == []


def test_cuda_oom_fails_the_job_with_its_cause(tmp_path: Path, daemons: list) -> None:
    daemon = make_daemon(tmp_path, DPD_SIM_FAIL="oom:3")
    daemons.append(daemon)
    daemon.start()
    daemon.drop("oom.json", job_document(daemon.data, task_id="oom"))
    state = wait_status(daemon, "oom", TERMINAL)
    assert state["status"] == "failed"
    assert state["error"]["cause"] == "cuda_oom"
    assert "out of memory" in state["error"]["reason"].lower()
    assert state["error"]["exit_code"] == 1
    assert job_processes("oom") == []


@pytest.mark.crash
def test_kill_9_of_the_daemon_mid_training_loses_and_repeats_nothing(
    tmp_path: Path, daemons: list
) -> None:
    # 16 steps of 0.25 s: the kill must come while the trainer still writes, after state.json
    # shows step 3, which trails the output by a read and an events.jsonl write
    daemon = make_daemon(tmp_path, step_seconds=0.25)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("k.json", job_document(daemon.data, task_id="k"))
    wait_for(
        lambda: (
            (((daemon.job_state("k") or {}).get("progress") or {}).get("current_step") or 0) >= 3
        )
    )
    trainer = job_processes("k")
    daemon.kill9()
    log = daemon.spool / "jobs" / "k" / "train.log"
    size = log.stat().st_size
    wait_for(lambda: log.stat().st_size > size, what="the trainer writing on without a daemon")
    assert set(trainer) & set(job_processes("k")), "the training died with the daemon"
    daemon.start()
    state = wait_status(daemon, "k", TERMINAL, timeout=60)
    assert state["status"] == "completed", state.get("error")
    assert wait_event_status(daemon, "k", "completed") == ["queued", "running", "completed"]
    steps = [
        m["step"] for m in metrics(daemon, "k") if m["type"] == "step" and m["metric"] == "loss"
    ]
    assert steps == list(range(1, 17))
    seqs = [e["seq"] for e in events(daemon, "k")]
    assert seqs == list(range(1, len(seqs) + 1))
    logged = [
        line for e in events(daemon, "k") if e["type"] == "log" for line in e["data"]["lines"]
    ]
    step_lines = [line for line in logged if line.startswith("steps: ")]
    assert len(step_lines) == 16
    assert daemon.log().count("started k on GPU") == 1  # never launched a second time
    assert "re-attached k" in daemon.log()


@pytest.mark.crash
def test_training_that_ends_while_the_daemon_is_dead_is_picked_up(
    tmp_path: Path, daemons: list
) -> None:
    daemon = make_daemon(tmp_path, step_seconds=0.05)
    daemons.append(daemon)
    daemon.start()
    daemon.drop("e.json", job_document(daemon.data, task_id="e"))
    wait_for(lambda: (daemon.spool / "jobs" / "e" / "shim.json").exists())
    daemon.kill9()
    wait_for(lambda: (daemon.spool / "jobs" / "e" / "exit.json").exists(), timeout=30)
    assert job_processes("e") == []
    daemon.start()
    state = wait_status(daemon, "e", TERMINAL)
    assert state["status"] == "completed"
    steps = [
        m["step"] for m in metrics(daemon, "e") if m["type"] == "step" and m["metric"] == "loss"
    ]
    assert steps == list(range(1, 17))


def test_jobs_on_one_dataset_build_its_cache_one_at_a_time(tmp_path: Path, daemons: list) -> None:
    """Scheduler rule 6 end to end: the second job waits, though a GPU is free, while the
    first builds the dataset's cache; it then starts and finds the cache built."""
    daemon = make_daemon(tmp_path, gpus=2, DPD_SIM_CACHE_SECONDS="3")
    daemons.append(daemon)
    daemon.start()
    daemon.drop("a.json", job_document(daemon.data, task_id="a"))
    wait_status(daemon, "a", ("running",))
    daemon.drop("b.json", job_document(daemon.data, task_id="b"))

    def waiting() -> dict[str, Any] | None:
        code, body = daemon.request("GET", "/api/v1/training/b")
        return body["data"] if code == 200 and body["data"].get("waiting_for") else None

    b = wait_for(waiting)  # one answer read: a reaches training 3 s into its caching
    assert b["waiting_for"] == {
        "reason": "dataset_cache",
        "cache": str(daemon.data / "datasets" / "cats" / "cache" / "sdxl"),
        "task_id": "a",
    }
    assert b["status"] == "queued"
    for task_id in ("a", "b"):
        assert wait_status(daemon, task_id, TERMINAL, timeout=60)["status"] == "completed"
    logs = {t: (daemon.spool / "jobs" / t / "train.log").read_text() for t in ("a", "b")}
    assert "Grouped metadata is not cached. Caching it now." in logs["a"]
    assert "Found grouped metadata cache. Directly loading it." in logs["b"]
    assert "Caching it now" not in logs["b"]
