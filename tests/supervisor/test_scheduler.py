"""Scheduling decisions (pure): order, GPU choice, all-at-once, no starvation, backfill,
positions, start estimates, and the 507/409 data for jobs that cannot start as asked."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dpd.supervisor.scheduler import (
    Assignment,
    GpuView,
    QueuedJob,
    check_feasible,
    estimate_start_times,
    plan,
    queue_positions,
)

NOW = 1_700_000_000.0


def job(
    task_id: str,
    seq: int = 0,
    priority: int = 0,
    gpu_ids: tuple[int, ...] | None = None,
    gpus: int = 1,
    memory: int | None = None,
    duration: float | None = None,
) -> QueuedJob:
    return QueuedJob(task_id, priority, seq, gpu_ids, gpus, memory, duration)


def free(gpu_id: int, total: int = 24576, used: int = 0) -> GpuView:
    return GpuView(gpu_id, total, total - used, "available")


def training(gpu_id: int, task: str, eta: float | None = None, total: int = 24576) -> GpuView:
    return GpuView(gpu_id, total, 2000, "training", task, eta)


def busy(gpu_id: int) -> GpuView:
    return GpuView(gpu_id, 24576, 4000, "busy")


def started(queue: list[QueuedJob], gpus: list[GpuView]) -> dict[str, tuple[int, ...]]:
    return {a.task_id: a.gpu_ids for a in plan(queue, gpus)}


# ----------------------------------------------------------------------------- order


def test_priority_first_then_submission_order() -> None:
    queue = [job("low-old", seq=1), job("high", seq=3, priority=5), job("low-new", seq=2)]
    assert started(queue, [free(0)]) == {"high": (0,)}
    assert started(queue, [free(0), free(1)]) == {"high": (0,), "low-old": (1,)}
    assert queue_positions(queue) == {"high": 1, "low-old": 2, "low-new": 3}


def test_fifo_among_equal_priorities() -> None:
    queue = [job(f"j{i}", seq=i) for i in (3, 1, 2)]
    assert plan(queue, [free(0)]) == [Assignment("j1", (0,))]


def test_nothing_starts_on_occupied_gpus() -> None:
    gpus = [training(0, "other", eta=60), busy(1), GpuView(2, 24576, 0, "unknown")]
    assert plan([job("a"), job("b", gpu_ids=(1,))], gpus) == []


# ------------------------------------------------------------------------- GPU choice


def test_explicit_ids_only_when_every_one_is_available() -> None:
    gpus = [free(0), training(1, "x", eta=100), free(2)]
    assert started([job("a", gpu_ids=(0, 1))], gpus) == {}
    assert started([job("a", gpu_ids=(2, 0))], gpus) == {"a": (2, 0)}


def test_memory_filter_and_best_fit() -> None:
    gpus = [free(0, total=81920), free(1, total=24576), free(2, total=24576, used=20000)]
    assert started([job("small", memory=4000)], gpus) == {"small": (2,)}
    assert started([job("mid", memory=16000)], gpus) == {"mid": (1,)}
    assert started([job("big", memory=40000)], gpus) == {"big": (0,)}
    assert started([job("huge", memory=90000)], gpus) == {}
    # the big job keeps the 80 GB GPU because the small one took the best fit
    assert started([job("s", seq=1, memory=8000), job("b", seq=2, memory=40000)], gpus) == {
        "s": (1,),
        "b": (0,),
    }


def test_multi_gpu_job_gets_all_its_gpus_at_once_or_none() -> None:
    assert started([job("pair", gpus=2)], [free(0), training(1, "x", eta=5)]) == {}
    assert started([job("pair", gpus=2)], [free(0), free(1), free(2)]) == {"pair": (0, 1)}


# ---------------------------------------------------------------------- no starvation


def test_blocked_big_job_reserves_free_gpus_against_later_small_ones() -> None:
    gpus = [free(0), training(1, "running", eta=600)]
    queue = [job("big", seq=1, gpus=2), job("small", seq=2)]
    assert plan(queue, gpus) == []  # GPU 0 waits for the big job
    # when GPU 1 frees up, the big job gets both
    assert started(queue, [free(0), free(1)]) == {"big": (0, 1)}


def test_blocked_explicit_job_reserves_its_gpu() -> None:
    gpus = [free(0), training(1, "running", eta=600)]
    queue = [job("pinned", seq=1, gpu_ids=(0, 1)), job("later", seq=2, gpu_ids=(0,))]
    assert plan(queue, gpus) == []


def test_reservation_leaves_other_gpus_to_later_jobs() -> None:
    gpus = [free(0), free(1), training(2, "running", eta=600)]
    queue = [job("big", seq=1, gpu_ids=(1, 2)), job("small", seq=2)]
    assert started(queue, gpus) == {"small": (0,)}


def test_short_job_backfills_a_reserved_gpu_when_it_ends_in_time() -> None:
    gpus = [free(0), training(1, "running", eta=600)]
    queue = [job("big", seq=1, gpus=2), job("short", seq=2, duration=300)]
    assert started(queue, gpus) == {"short": (0,)}
    too_long = [job("big", seq=1, gpus=2), job("long", seq=2, duration=900)]
    assert plan(too_long, gpus) == []
    unknown_eta = [free(0), training(1, "running", eta=None)]
    assert plan(queue, unknown_eta) == []


# ------------------------------------------------------------------ positions, estimates


def test_estimates_follow_the_queue_and_running_etas() -> None:
    gpus = [training(0, "r0", eta=100), training(1, "r1", eta=400)]
    queue = [
        job("a", seq=1, duration=1000),
        job("b", seq=2, duration=50),
        job("c", seq=3, duration=10),
        job("pair", seq=4, gpus=2),
    ]
    starts = estimate_start_times(queue, gpus, NOW)
    assert starts["a"] == NOW + 100  # GPU 0 frees first
    assert starts["b"] == NOW + 400  # GPU 1
    assert starts["c"] == NOW + 450  # after b on GPU 1
    assert starts["pair"] == NOW + 1100  # both: after a ends on GPU 0


def test_estimate_now_for_free_gpu_and_none_when_unknowable() -> None:
    gpus = [free(0), busy(1), training(2, "r", eta=None)]
    queue = [job("now", seq=1), job("pinned-busy", seq=2, gpu_ids=(1,)), job("after", seq=3)]
    starts = estimate_start_times(queue, gpus, NOW)
    assert starts == {"now": NOW, "pinned-busy": None, "after": None}


def test_estimate_honours_memory_needs() -> None:
    gpus = [training(0, "r0", eta=10, total=24576), training(1, "r1", eta=500, total=81920)]
    starts = estimate_start_times([job("big", memory=40000)], gpus, NOW)
    assert starts == {"big": NOW + 500}


# ----------------------------------------------------------------------- feasibility


def test_more_gpus_than_the_machine_has_is_507() -> None:
    gpus = [free(0), training(1, "t", eta=60)]
    problem = check_feasible(job("x", gpus=4), gpus)
    assert problem is not None and problem.code == 507
    assert problem.data["required_gpus"] == 4
    assert problem.data["available_gpus"] == 1
    assert problem.data["busy_gpus"] == [1]
    assert problem.data["recommended_action"]


def test_unknown_explicit_id_and_too_little_memory_are_507() -> None:
    gpus = [free(0), free(1)]
    missing = check_feasible(job("x", gpu_ids=(0, 7)), gpus)
    assert missing is not None and missing.code == 507 and "7" in missing.message
    assert missing.data["required_gpus"] == 2
    small = check_feasible(job("x", memory=30000), gpus)
    assert small is not None and small.code == 507
    pinned_small = check_feasible(job("x", gpu_ids=(0,), memory=30000), [free(0), free(1, 81920)])
    assert pinned_small is not None and pinned_small.code == 507


def test_explicit_busy_gpu_is_409_with_current_task_and_eta() -> None:
    gpus = [free(0), training(1, "train_1", eta=3600), free(2)]
    problem = check_feasible(job("x", gpu_ids=(1,)), gpus, now=1739343600.0)
    assert problem is not None and problem.code == 409
    assert problem.data == {
        "gpu_id": 1,
        "current_task": "train_1",
        "estimated_available_time": "2025-02-12T08:00:00Z",
        "available_gpus": [0, 2],
    }
    foreign = check_feasible(job("x", gpu_ids=(1,)), [free(0), busy(1)], now=NOW)
    assert foreign is not None and foreign.code == 409
    assert foreign.data["current_task"] is None
    assert foreign.data["estimated_available_time"] is None


def test_feasible_jobs_have_no_problem() -> None:
    gpus = [free(0), training(1, "t", eta=60)]
    assert check_feasible(job("x", gpu_ids=(0,)), gpus) is None
    assert check_feasible(job("x", gpus=2), gpus) is None  # waits its turn, no 409 or 507


# ---------------------------------------------------------------------- properties

statuses = st.sampled_from(["available", "available", "training", "busy", "unknown"])


@st.composite
def machines(draw: st.DrawFn) -> list[GpuView]:
    count = draw(st.integers(0, 6))
    gpus = []
    for gpu_id in range(count):
        total = draw(st.sampled_from([8192, 24576, 81920]))
        status = draw(statuses)
        task = f"r{gpu_id}" if status == "training" else None
        eta = draw(st.none() | st.floats(0, 1e4)) if task else None
        gpus.append(GpuView(gpu_id, total, draw(st.integers(0, total)), status, task, eta))
    return gpus


@st.composite
def queues(draw: st.DrawFn) -> list[QueuedJob]:
    jobs = []
    for i in range(draw(st.integers(0, 8))):
        explicit = draw(st.none() | st.sets(st.integers(0, 6), min_size=1, max_size=3))
        jobs.append(
            job(
                f"j{i}",
                seq=i,
                priority=draw(st.integers(0, 2)),
                gpu_ids=tuple(sorted(explicit)) if explicit else None,
                gpus=draw(st.integers(1, 3)),
                memory=draw(st.none() | st.sampled_from([4000, 20000, 60000])),
                duration=draw(st.none() | st.floats(1, 1e4)),
            )
        )
    return jobs


@settings(max_examples=300, deadline=None)
@given(queues(), machines())
def test_plan_never_double_books_or_uses_occupied_or_small_gpus(
    queue: list[QueuedJob], gpus: list[GpuView]
) -> None:
    by_id = {g.gpu_id: g for g in gpus}
    jobs = {j.task_id: j for j in queue}
    used: list[int] = []
    for assignment in plan(queue, gpus):
        wanted = jobs[assignment.task_id]
        assert len(assignment.gpu_ids) == wanted.needed
        if wanted.gpu_ids:
            assert set(assignment.gpu_ids) == set(wanted.gpu_ids)
        for gpu_id in assignment.gpu_ids:
            assert by_id[gpu_id].status == "available"
            if wanted.min_memory_mb is not None:
                assert by_id[gpu_id].memory_free >= wanted.min_memory_mb
        used.extend(assignment.gpu_ids)
    assert len(used) == len(set(used))
    starts = estimate_start_times(queue, gpus, NOW)
    assert set(starts) == set(jobs)
    assert all(s is None or s >= NOW for s in starts.values())


@settings(max_examples=200, deadline=None)
@given(queues(), machines())
def test_the_first_job_in_order_starts_whenever_it_fits_now(
    queue: list[QueuedJob], gpus: list[GpuView]
) -> None:
    if not queue:
        return
    first = min(queue, key=lambda j: (-j.priority, j.submitted_seq))
    alone = plan([first], gpus)
    if alone:  # nothing queued behind it changes the head's decision
        assert plan(queue, gpus)[0] == alone[0]


# ---------------------------------------------------------------- rule 6: dataset caches


def cached(task_id: str, seq: int, *keys: str, priority: int = 0) -> QueuedJob:
    return QueuedJob(task_id, priority, seq, None, 1, None, None, frozenset(keys))


def test_a_job_whose_cache_a_live_run_builds_waits_and_reserves_nothing() -> None:
    queue = [cached("sweep-2", 1, "/d/cats/cache/sdxl", priority=5), cached("dogs", 2, "/d/dogs")]
    assert started(queue, [free(0)]) == {"sweep-2": (0,)}
    waiting = plan(queue, [free(0)], frozenset({"/d/cats/cache/sdxl"}))
    assert waiting == [Assignment("dogs", (0,))]  # the waiting job held on to no GPU


def test_one_builder_per_cache_in_a_pass() -> None:
    queue = [
        cached("a", 1, "/d/cats/cache/sdxl"),
        cached("b", 2, "/d/cats/cache/sdxl", "/d/dogs/cache/sdxl"),
        cached("c", 3, "/d/dogs/cache/sdxl"),
        cached("d", 4),
    ]
    assert started(queue, [free(i) for i in range(4)]) == {"a": (0,), "c": (1,), "d": (2,)}


def test_jobs_without_cache_keys_plan_as_before() -> None:
    queue = [job("a", seq=1), job("b", seq=2)]
    assert plan(queue, [free(0), free(1)], frozenset({"/d/cats/cache/sdxl"})) == plan(
        queue, [free(0), free(1)]
    )
