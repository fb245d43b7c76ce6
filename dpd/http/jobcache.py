"""What the job page's charts read, kept per job and brought up to date by reading only what
its files gained since (blocking file I/O: call in a worker thread).

A long run's metrics.jsonl and events.jsonl reach tens of MB; reading them whole for each
``/series``, ``/markers`` and ``/alerts`` request made a job page of 100,000 steps take
seconds to show its first chart. Here each job has one entry: each series as columns
(``dpd.jobs.series.Columns``, read by a scan of its own so the first chart waits for its own
lines only), its resume markers (``ResumeFold``) and its alert events, each read through an
``AppendScan`` (``dpd.spool.appendscan``), which reads a file replaced, cut or rewritten from
the start again. A thinned answer is kept until its series grows.

Memory is bounded: entries are dropped least recently used first once they weigh more
than ``max_bytes`` together or number more than ``max_jobs`` (the one just asked for is
kept, whatever it weighs). Entries and the table have their own locks: requests for one job
wait for each other, requests for different jobs do not.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from dpd.jobs import series
from dpd.spool import layout as names
from dpd.spool.appendscan import AppendScan
from dpd.spool.jsontail import field_bytes

MAX_BYTES: Final = 256 << 20
MAX_JOBS: Final = 64
MAX_ANSWERS: Final = 8  # thinned answers kept per job
ANSWER_POINTS: Final = 5000  # answers of more points are made again when asked for
ALERT_WEIGHT: Final = 1024  # bytes counted per alert event or marker kept
ANSWER_POINT_WEIGHT: Final = 200  # bytes counted per point of a thinned answer kept
_MARKER_EVENTS: Final = ("status", "progress")
_PROGRESS: Final = field_bytes("type", "progress")
_STEP: Final = b'"current_step":'
_NO_STEP: Final = b'"current_step":null'
_KEPT: Final = (field_bytes("type", "status"), field_bytes("type", "alert"))


def marker_lines(block: bytes) -> list[bytes]:
    """The lines of ``block`` (whole events.jsonl lines) the markers and alerts need: status
    and alert events, and of the progress events only the last that names a step before each
    of those (a resume marker sits at the step the last progress reported) and at the end.
    Found with ``bytes.find``: most of the file is log events, never looked at one by one.
    A record's own type comes first in its line (``event_record``): a type named deeper in
    a line does not count."""
    starts = sorted(
        {at - 1 for needle in _KEPT for at in _finds(block, needle) if _heads(block, at)}
    )
    kept: list[bytes] = []
    done = 0
    for start in starts:
        end = _line_end(block, start)
        step_line = _last_step_line(block, done, start)
        if step_line is not None:
            kept.append(step_line)
        kept.append(block[start:end])
        done = end
    step_line = _last_step_line(block, done, len(block))
    if step_line is not None:
        kept.append(step_line)
    return kept


def _finds(block: bytes, needle: bytes) -> list[int]:
    found, at = [], block.find(needle)
    while at >= 0:
        found.append(at)
        at = block.find(needle, at + len(needle))
    return found


def _heads(block: bytes, at: int) -> bool:
    """Whether the field found at ``at`` is the first of its line's record."""
    return at >= 1 and block[at - 1 : at] == b"{" and (at == 1 or block[at - 2 : at - 1] == b"\n")


def _line_start(block: bytes, at: int) -> int:
    return block.rfind(b"\n", 0, at) + 1


def _line_end(block: bytes, start: int) -> int:
    end = block.find(b"\n", start)
    return len(block) if end < 0 else end


def _last_step_line(block: bytes, low: int, high: int) -> bytes | None:
    """The last progress line naming a step between ``low`` and ``high``."""
    at = block.rfind(_PROGRESS, low, high)
    while at >= 0:
        start = _line_start(block, at)
        line = block[start : _line_end(block, start)]
        if _heads(block, at) and _STEP in line and _NO_STEP not in line:
            return line
        at = block.rfind(_PROGRESS, low, start)
    return None


