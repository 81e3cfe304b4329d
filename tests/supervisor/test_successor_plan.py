"""The supervisor's pure handover decisions: what to do with successors, and when a leaving host stops waiting."""

from __future__ import annotations

import pytest

from letsfrag.clock import FakeClock
from letsfrag.contract.handover import HandoverRecord, HandoverState, SuccessorState
from letsfrag.supervisor.successors import LeaveVerdict, SuccessorAction, SuccessorFacts, leave_verdict, plan_successors

HOST = "h1"
P, S = HandoverState.PREPARING, HandoverState.SWITCHED
STARTING, READY, FAILED = SuccessorState.STARTING, SuccessorState.READY, SuccessorState.FAILED


def rec(epoch: int, state: HandoverState = P, host: str = HOST, cluster: int = 0) -> HandoverRecord:
    return HandoverRecord(cluster=cluster, host=host, epoch=epoch, from_host="h0", from_epoch=epoch - 1,
                          reason="restart", state=state, started=0.0, deadline=30.0)


def succ(epoch: int, state: SuccessorState = STARTING, *, alive: bool = True, stopping: bool = False) -> SuccessorFacts:
    return SuccessorFacts(epoch, state, alive=alive, stopping=stopping)


# (name, record, grant, successor, main epoch) -> expected (step, epoch) or None
CASES = [
    ("preparing record naming this host: spawn", rec(5), None, None, None, (SuccessorAction.SPAWN, 5)),
    ("restart in place: the old epoch is granted here, spawn", rec(5), 4, None, 4, (SuccessorAction.SPAWN, 5)),
    ("record for another host: nothing", rec(5, host="h2"), 4, None, 4, None),
    ("switched record, no successor here: the grant decides", rec(5, S), 5, None, 4, None),
    ("epoch not newer than the main run: never spawned", rec(4), 4, None, 4, None),
    ("epoch already granted: not spawned again", rec(5), 5, None, 5, None),
    ("starting successor, record still there: wait", rec(5), 4, succ(5), 4, None),
    ("ready successor, record still preparing: wait", rec(5), 4, succ(5, READY), 4, None),
    ("the assignment names the successor: promote", rec(5, S), 5, succ(5, READY), 4, (SuccessorAction.PROMOTE, 5)),
    ("promote even before the switched record is read", rec(5), 5, succ(5, READY), 4, (SuccessorAction.PROMOTE, 5)),
    ("promote a starting successor too (the grant is the truth)", rec(5, S), 5, succ(5), 4,
     (SuccessorAction.PROMOTE, 5)),
    ("record deleted before the switch: roll back", None, 4, succ(5, READY), 4, (SuccessorAction.ROLL_BACK, 5)),
    ("record names another host now: roll back", rec(5, host="h2"), 4, succ(5), 4, (SuccessorAction.ROLL_BACK, 5)),
    ("record names another epoch now: roll back", rec(6), 4, succ(5), 4, (SuccessorAction.ROLL_BACK, 5)),
    ("a newer grant: roll back", rec(5), 6, succ(5), 4, (SuccessorAction.ROLL_BACK, 5)),
    ("already stopping: nothing more", None, 4, succ(5, stopping=True), 4, None),
    ("failed and exited, record still there: keep the report", rec(5), 4, succ(5, FAILED, alive=False), 4, None),
    ("failed, record gone: drop the report", None, 4, succ(5, FAILED, alive=False), 4, (SuccessorAction.DROP, 5)),
    ("failed while stopping, record gone: drop", None, 4, succ(5, FAILED, alive=False, stopping=True), 4,
     (SuccessorAction.DROP, 5)),
    ("failed, not respawned for the same record", rec(5), None, succ(5, FAILED, alive=False), None, None),
    ("failed, a new record with a newer epoch: drop (then spawn)", rec(6), 4, succ(5, FAILED, alive=False), 4,
     (SuccessorAction.DROP, 5)),
]


@pytest.mark.parametrize(("name", "record", "grant", "successor", "main", "expected"), CASES,
                         ids=[case[0] for case in CASES])
def test_plan(name: str, record: HandoverRecord | None, grant: int | None, successor: SuccessorFacts | None,
              main: int | None, expected: tuple[SuccessorAction, int] | None) -> None:
    steps = plan_successors(HOST, {0: record} if record else {}, {0: grant} if grant is not None else {},
                            {0: successor} if successor else {}, {0: main})
    assert [(s.step, s.epoch) for s in steps] == ([expected] if expected else [])
    for step in steps:
        assert step.reason
        assert (step.record is not None) == (step.step is SuccessorAction.SPAWN)


def test_plan_handles_each_cluster_apart() -> None:
    steps = plan_successors(HOST, {0: rec(5), 1: rec(7, S, cluster=1)}, {0: 4, 1: 7, 2: 3},
                            {1: succ(7, READY), 2: succ(4)}, {0: 4, 1: 6, 2: 3})
    assert [(s.cluster, s.step) for s in steps] == [
        (0, SuccessorAction.SPAWN), (1, SuccessorAction.PROMOTE), (2, SuccessorAction.ROLL_BACK)]


# (name, seconds since the leave began, granted, running, blocked, forced) -> verdict
LEAVE_CASES = [
    ("still granted and running", 1.0, 2, 1, None, False, LeaveVerdict.WAIT),
    ("granted elsewhere, old process still stopping", 5.0, 0, 1, None, False, LeaveVerdict.WAIT),
    ("nothing granted and nothing runs", 5.0, 0, 0, None, False, LeaveVerdict.HANDED_OFF),
    ("handed off wins over a late blocked", 5.0, 0, 0, "no room", False, LeaveVerdict.HANDED_OFF),
    ("the broker found no room", 2.0, 2, 1, "no host has room for 2 clusters", False, LeaveVerdict.BLOCKED),
    ("the bound is over", 60.0, 1, 1, None, False, LeaveVerdict.TIMED_OUT),
    ("just before the bound", 59.9, 1, 1, None, False, LeaveVerdict.WAIT),
    ("a second signal", 0.5, 2, 1, None, True, LeaveVerdict.FORCED),
]


@pytest.mark.parametrize(("name", "after", "granted", "running", "blocked", "forced", "expected"), LEAVE_CASES,
                         ids=[case[0] for case in LEAVE_CASES])
def test_leave_verdict(name: str, after: float, granted: int, running: int, blocked: str | None, forced: bool,
                       expected: LeaveVerdict) -> None:
    clock = FakeClock()
    started = clock.monotonic()
    clock.advance(after)
    assert leave_verdict(now=clock.monotonic(), started=started, timeout=60.0, granted=granted, running=running,
                         blocked=blocked, forced=forced) is expected


def test_leave_verdict_alone_when_nobody_can_take_the_clusters() -> None:
    clock = FakeClock()
    started = clock.monotonic()
    clock.advance(3.0)
    common = {"now": clock.monotonic(), "started": started, "timeout": 60.0, "blocked": None, "forced": False}
    assert leave_verdict(**common, granted=1, running=1, others_up=False) is LeaveVerdict.ALONE
    assert leave_verdict(**common, granted=0, running=0, others_up=False) is LeaveVerdict.HANDED_OFF
    assert leave_verdict(**common, granted=1, running=1, others_up=True) is LeaveVerdict.WAIT
