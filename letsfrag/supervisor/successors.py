"""The supervisor's side of a planned handover, pure (no I/O): what to do with successors, and when a leave is over.

A *successor* is a second process for a cluster, started for a ``preparing`` handover record naming this host
(see :mod:`letsfrag.contract.handover`). :func:`plan_successors` compares the handover records and grants just read with
the successors this host has and returns the steps the manager carries out:

=============  ==========================================================================================
``spawn``      a ``preparing`` record names this host and an epoch newer than anything run here: start it
``promote``    the assignment names this host with the successor's epoch: it becomes the cluster's process
``roll_back``  the record is gone (or names another host/epoch, or a newer grant exists): stop the successor
``drop``       a failed successor's record is gone: forget its report
=============  ==========================================================================================

:func:`leave_verdict` decides when a supervisor that asked the broker to hand its clusters away (SIGTERM) stops
waiting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from letsfrag.contract.handover import HandoverRecord, HandoverState, SuccessorState

__all__ = ["LeaveVerdict", "SuccessorAction", "SuccessorFacts", "SuccessorStep", "leave_verdict", "plan_successors"]


class SuccessorAction(StrEnum):
    """What the manager does with one cluster's successor."""

    SPAWN = "spawn"
    PROMOTE = "promote"
    ROLL_BACK = "roll_back"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class SuccessorFacts:
    """What the plan needs to know about one successor this host has (a running process or a kept report)."""

    epoch: int
    state: SuccessorState
    #: its process still runs (False: it exited; a ``failed`` report is kept until the record goes)
    alive: bool = True
    #: a stop was already asked (rollback, shutdown): nothing more to decide until it exited
    stopping: bool = False


@dataclass(frozen=True, slots=True)
class SuccessorStep:
    """One step for the manager; ``record`` is the handover record a spawn is for."""

    cluster: int
    step: SuccessorAction
    epoch: int
    reason: str = ""
    record: HandoverRecord | None = None


def plan_successors(
    host_id: str,
    records: Mapping[int, HandoverRecord],
    grants: Mapping[int, int],
    successors: Mapping[int, SuccessorFacts],
    main_epochs: Mapping[int, int | None],
) -> list[SuccessorStep]:
    """The steps that bring this host's successors in line with what was read from Redis.

    ``records``: the handover records (any host; only those naming ``host_id`` count); ``grants``: ``{cluster:
    epoch}`` of the assignment naming this host; ``successors``: this host's successors; ``main_epochs``: the epoch
    of each cluster's current (or last) main run here (epochs only grow: an older or equal epoch is never spawned).
    """
    steps: list[SuccessorStep] = []
    mine = {cid: r for cid, r in records.items() if r.host == host_id}
    for cid in sorted(mine.keys() | successors.keys()):
        record, facts, granted = mine.get(cid), successors.get(cid), grants.get(cid)
        if facts is None:
            assert record is not None
            if record.state is not HandoverState.PREPARING:
                continue  # switched without a successor here (e.g. this supervisor restarted): the grant decides
            newest = max(granted or 0, main_epochs.get(cid) or 0)
            if record.epoch > newest:
                steps.append(SuccessorStep(cid, SuccessorAction.SPAWN, record.epoch, f"handover ({record.reason})",
                                           record))
            continue
        if not facts.alive:
            if record is None or record.epoch != facts.epoch:
                steps.append(SuccessorStep(cid, SuccessorAction.DROP, facts.epoch, "its handover record is gone"))
            continue
        if facts.stopping:
            continue
        if granted == facts.epoch:
            steps.append(SuccessorStep(cid, SuccessorAction.PROMOTE, facts.epoch, "the assignment names it"))
        elif granted is not None and granted > facts.epoch:
            steps.append(SuccessorStep(cid, SuccessorAction.ROLL_BACK, facts.epoch,
                                       f"replaced by the grant of epoch {granted}"))
        elif record is None and cid in records:
            steps.append(SuccessorStep(cid, SuccessorAction.ROLL_BACK, facts.epoch,
                                       f"the handover record now names host {records[cid].host}"))
        elif record is None:
            steps.append(SuccessorStep(cid, SuccessorAction.ROLL_BACK, facts.epoch,
                                       "handover rolled back (record deleted)"))
        elif record.epoch != facts.epoch:
            steps.append(SuccessorStep(cid, SuccessorAction.ROLL_BACK, facts.epoch,
                                       f"the handover record now names epoch {record.epoch}"))
    return steps


class LeaveVerdict(StrEnum):
    """Where a supervisor that asked to hand its clusters away stands."""

    WAIT = "wait"          # the broker is still handing clusters away
    HANDED_OFF = "handed_off"  # nothing is granted here and no process runs
    BLOCKED = "blocked"    # the broker says no host has room (``handoff_blocked``)
    TIMED_OUT = "timed_out"  # ``limits.leave_timeout`` is over
    FORCED = "forced"      # a second signal: stop now
    ALONE = "alone"        # no other host that is up (not leaving or draining) could take them


def leave_verdict(*, now: float, started: float, timeout: float, granted: int, running: int,
                  blocked: str | None, forced: bool, others_up: bool = True) -> LeaveVerdict:
    """The verdict at ``now`` (monotonic seconds) of a leave that began at ``started``.

    ``granted``: clusters still granted here; ``running``: processes still running here (main, successor or
    retiring); ``blocked``: the host record's ``handoff_blocked`` sentence, if any; ``others_up``: another host
    that is up (not leaving or draining) exists, as last checked."""
    if granted == 0 and running == 0:
        return LeaveVerdict.HANDED_OFF
    if forced:
        return LeaveVerdict.FORCED
    if blocked:
        return LeaveVerdict.BLOCKED
    if not others_up:
        return LeaveVerdict.ALONE
    if now - started >= timeout:
        return LeaveVerdict.TIMED_OUT
    return LeaveVerdict.WAIT
