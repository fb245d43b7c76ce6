"""The dpd Python SDK: every REST route as a method, and the log stream as a generator.

Method names follow api.md §12 (``get_available_gpus``, ``start_training``,
``get_training_progress``, ``get_logs``); like the document's example they return the whole
envelope (``result["data"]["available_gpus"]``). Errors raise ``dpd.client.errors``
exceptions that carry the envelope's code, message and data.

``stream_logs`` follows the SSE stream and reconnects with ``Last-Event-ID`` when the
connection drops, so the caller sees every line exactly once; it ends when the task ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

from dpd.client import transport
from dpd.client.errors import UnavailableError
from dpd.client.sse import SseEvent, SseParser

DEFAULT_URL = "http://127.0.0.1:5000"
API = "/api/v1"
Envelope = dict[str, Any]


class DpdClient:
    def __init__(
        self, base_url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix(API)  # api.md's example includes /api/v1
        self.api_key = api_key
        self.timeout = timeout

    # ------------------------------------------------------------ plumbing

    @property
    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Envelope:
        """One call: ``path`` below /api/v1, ``body`` sent as JSON."""
        headers = self.headers
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        url = transport.build_url(self.base_url, API + path, params)
        return transport.request_envelope(method, url, headers, data, self.timeout)

    def health(self) -> bool:
        """True when the daemon is up and has finished starting."""
        try:
            with transport.open_url("GET", self.base_url + "/healthz", {}, None, 5):
                return True
        except Exception:
            return False

    # ----------------------------------------------------------------- GPUs

    def get_available_gpus(
        self, task_type: str | None = None, min_memory: int | None = None
    ) -> Envelope:
        return self.request("GET", "/gpu/available", {"task_type": task_type,
                                                      "min_memory": min_memory})  # fmt: skip

    def gpu_status(self) -> Envelope:
        return self.request("GET", "/gpu/status")

    def system_overview(self) -> Envelope:
        return self.request("GET", "/system/overview")

    # ------------------------------------------------------------- training

    def start_training(
        self,
        gpu_id: int | None = None,
        model_type: str | None = None,
        config: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Envelope:
        """api.md §3.1; ``fields`` holds the rest of the document (dataset, description,
        task_id, queue, priority, gpu_ids, ...)."""
        document: dict[str, Any] = dict(fields)
        for name, value in (("gpu_id", gpu_id), ("model_type", model_type), ("config", config)):
            if value is not None:
                document[name] = value
        return self.submit(document)

    def submit(self, document: Mapping[str, Any]) -> Envelope:
        """A whole job document, as a dropped file would hold it."""
        return self.request("POST", "/training/start", body=dict(document))

    def stop_training(self, task_id: str, force: bool = False) -> Envelope:
        return self.request("POST", f"/training/stop/{task_id}", body={"force": force})

    def resume_training(self, task_id: str) -> Envelope:
        return self.request("POST", f"/training/{task_id}/resume")

    def list_trainings(
        self,
        status: str | None = None,
        gpu_id: int | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> Envelope:
        params = {"status": status, "gpu_id": gpu_id, "limit": limit, "offset": offset}
        return self.request("GET", "/training/list", params)

    def get_training(self, task_id: str) -> Envelope:
        return self.request("GET", f"/training/{task_id}")

    def get_training_progress(self, task_id: str) -> Envelope:
        return self.request("GET", f"/training/{task_id}/progress")

    def get_metrics(
        self, task_id: str, metric: str | None = None, type: str | None = None,
        limit: int | None = None,
    ) -> Envelope:  # fmt: skip
        params = {"metric": metric, "type": type, "limit": limit}
        return self.request("GET", f"/training/{task_id}/metrics", params)

    # ----------------------------------------------------------------- logs

    def get_logs(
        self, task_id: str, tail: int = 100, type: str | None = None,
        level: str | None = None, since: str | None = None,
    ) -> Envelope:  # fmt: skip
        params = {"tail": tail, "type": type, "level": level, "since": since}
        return self.request("GET", f"/training/{task_id}/logs", params)

    def search_logs(
        self, task_id: str, keyword: str, type: str | None = None, level: str | None = None,
        start_time: str | None = None, end_time: str | None = None, limit: int | None = None,
        ignore_case: bool | None = None,
    ) -> Envelope:  # fmt: skip
        params = {"keyword": keyword, "type": type, "level": level, "start_time": start_time,
                  "end_time": end_time, "limit": limit, "ignore_case": ignore_case}  # fmt: skip
        return self.request("GET", f"/training/{task_id}/logs/search", params)

    def stream_logs(
        self,
        task_id: str,
        last_event_id: str | None = None,
        kinds: str | None = None,
        level: str | None = None,
        type: str | None = None,
        retries: int = 10,
        read_timeout: float = 60.0,
    ) -> Iterator[StreamEvent]:
        """Events of the SSE stream until the task ends: log lines (``event == "message"``,
        ``data`` an api.md §5.2 line) and status/progress/metrics records. A dropped
        connection is resumed from the last id seen, up to ``retries`` times in a row."""
        params = {"kinds": kinds, "level": level, "type": type}
        url = transport.build_url(self.base_url, f"{API}/training/{task_id}/logs/stream", params)
        parser = SseParser(last_id=last_event_id)
        failures = 0
        while True:
            try:
                for sse in self._read_stream(url, parser, read_timeout):
                    failures = 0
                    if sse.event == "end":
                        return
                    yield StreamEvent.from_sse(sse)
                return  # closed by the server without "end": nothing more will come
            except UnavailableError:
                failures += 1
                if failures > retries:
                    raise
                # at once after a connection that delivered, then the server's retry hint
                time.sleep(min(5.0, (parser.retry_ms or 1000) / 1000 * (failures - 1)))

    def _read_stream(self, url: str, parser: SseParser, timeout: float) -> Iterator[SseEvent]:
        headers = dict(self.headers, Accept="text/event-stream")
        parser.reset()
        if parser.last_id is not None:
            headers["Last-Event-ID"] = parser.last_id
        response = transport.open_url("GET", url, headers, None, timeout)
        try:
            with response:
                for raw in response:
                    event = parser.feed(raw.decode("utf-8", errors="replace"))
                    if event is not None:
                        yield event
        except (OSError, ValueError, HTTPException) as err:  # dropped or timed out mid-stream
            raise UnavailableError(f"log stream interrupted: {err}") from err


@dataclass(frozen=True)
class StreamEvent:
    """One event of the log stream: ``kind`` is "log" for a line, else the event name
    (status, progress, metrics); ``id`` is what a later ``last_event_id`` resumes after."""

    kind: str
    id: str | None
    data: Any

    @classmethod
    def from_sse(cls, sse: SseEvent) -> StreamEvent:
        try:
            data = json.loads(sse.data)
        except ValueError:
            data = sse.data
        return cls("log" if sse.event == "message" else sse.event, sse.id, data)
