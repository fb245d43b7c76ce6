"""Pure arithmetic and shaping for model downloads: speed, ETA, human-readable sizes and the
view of a download record that REST, events and the CLI show (api.md §6.2).

A download record (``downloads.py`` persists it) is a plain dict::

    {"download_id", "model_id", "version", "status", "error", "created_at", "updated_at",
     "finished_at", "components": [{"name", "repo", "path", "status",
                                    "files": [{"path", "revision", "size", "etag",
                                               "dest", "done"}]}]}

Live figures (bytes of the file in flight, speed) are not persisted; they come in as a
``LiveFigures`` and are None for downloads not running in this process.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

DOWNLOADING: Final = "downloading"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
FINISHED: Final = frozenset({COMPLETED, FAILED, CANCELLED})

_UNITS: Final = ("B", "KB", "MB", "GB", "TB", "PB")


def human_size(size: float) -> str:
    """Decimal units, as the API document writes them ("335 MB", "5.2 GB")."""
    value = float(size)
    for unit in _UNITS:
        if value < 1000 or unit == _UNITS[-1]:
            break
        value /= 1000
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def human_duration(seconds: float | None) -> str | None:
    """ "2m 30s", "1h 05m", "45s"; None when unknown."""
    if seconds is None:
        return None
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


class SpeedMeter:
    """Bytes per second over a sliding window, so one stall or burst does not dominate."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total_bytes: int) -> None:
        self._samples.append((now, total_bytes))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return max(0.0, (b1 - b0) / (t1 - t0)) if t1 > t0 else 0.0

    def reset(self) -> None:
        self._samples.clear()


def eta_seconds(remaining: int, rate: float) -> float | None:
    if remaining <= 0:
        return 0.0
    return remaining / rate if rate > 0 else None


@dataclass(frozen=True)
class LiveFigures:
    """What only the running transfer knows."""

    current: tuple[str, str] | None = None  # (component name, repo path) in flight
    current_bytes: int = 0  # of that file, on disk
    speed_bps: float = 0.0


def component_bytes(component: dict[str, Any], live: LiveFigures | None) -> tuple[int, int]:
    """(bytes done, bytes total) of one component."""
    total = sum(f["size"] for f in component["files"])
    done = sum(f["size"] for f in component["files"] if f["done"])
    if live is not None and live.current is not None and live.current[0] == component["name"]:
        in_flight = next((f for f in component["files"] if f["path"] == live.current[1]), None)
        if in_flight is not None and not in_flight["done"]:
            done += min(live.current_bytes, in_flight["size"])
    return done, total


def percent(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 100.0


def download_view(record: dict[str, Any], live: LiveFigures | None = None) -> dict[str, Any]:
    """The API's shape of a download (api.md §6.2) plus exact figures for programs."""
    running = record["status"] == DOWNLOADING and live is not None
    speed = live.speed_bps if running and live is not None else 0.0
    shown = live if running else None
    components = [_component_view(c, shown, speed) for c in record["components"]]
    done = sum(c["bytes_done"] for c in components)
    total = sum(c["bytes_total"] for c in components)
    eta = eta_seconds(total - done, speed) if running else None
    return {
        "download_id": record["download_id"],
        "model_id": record["model_id"],
        "version": record["version"],
        "status": record["status"],
        "progress": percent(done, total),
        "speed": f"{human_size(speed)}/s" if running else None,
        "eta": human_duration(eta),
        "bytes_done": done,
        "bytes_total": total,
        "speed_bps": round(speed),
        "eta_seconds": None if eta is None else round(eta),
        "error": record.get("error"),
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
        "finished_at": record.get("finished_at"),
        "components": components,
    }


def _component_view(
    component: dict[str, Any], live: LiveFigures | None, speed: float
) -> dict[str, Any]:
    done, total = component_bytes(component, live)
    active = live is not None and live.current is not None and live.current[0] == component["name"]
    component_speed = speed if active else 0.0
    eta = eta_seconds(total - done, component_speed) if active else None
    return {
        "name": component["name"],
        "repo": component["repo"],
        "status": component["status"],
        "size": human_size(total),
        "downloaded": component["status"] == COMPLETED,
        "progress": percent(done, total),
        "bytes_done": done,
        "bytes_total": total,
        "files": len(component["files"]),
        "files_done": sum(1 for f in component["files"] if f["done"]),
        "speed_bps": round(component_speed),
        "eta_seconds": None if eta is None else round(eta),
        "path": component["path"],
    }


def event_payload(view: dict[str, Any]) -> dict[str, Any]:
    """What ``dpd.models.<download_id>.progress`` carries: the view without file detail."""
    keys = ("download_id", "model_id", "status", "progress", "bytes_done", "bytes_total")
    payload = {key: view[key] for key in keys}
    payload.update(
        speed_bps=view["speed_bps"],
        eta_seconds=view["eta_seconds"],
        error=view["error"],
        components=[
            {k: c[k] for k in ("name", "status", "bytes_done", "bytes_total")}
            for c in view["components"]
        ],
    )
    return payload
