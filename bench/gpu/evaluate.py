"""What the kit observed, judged: pure functions from observations to checks and figures.

Independent of dpd's own parser on purpose: the trainer's output is read here with the
patterns of reference/diffusion-pipe.md §4, so a parser bug in dpd cannot hide itself.
Every function takes plain data (log bytes, API answers, numbers) and returns a ``Check``
whose evidence is what decided it.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.gpu.report import Check

STEP_LINE = re.compile(
    rb"^steps: (?P<step>\d+) loss: (?P<loss>-?\d+\.\d+|nan|-?inf) (?:\S+: \S+ )*"
    rb"iter time \(s\): (?P<iter>\d+\.\d+) samples/sec: (?P<sps>\d+\.\d+)$"
)
RESUMING_LINE = re.compile(
    rb"^Resuming training from checkpoint\. Resuming at epoch: (\d+), step: (\d+)$"
)
ORDER = ("starting", "caching", "training")


@dataclass(frozen=True)
class StepLine:
    step: int
    loss: float
    iter_time: float
    offset: int  # byte offset of the line in train.log


def step_lines(data: bytes) -> list[StepLine]:
    found = []
    for offset, line in _lines_with_offsets(data):
        match = STEP_LINE.match(line)
        if match:
            found.append(
                StepLine(int(match["step"]), float(match["loss"]), float(match["iter"]), offset)
            )
    return found


def _lines_with_offsets(data: bytes) -> Iterable[tuple[int, bytes]]:
    start = 0
    for match in re.finditer(rb"[\r\n]", data):
        if match.start() > start:
            yield start, data[start : match.start()]
        start = match.end()
    if start < len(data):
        yield start, data[start:]


def has_line(data: bytes, text: str) -> bool:
    return any(line == text.encode() for _, line in _lines_with_offsets(data))


def lines_containing(data: bytes, text: str, limit: int = 3) -> list[str]:
    hits = [
        line.decode(errors="replace")
        for _, line in _lines_with_offsets(data)
        if text.encode() in line
    ]
    return hits[:limit]


# ------------------------------------------------------------------ the checks


def check_submit(status: int, body: Mapping[str, Any]) -> Check:
    data = body.get("data") or {}
    ok = status in (200, 201) and bool(data.get("task_id"))
    return Check.decide(
        "submit",
        ok,
        f"POST /training/start answered {status}",
        status=status,
        task_id=data.get("task_id"),
        message=body.get("message"),
    )


def phase_sequence(observed: Iterable[str | None]) -> list[str]:
    """The phases in the order seen, repeats collapsed."""
    sequence: list[str] = []
    for phase in observed:
        if phase and (not sequence or sequence[-1] != phase):
            sequence.append(phase)
    return sequence


def check_phases(observed: Sequence[str | None]) -> Check:
    """Training seen, and the first sightings of starting/caching/training in that order."""
    sequence = phase_sequence(observed)
    firsts = [p for p in ORDER if p in sequence]
    in_order = firsts == sorted(firsts, key=lambda p: sequence.index(p))
    before = [p for p in ("starting", "caching") if p in sequence]
    ok = "training" in sequence and in_order and bool(before)
    return Check.decide(
        "phases",
        ok,
        f"phases seen through the API: {' -> '.join(sequence) or 'none'}",
        sequence=sequence,
        samples=len(observed),
    )


def check_steps_and_losses(samples: Sequence[Mapping[str, Any]]) -> Check:
    """API samples (progress and metrics of GET /training/{id}) show steps rising, losses."""
    steps: list[int] = [s["current_step"] for s in samples if s.get("current_step") is not None]
    losses = [s.get("current_loss") for s in samples if s.get("current_loss") is not None]
    distinct = sorted(set(steps))
    rising = steps == sorted(steps)
    finite = all(isinstance(v, int | float) and math.isfinite(v) for v in losses)
    ok = len(distinct) >= 3 and rising and bool(losses) and finite
    return Check.decide(
        "steps_and_losses",
        ok,
        f"{len(distinct)} distinct steps seen, {len(losses)} losses, rising={rising}",
        first_steps=distinct[:5],
        last_step=distinct[-1] if distinct else None,
        sample_losses=losses[:5],
    )


def check_progress_eta(samples: Sequence[Mapping[str, Any]], total_steps: int) -> Check:
    """Some sample while training had the right total, a progress percentage and an ETA."""
    good = [
        s
        for s in samples
        if s.get("total_steps") == total_steps
        and isinstance(s.get("overall_progress"), int | float)
        and s["overall_progress"] > 0
        and isinstance(s.get("eta_seconds"), int | float)
        and s["eta_seconds"] >= 0
    ]
    example = good[0] if good else (samples[-1] if samples else {})
    return Check.decide(
        "progress_and_eta",
        bool(good),
        f"{len(good)} of {len(samples)} samples had total_steps={total_steps}, progress and ETA",
        example={
            k: example.get(k)
            for k in ("current_step", "total_steps", "overall_progress", "eta_seconds")
        },
    )


def check_metrics_match_log(metrics: Sequence[Mapping[str, Any]], log: bytes) -> Check:
    """Every ``steps:`` line of train.log is one step-loss metric with the same loss, once."""
    logged = {s.step: s.loss for s in step_lines(log)}
    recorded = [
        (int(m["step"]), float(m["value"]))
        for m in metrics
        if m.get("type") == "step" and m.get("metric") == "loss"
    ]
    steps = [step for step, _ in recorded]
    duplicates = sorted({s for s in steps if steps.count(s) > 1})
    mismatched = [
        (step, value, logged.get(step))
        for step, value in recorded
        if step not in logged or not _same_loss(value, logged[step])
    ]
    missing = sorted(set(logged) - set(steps))
    ok = bool(logged) and not duplicates and not mismatched and not missing
    return Check.decide(
        "metrics_match_log",
        ok,
        f"{len(logged)} steps in train.log, {len(recorded)} step losses in metrics.jsonl",
        duplicates=duplicates[:10],
        mismatched=mismatched[:10],
        missing=missing[:10],
    )


def _same_loss(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 5e-5


def check_gpu_busy(gpus: Sequence[Mapping[str, Any]], task_id: str, gpu_id: int) -> Check:
    """GET /gpu/status shows the job's GPU occupied by the job."""
    entry = next((g for g in gpus if g.get("gpu_id") == gpu_id), None)
    ok = (
        entry is not None
        and entry.get("current_task") == task_id
        and entry.get("status") not in (None, "available", "unknown")
    )
    keys = ("status", "current_task", "task_type", "memory_used", "utilization_gpu")
    return Check.decide(
        "gpu_busy_in_api",
        ok,
        f"GPU {gpu_id}: "
        + (f"{entry.get('status')}, task {entry.get('current_task')}" if entry else "absent"),
        entry={k: entry.get(k) for k in keys} if entry else None,
    )


