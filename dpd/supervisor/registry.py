"""The live runs of this daemon, by task id, with the GPUs and master ports they hold.

A run is added when the scheduler places it (before anything is awaited, so the next pass
cannot place it again) and removed when it ends (``JobRun._end``); its port is released
with it. Event-loop only: no locking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from dpd.jobs.states import Phase
from dpd.supervisor.ports import PortAllocator

if TYPE_CHECKING:
    from dpd.supervisor.run import JobRun

PAST_CACHING: Final = frozenset({Phase.TRAINING.value, Phase.EVAL.value, Phase.SAVING.value})


class RunRegistry:
    def __init__(self, ports: PortAllocator) -> None:
        self.ports = ports
        self._runs: dict[str, JobRun] = {}

    def add(self, run: JobRun) -> None:
        self._runs[run.task_id] = run
        if run.port:
            self.ports.reserve(run.task_id, run.port)

    def remove(self, run: JobRun) -> None:
        """Forget ``run`` and free its port (a later run of the same task is not touched)."""
        if self._runs.get(run.task_id) is run:
            del self._runs[run.task_id]
            self.ports.release(run.task_id)

    def get(self, task_id: str) -> JobRun | None:
        return self._runs.get(task_id)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._runs

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._runs))

    def __len__(self) -> int:
        return len(self._runs)

    def runs(self) -> list[JobRun]:
        return list(self._runs.values())

    def assignments(self) -> dict[int, tuple[str, str]]:
        """GPU -> (task id, "training") for every GPU a live run holds."""
        return {gpu: (run.task_id, "training") for run in self.runs() for gpu in run.gpu_ids}

    def building_caches(self, keys_of: Callable[[str], frozenset[str]]) -> dict[str, str]:
        """The dataset caches live runs may be writing, each with the task writing it: a
        run's, from its launch until its trainer reaches training (scheduler rule 6). A
        stopping run's trainer may still be writing, so it counts until it is gone."""
        return {
            key: run.task_id
            for run in self.runs()
            if run.follower.facts.phase not in PAST_CACHING
            for key in keys_of(run.task_id)
        }

    def trainer_pids(self) -> set[int]:
        return {run.shim.trainer_pid for run in self.runs() if run.shim is not None}

    def eta(self, task_id: str) -> float | None:
        run = self._runs.get(task_id)
        if run is None:
            return None
        eta = run.follower.tracker.progress().get("eta_seconds")
        return float(eta) if eta is not None else None
