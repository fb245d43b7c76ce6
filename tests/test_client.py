"""The Python SDK against a running ``dpd serve``: every route, typed errors carrying the
envelope, and the SSE log stream followed across dropped connections."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dpd.client import (
    ConflictError,
    DpdClient,
    NotFoundError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
)
from dpd.simulation import simulation_paths
from tests.daemon_harness import DaemonProcess, free_port
from tests.jobfiles import job_document, make_data_root
from tests.ports import master_port_range
from tests.waiting import wait_for

KEY = "sdk-test-bootstrap-key"
TERMINAL = ("completed", "failed", "stopped")


def start_daemon(root: Path) -> DaemonProcess:
    deepspeed, diffusion_pipe_dir = simulation_paths()
    base_port = master_port_range(20)[0]
    daemon = DaemonProcess(
        root,
        {
            "auth": {"enabled": True, "bootstrap_key": KEY},
            "gpus": {
                "backend": "static",
                "static": [{"name": "Simulated GPU", "memory_mb": 24576}],
            },
            "trainer": {
                "deepspeed": deepspeed,
                "diffusion_pipe_dir": str(diffusion_pipe_dir),
                "env": {"DPD_SIM_STEP_SECONDS": "0.05", "DPD_SIM_CACHE_SECONDS": "0.05"},
                "stop_timeout": 5,
                "master_port_range": [base_port, base_port + 19],
            },
        },
    )
    make_data_root(daemon.data)
    return daemon.start()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    running = start_daemon(tmp_path_factory.mktemp("sdk"))
    yield running
    running.stop(signal.SIGTERM)


@pytest.fixture
def client(daemon: DaemonProcess) -> DpdClient:
    return DpdClient(daemon.url, api_key=KEY, timeout=10)


def finished(client: DpdClient, task_id: str) -> str:
    status = wait_for(
        lambda: (s := client.get_training(task_id)["data"]["status"]) in TERMINAL and s,
        timeout=20,
        interval=0.1,
    )
    return str(status)


def test_the_document_example_end_to_end(client: DpdClient, daemon: DaemonProcess) -> None:
    gpus = client.get_available_gpus()
    assert gpus["code"] == 200 and len(gpus["data"]["available_gpus"]) == 1
    doc = job_document(daemon.data)
    task = client.start_training(
        gpu_id=0, model_type=doc["model_type"], config=doc["config"], dataset=doc["dataset"],
        task_id="sdk-1", queue=True,
    )  # fmt: skip
    assert task["code"] == 201 and task["data"]["task_id"] == "sdk-1"
    assert finished(client, "sdk-1") == "completed"
    progress = client.get_training_progress("sdk-1")["data"]
    assert progress["progress"]["overall_progress"] == 100.0
    logs = client.get_logs("sdk-1", tail=5)["data"]
    assert len(logs["logs"]) == 5 and logs["total_lines"] > 5
    assert "TRAINING COMPLETE!" in [line["message"] for line in logs["logs"]]
    found = client.search_logs("sdk-1", "complete", ignore_case=True)["data"]
    assert found["total_matches"] >= 1 and found["results"][0]["line_number"] > 0
    assert client.get_metrics("sdk-1", metric="loss", type="step")["data"]["data"]
    listed = client.list_trainings(status="completed")["data"]["tasks"]
    assert "sdk-1" in [t["task_id"] for t in listed]
    assert client.gpu_status()["data"]["gpus"][0]["gpu_id"] == 0
    assert client.system_overview()["data"]["tasks"]["total"] >= 1
    again = client.submit(dict(doc, task_id="sdk-1"))
    assert again["code"] == 200  # the same task_id never trains twice


def test_errors_are_typed_and_carry_the_envelope(client: DpdClient, daemon: DaemonProcess) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.get_training("no-such-task")
    assert missing.value.code == 404 and missing.value.data == {"task_id": "no-such-task"}
    with pytest.raises(ValidationError) as invalid:
        client.start_training(gpu_id=0, model_type="sdxl", config={"epochs": -1})
    assert invalid.value.code == 422 and invalid.value.errors
    with pytest.raises(UnauthorizedError):
        DpdClient(daemon.url, api_key="wrong").list_trainings()
    with pytest.raises(UnavailableError):
        DpdClient(f"http://127.0.0.1:{free_port()}", api_key=KEY).list_trainings()
    with pytest.raises(ConflictError):
        client.stop_training("sdk-1")  # already completed
    assert DpdClient(daemon.url + "/api/v1/", KEY).list_trainings()["code"] == 200


class CuttingProxy:
    """A TCP proxy to the daemon that cuts every connection after ``budget`` bytes of
    answer: a flaky network for the SSE reconnect logic."""

    def __init__(self, target_port: int, budget: int) -> None:
        self.target_port, self.budget = target_port, budget
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.budget),
                             daemon=True).start()  # fmt: skip

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while budget is None or sent < budget:
                data = source.recv(min(4096, budget - sent) if budget else 4096)
                if not data:
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for end in (source, sink):  # shutdown wakes the other direction's blocked recv
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_stream_logs_reconnects_and_misses_nothing(
    client: DpdClient, daemon: DaemonProcess
) -> None:
    doc = job_document(daemon.data, task_id="sdk-stream", queue=True)
    client.submit(doc)
    assert finished(client, "sdk-stream") == "completed"
    proxy = CuttingProxy(daemon.port, budget=3000)
    try:
        flaky = DpdClient(f"http://127.0.0.1:{proxy.port}", KEY)
        events = list(flaky.stream_logs("sdk-stream", last_event_id="0", retries=100))
    finally:
        proxy.close()
    assert proxy.connections > 3
    direct = list(client.stream_logs("sdk-stream", last_event_id="0"))
    assert [(e.kind, e.id, e.data) for e in events] == [(e.kind, e.id, e.data) for e in direct]
    lines = [e.data["message"] for e in events if e.kind == "log"]
    total = client.get_logs("sdk-stream", tail=10_000)["data"]["logs"]
    assert lines == [entry["message"] for entry in total]
    assert events[-1].kind == "status" and events[-1].data["data"]["status"] == "completed"