def check_gpu_process(gpu_pids: Sequence[int], job_pids: Sequence[int]) -> Check:
    """The GPU's compute processes (from the driver) include a process of the job."""
    common = sorted(set(gpu_pids) & set(job_pids))
    return Check.decide(
        "gpu_process_is_trainer",
        bool(common),
        f"{len(common)} of the GPU's {len(gpu_pids)} compute processes belong to the job",
        gpu_pids=list(gpu_pids),
        job_pids=list(job_pids)[:20],
    )


def check_graceful_stop(
    answer: Mapping[str, Any],
    log: bytes,
    latest: str | None,
    checkpoint_exists: bool,
    steps_per_epoch: int,
    status: str | None,
) -> Check:
    """Stopped through save_quit mid-epoch, with the checkpoint on disk that dpd names."""
    steps = step_lines(log)
    stop_step = steps[-1].step if steps else None
    named = answer.get("last_checkpoint")
    quitting = has_line(log, "Manually quitting")
    mid_epoch = stop_step is not None and stop_step % steps_per_epoch != 0
    ok = (
        status == "stopped"
        and quitting
        and mid_epoch
        and named is not None
        and named == latest
        and checkpoint_exists
    )
    return Check.decide(
        "graceful_stop",
        ok,
        f"stopped at step {stop_step} (epoch length {steps_per_epoch}), checkpoint {named}",
        status=status,
        manually_quitting=quitting,
        stop_step=stop_step,
        api_last_checkpoint=named,
        latest_file=latest,
        checkpoint_dir_exists=checkpoint_exists,
    )


def check_resume(log_after: bytes, stop_step: int | None, api_step: int | None) -> Check:
    """The second run says it resumes at stop_step + 1 and the API sees steps beyond it."""
    resumed = [m for _, line in _lines_with_offsets(log_after) if (m := RESUMING_LINE.match(line))]
    at = int(resumed[0].group(2)) if resumed else None
    first = next(iter(step_lines(log_after)), None)
    ok = (
        stop_step is not None
        and at == stop_step + 1
        and first is not None
        and first.step == stop_step + 1
        and api_step is not None
        and api_step > stop_step
    )
    return Check.decide(
        "resume",
        ok,
        f"resumed at step {at} after stopping at {stop_step}; API then saw step {api_step}",
        resume_line_step=at,
        first_step_after=first.step if first else None,
    )