@dataclass
class SeriesScan:
    """One series of one job, as far as its metrics.jsonl was read, and the thinned answers
    made from it since it last grew."""

    path: Path
    kind: str
    columns: series.Columns = field(default_factory=series.Columns)
    answers: OrderedDict[int, tuple[int, series.Thinned]] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    scan: AppendScan = field(init=False)
    weight: int = 0

    def __post_init__(self) -> None:
        record_type, metric = series.SERIES[self.kind]
        needles = (field_bytes("type", record_type), field_bytes("metric", metric))
        self.scan = AppendScan(self.path, self._fold, self._reset, _lines_holding(needles))

    def _fold(self, records: list[Any]) -> None:
        wanted = series.SERIES[self.kind]
        self.columns.extend([r for r in records if isinstance(r, dict) and _pair(r) == wanted])

    def _reset(self) -> None:
        self.columns, self.answers = series.Columns(), OrderedDict()

    def thinned(self, max_points: int) -> series.Thinned:
        with self.lock:
            self.scan.refresh()
            kept = self.answers.get(max_points)
            if kept is not None and kept[0] == len(self.columns):
                self.answers.move_to_end(max_points)
                return kept[1]
            answer = series.thin_columns(self.columns, max_points)
            if len(answer.points) <= ANSWER_POINTS:
                self.answers[max_points] = (len(self.columns), answer)
            while len(self.answers) > MAX_ANSWERS:
                self.answers.popitem(last=False)
            points = sum(len(a.points) for _, a in self.answers.values())
            self.weight = self.columns.weight() + ANSWER_POINT_WEIGHT * points
            return answer

    def epoch_ends(self) -> dict[int, int]:
        """Epoch -> the step it ended at (of an epoch-loss series)."""
        with self.lock:
            self.scan.refresh()
            self.weight = max(self.weight, self.columns.weight())
            pairs = zip(self.columns.epochs, self.columns.steps, strict=True)
            return {e: s for e, s in pairs if e != series.NO_INT and s != series.NO_INT}


def _pair(record: dict[str, Any]) -> tuple[Any, Any]:
    return record.get("type"), record.get("metric")


def _lines_holding(needles: tuple[bytes, ...]) -> Callable[[bytes], list[bytes]]:
    def choose(block: bytes) -> list[bytes]:
        return [line for line in block.split(b"\n") if all(n in line for n in needles)]

    return choose


@dataclass
class JobEntry:
    """One job's series, resume markers and alerts, as far as its files were read. Each
    series has a scan of its own, so the first chart waits for its own lines only."""

    job_dir: Path
    resumes: series.ResumeFold = field(default_factory=series.ResumeFold)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    events_lock: threading.Lock = field(default_factory=threading.Lock)
    kinds: dict[str, SeriesScan] = field(default_factory=dict)
    events: AppendScan = field(init=False)

    def __post_init__(self) -> None:
        self.events = AppendScan(
            self.job_dir / names.EVENTS_FILE, self._fold_events, self._reset_events, marker_lines
        )

    @property
    def weight(self) -> int:
        kept = ALERT_WEIGHT * (len(self.alerts) + len(self.resumes.found))
        return kept + sum(k.weight for k in list(self.kinds.values()))

    def _fold_events(self, records: list[Any]) -> None:
        for event in records:
            if not isinstance(event, dict):
                continue
            if event.get("type") in _MARKER_EVENTS:
                self.resumes.add(event)
            elif event.get("type") == "alert":
                self.alerts.append(event)

    def _reset_events(self) -> None:
        self.resumes, self.alerts = series.ResumeFold(), []

    def _series(self, kind: str) -> SeriesScan:
        with self.lock:
            found = self.kinds.get(kind)
            if found is None:
                found = self.kinds[kind] = SeriesScan(self.job_dir / names.METRICS_FILE, kind)
            return found

    # ---------------------------------------------------------------- answers

    def series(self, kind: str, max_points: int) -> series.Thinned:
        return self._series(kind).thinned(max_points)

    def marker_facts(self) -> tuple[list[dict[str, Any]], dict[int, int]]:
        """The resume markers and epoch -> the step it ended at (epoch-loss points)."""
        with self.events_lock:
            self.events.refresh()
            resumes = [dict(m) for m in self.resumes.found]
        return resumes, self._series("epoch_loss").epoch_ends()

    def alert_events(self) -> list[dict[str, Any]]:
        with self.events_lock:
            self.events.refresh()
            return list(self.alerts)


@dataclass
class JobCache:
    """The entries of the jobs asked about, least recently used first."""

    max_bytes: int = MAX_BYTES
    max_jobs: int = MAX_JOBS
    _entries: OrderedDict[Path, JobEntry] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def entry(self, job_dir: Path) -> JobEntry:
        with self._lock:
            found = self._entries.get(job_dir)
            if found is None:
                found = self._entries[job_dir] = JobEntry(job_dir)
            self._entries.move_to_end(job_dir)
            self._evict(keep=found)
            return found

    def _evict(self, keep: JobEntry) -> None:
        total = sum(e.weight for e in self._entries.values())
        for job_dir in list(self._entries):
            if total <= self.max_bytes and len(self._entries) <= self.max_jobs:
                break
            victim = self._entries[job_dir]
            if victim is not keep:
                del self._entries[job_dir]
                total -= victim.weight

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def series(self, job_dir: Path, kind: str, max_points: int) -> series.Thinned:
        return self.entry(job_dir).series(kind, max_points)

    def marker_facts(self, job_dir: Path) -> tuple[list[dict[str, Any]], dict[int, int]]:
        return self.entry(job_dir).marker_facts()

    def alert_events(self, job_dir: Path) -> list[dict[str, Any]]:
        return self.entry(job_dir).alert_events()
