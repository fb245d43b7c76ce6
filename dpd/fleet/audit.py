"""Reconciliation at start and the periodic self-audit, applied (FLEET.md §9.5, §9.2 step 8).

``dpd.fleet.reconcile.decide`` names the step for each task; this module gathers the facts
(state.json, the supervisor's runs, the record) and carries the step out. At start every
local fleet job and every record the watched table shows owned by this node is read from
the stream leader; afterwards, every ``period``, the table is read first and only a task
whose table record calls for a step is read again from the leader before anything is done
(the table is a hint, §3.4).

A superseded local attempt (an orphan, an abandoned claim) is muted in the NATS publisher
before it is stopped or marked (§9.7, ``dpd.fleet.publication``): its events stay in its
events.jsonl and never reach stream ``DPD``, also after a restart. Events of the other
cases (a lost run failed after a reboot, a run fenced while its daemon was paused) wait
behind the publication gate until the job table, confirmed after a lease renewal, shows
whether this node still owns that attempt: published if so, muted if another attempt
replaced it.

Where this differs from §9.5: the start-up pass runs once the agent is connected, after the
supervisor re-attached the last daemon's runs (the daemon starts the agent after
``supervisor.start()``), so an orphan is a re-attached run that is then stopped, rather
than one never re-attached; its events and those of the recovery before it are held by
the publication gate until this pass has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from dpd.errors import Conflict, DpdError
from dpd.fleet.kv import TRANSIENT, CasConflict, OutcomeUnknown, Unavailable
from dpd.fleet.reconcile import NODE_STATE_LOST, NOT_STARTED, SUPERSEDED, Local, Step, decide
from dpd.fleet.records import JobRecord, JobState, RecordError, enc
from dpd.fleet.transitions import TransitionRefused, clear_lost, decline, finish
from dpd.jobs.states import Status
from dpd.spool.store import utc_now

if TYPE_CHECKING:
    from dpd.fleet.agent import FleetAgent

log = logging.getLogger("dpd.fleet.audit")

FLEET = "fleet"
_OVER = (Status.COMPLETED.value, Status.FAILED.value, Status.STOPPED.value)


def _local(agent: FleetAgent, task_id: str) -> Local | None:
    if not agent.store.exists(task_id):
        return None
    return Local.of(agent.store.get(task_id), task_id in agent.supervisor.running)


def _candidates(agent: FleetAgent) -> dict[str, JobRecord | None]:
    """task → its watched record (None if the table has none): local fleet jobs that are not
    over, and records the table shows owned by this node and not over."""
    out: dict[str, JobRecord | None] = {}
    for state in agent.store.states(lambda s: isinstance(s.get(FLEET), dict)):
        if state.get("status") in _OVER:
            continue
        out[state["task_id"]] = None
    for record, _ in agent.records():
        owner = record.owner
        if (
            owner is not None and owner.node == agent.node and not record.terminal
        ) or record.task_id in out:
            out[record.task_id] = record
    return out


async def audit(agent: FleetAgent, startup: bool = False) -> dict[str, Step]:
    """One pass; the step taken per task (for logs and tests). Tasks being claimed or
    taken by this instance right now are left to that claim."""
    assert agent.jobs is not None
    taken: dict[str, Step] = {}
    for task_id, watched in _candidates(agent).items():
        if task_id in agent.claiming:
            continue
        if not startup:
            hint = decide(_local(agent, task_id), watched, agent.me)
            if not _worth_a_look(hint, watched, agent):
                continue
        step = await _settle(agent, task_id)
        if step not in (Step.NONE, Step.OUTBOX):
            taken[task_id] = step
    return taken


def _worth_a_look(step: Step, watched: JobRecord | None, agent: FleetAgent) -> bool:
    if step in (Step.NONE, Step.OUTBOX, Step.STALE):
        return False
    if step is Step.ADOPT:  # nothing to do unless the record carries ``lost``
        return watched is not None and watched.lost is not None
    if step is Step.CONTINUE and watched is not None and watched.owner is not None:
        return watched.owner.instance != agent.me.instance  # this instance's: _resume_own
    return True


async def _settle(agent: FleetAgent, task_id: str) -> Step:
    assert agent.jobs is not None
    for _ in range(2):  # a record older than the local attempt: one more read
        entry = await agent.jobs.leader_get(enc(task_id))
        try:
            record = JobRecord.from_json(entry.value) if entry and entry.present else None
        except RecordError:
            return Step.NONE  # a record this version does not understand: leave it
        if task_id in agent.claiming:
            return Step.NONE
        step = decide(_local(agent, task_id), record, agent.me)
        if step is not Step.STALE:
            break
    else:
        return Step.STALE
    try:
        await _carry_out(agent, task_id, step, record)
    except (TransitionRefused, CasConflict, Conflict) as err:
        log.info("%s: reconciliation step %s not taken (%s)", task_id, step, err)
    except (Unavailable, OutcomeUnknown, *TRANSIENT) as err:
        log.warning("%s: reconciliation step %s waits for NATS (%r)", task_id, step, err)
    return step


async def _carry_out(agent: FleetAgent, task_id: str, step: Step, record: JobRecord | None) -> None:
    me = agent.me
    if step is Step.ADOPT and record is not None and record.lost is not None:
        attempt = record.attempt
        await agent._cas(task_id, lambda r: clear_lost(r, me, attempt, time.time()))
        log.info("%s: re-adopted after a restart; node_state lost cleared", task_id)
    elif step is Step.ORPHAN:
        log.warning("%s: the fleet record no longer names this run; stopping it", task_id)
        await agent.publication.mute(task_id)  # before the stop writes its events (§9.7)
        await agent.supervisor.stop(task_id, force=True)
        await asyncio.to_thread(_mark_superseded, agent, task_id)
    elif step is Step.ABANDON:
        log.warning("%s: the claim is no longer this node's; abandoning it", task_id)
        await agent.publication.mute(task_id)
        await asyncio.to_thread(_mark_superseded, agent, task_id)
    elif step is Step.CONTINUE and record is not None and record.owner is not None:
        if not agent.take_again(record):
            log.info("%s: the claim waits for its GPUs", task_id)
    elif step is Step.DECLINE and record is not None:
        attempt, why = record.attempt, "nothing of the claim stands here (given up, or lost)"
        await agent._cas(  # not the job's fault: this node may claim it again at once
            task_id, lambda r: decline(r, me, attempt, why, time.time(), remember=False)
        )
        log.warning("%s: claim given back (%s)", task_id, why)
    elif step in (Step.DATA_LOST, Step.UNSTARTED) and record is not None:
        attempt = record.attempt
        error = (
            {"reason": NODE_STATE_LOST, "message": "the owner has no local job any more"}
            if step is Step.DATA_LOST
            else {"reason": NOT_STARTED, "message": "the owner gave the run up before it began"}
        )
        await agent._cas(
            task_id, lambda r: finish(r, me, attempt, JobState.FAILED, time.time(), error=error)
        )
        log.warning("%s: no run of it here; the record says failed (%s)", task_id,
                    error["reason"])  # fmt: skip


def _mark_superseded(agent: FleetAgent, task_id: str) -> None:
    """The local job ends ``failed``/``superseded`` if it is not over yet (§9.5)."""
    error = {"reason": SUPERSEDED, "message": "another attempt owns this job"}
    state: dict[str, Any] = agent.store.get(task_id)
    status = Status(state["status"])
    if status in (Status.COMPLETED, Status.FAILED, Status.STOPPED):
        return
    with contextlib.suppress(Conflict, DpdError):
        agent.store.transition(task_id, status, Status.FAILED, error=error, ended_at=utc_now())