def check_trainer_survives(steps_while_dead: Sequence[StepLine], alive_pids: int) -> Check:
    ok = bool(steps_while_dead) and alive_pids > 0
    return Check.decide(
        "trainer_survives_dpd_kill",
        ok,
        f"{len(steps_while_dead)} steps written while dpd was dead; "
        f"{alive_pids} job processes alive",
        steps=[s.step for s in steps_while_dead][:20],
    )


def check_reattach(
    status_after: str | None,
    run_before: Any,
    run_after: Any,
    pids_before: Sequence[int],
    pids_after: Sequence[int],
    last_dead_step: int | None,
    api_step_after: int | None,
) -> Check:
    """The restarted dpd follows the same processes (same run, nothing relaunched), still
    running, and its step has caught up with what was written while it was dead."""
    kept = sorted(set(pids_before) & set(pids_after))
    ok = (
        status_after == "running"
        and run_before is not None
        and run_before == run_after
        and bool(kept)
        and last_dead_step is not None
        and api_step_after is not None
        and api_step_after >= last_dead_step
    )
    return Check.decide(
        "reattach_after_kill9",
        ok,
        f"after restart: {status_after}, run {run_before} -> {run_after}, "
        f"{len(kept)} job processes kept, API step {api_step_after} "
        f"(last step written while dead: {last_dead_step})",
        pids_before=list(pids_before)[:20],
        pids_after=list(pids_after)[:20],
    )


def check_completed(status: str | None, log: bytes, total_steps: int) -> Check:
    steps = step_lines(log)
    last = steps[-1].step if steps else None
    complete = has_line(log, "TRAINING COMPLETE!")
    ok = status == "completed" and complete and last == total_steps
    return Check.decide(
        "completed",
        ok,
        f"status {status}, TRAINING COMPLETE! {'seen' if complete else 'absent'}, "
        f"last step {last} of {total_steps}",
    )


def check_lora(loaded: Mapping[str, Any] | None, path: str | None) -> Check:
    """``loaded`` is what safetensors reported for the saved file (tensor count, keys)."""
    count = (loaded or {}).get("tensors", 0)
    keys = list((loaded or {}).get("keys", []))
    ok = loaded is not None and count > 0 and any("lora" in k.lower() for k in keys)
    return Check.decide(
        "lora_loads",
        ok,
        f"{path or 'no LoRA file'}: {count} tensors",
        loader=(loaded or {}).get("loader"),
        sample_keys=keys[:4],
        error=(loaded or {}).get("error"),
    )


def check_impossible_fails(state: Mapping[str, Any] | None, log: bytes, expected: str) -> Check:
    """The job failed and dpd's error carries the trainer's own message."""
    status = (state or {}).get("status")
    error = (state or {}).get("error")
    text = _flatten(error)
    in_error = expected in text
    in_log = bool(lines_containing(log, expected))
    ok = status == "failed" and in_error and in_log
    return Check.decide(
        "impossible_config_fails",
        ok,
        f"status {status}; trainer's message {'surfaced' if in_error else 'not surfaced'}",
        expected=expected,
        error=error,
        log_lines=lines_containing(log, expected),
    )


def _flatten(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(_flatten(v) for v in value.values())
    if isinstance(value, list | tuple):
        return " ".join(_flatten(v) for v in value)
    return "" if value is None else str(value)


def check_no_leftovers(name: str, pids: Sequence[int], when: str) -> Check:
    return Check.decide(
        name, not pids, f"{len(pids)} job processes left {when}", pids=list(pids)[:20]
    )


# ------------------------------------------------------------------ figures


def split_step_times(
    steps: Sequence[StepLine], dead_from: int, dead_to: int
) -> tuple[list[float], list[float]]:
    """Iteration times of steps written while dpd followed, and while it was dead.

    ``dead_from``/``dead_to`` are train.log sizes when dpd was killed and restarted. The
    first step of each run is left out (it includes warm-up)."""
    first_steps = {s.step for s in steps[:1]}
    following: list[float] = []
    dead: list[float] = []
    for line in steps:
        if line.step in first_steps:
            continue
        (dead if dead_from <= line.offset < dead_to else following).append(line.iter_time)
    return following, dead


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def cpu_percent(cpu_seconds: float, wall_seconds: float) -> float | None:
    if wall_seconds <= 0:
        return None
    return 100.0 * cpu_seconds / wall_seconds
