"""Pure handover bookkeeping (letsfrag.broker.handovers): every transition of a record, and the gates."""

from __future__ import annotations

import pytest

from letsfrag.broker.handovers import HandoverAction, HandoverBook, budget_refusal, decide, slot_refusal
from letsfrag.broker.moves import HostFacts
from letsfrag.contract.handover import HandoverRecord, HandoverState, SuccessorReport, SuccessorState

T0 = 1_000_000.0


def record(state: HandoverState = HandoverState.PREPARING, *, host: str = "b", source: str = "a",
           epoch: int = 12, from_epoch: int = 7, deadline: float = T0 + 60) -> HandoverRecord:
    return HandoverRecord(cluster=3, host=host, epoch=epoch, from_host=source, from_epoch=from_epoch,
                          reason="drain", state=state, started=T0, deadline=deadline)


def report(state: SuccessorState, epoch: int = 12, reason: str = "") -> dict[int, SuccessorReport]:
    return {3: SuccessorReport(cluster=3, epoch=epoch, state=state, pid=42, reason=reason)}


UP_A = HostFacts(True, {3: 7})
STARTING = HostFacts(True, {}, report(SuccessorState.STARTING))
READY = HostFacts(True, {}, report(SuccessorState.READY))
FAILED = HostFacts(True, {}, report(SuccessorState.FAILED, reason="exit code 1"))
OLD_READY = HostFacts(True, {}, report(SuccessorState.READY, epoch=9))  # a report of an earlier handover
DEAD = HostFacts(False, {3: 7})

PREPARING_CASES = [
    # (hosts, assigned, now, action, reason contains)
    ({"a": UP_A, "b": STARTING}, ("a", 7), T0 + 1, HandoverAction.WAIT, ""),
    ({"a": UP_A, "b": HostFacts(True)}, ("a", 7), T0 + 1, HandoverAction.WAIT, ""),
    ({"a": UP_A, "b": READY}, ("a", 7), T0 + 1, HandoverAction.SWITCH, "ready"),
    ({"a": UP_A, "b": READY}, ("a", 7), T0 + 61, HandoverAction.SWITCH, "ready"),  # ready wins over a late tick
    ({"a": UP_A, "b": OLD_READY}, ("a", 7), T0 + 1, HandoverAction.WAIT, ""),
    ({"a": UP_A, "b": FAILED}, ("a", 7), T0 + 1, HandoverAction.ROLLBACK, "failed: exit code 1"),
    ({"a": UP_A, "b": STARTING}, ("a", 7), T0 + 61, HandoverAction.ROLLBACK, "not ready within 60s"),
    ({"a": UP_A, "b": HostFacts(False, {}, report(SuccessorState.READY))}, ("a", 7), T0 + 1, HandoverAction.ROLLBACK,
     "target host b is not alive"),
    ({"a": UP_A}, ("a", 7), T0 + 1, HandoverAction.ROLLBACK, "target host b is not alive"),
    ({"a": DEAD, "b": READY}, ("a", 7), T0 + 1, HandoverAction.ROLLBACK, "source host a is not alive"),
    ({"a": UP_A, "b": READY}, ("c", 8), T0 + 1, HandoverAction.ROLLBACK, "assignment changed"),
    ({"a": UP_A, "b": READY}, None, T0 + 1, HandoverAction.ROLLBACK, "assignment changed"),
]


@pytest.mark.parametrize(("hosts", "assigned", "now", "action", "reason"), PREPARING_CASES)
def test_preparing(hosts: dict[str, HostFacts], assigned: tuple[str, int] | None, now: float, action: HandoverAction,
                   reason: str) -> None:
    step = decide(record(), now, hosts, assigned)
    assert step.action is action and reason in step.reason


SWITCHED_CASES = [
    # (hosts, assigned, now, stopped, action, reason contains)
    ({"a": UP_A, "b": READY}, ("b", 12), T0 + 1, False, HandoverAction.WAIT, ""),
    ({"a": UP_A, "b": READY}, ("b", 12), T0 + 1, True, HandoverAction.DONE, "confirmed"),
    ({"a": HostFacts(True, {}), "b": READY}, ("b", 12), T0 + 1, False, HandoverAction.DONE, "no longer runs"),
    ({"a": DEAD, "b": READY}, ("b", 12), T0 + 1, False, HandoverAction.DONE, "not alive"),
    ({"a": UP_A, "b": READY}, ("c", 13), T0 + 1, False, HandoverAction.DONE, "assignment changed"),
    ({"a": UP_A, "b": READY}, ("b", 12), T0 + 61, False, HandoverAction.DONE, "did not confirm the stop in time"),
]


@pytest.mark.parametrize(("hosts", "assigned", "now", "stopped", "action", "reason"), SWITCHED_CASES)
def test_switched(hosts: dict[str, HostFacts], assigned: tuple[str, int] | None, now: float, stopped: bool,
                  action: HandoverAction, reason: str) -> None:
    step = decide(record(HandoverState.SWITCHED), now, hosts, assigned, stopped=stopped)
    assert step.action is action and reason in step.reason


def test_restart_in_place_is_done_when_the_old_epoch_is_gone() -> None:
    rec = record(HandoverState.SWITCHED, host="a", source="a")
    both = HostFacts(True, {3: 7}, report(SuccessorState.READY))
    assert decide(rec, T0 + 1, {"a": both}, ("a", 12)).action is HandoverAction.WAIT
    promoted = HostFacts(True, {3: 12})
    assert decide(rec, T0 + 1, {"a": promoted}, ("a", 12)).action is HandoverAction.DONE


def test_confirmations_count_only_the_source_epoch() -> None:
    book = HandoverBook()
    rec = record(HandoverState.SWITCHED, host="a", source="a")
    book.load({3: rec})
    assert not book.confirm_stopped(3, "a", 6)  # an earlier run's confirmation
    assert not book.stopped(rec)
    book.confirm_stopped(3, "a", 12)  # the successor stopped (not the old process)
    assert not book.stopped(rec)
    assert book.confirm_stopped(3, "a", 7)
    assert book.stopped(rec)
    steps = book.steps(T0 + 1, {"a": HostFacts(True, {3: 7})}, {3: ("a", 12)})
    assert [(s.record.cluster, s.action) for s in steps] == [(3, HandoverAction.DONE)]
    book.load({})  # the record is gone: so are its confirmations
    book.load({3: rec})
    assert not book.stopped(rec)


def test_bookkeeping_queries() -> None:
    book = HandoverBook()
    a = record()
    b = HandoverRecord(cluster=5, host="c", epoch=13, from_host="a", from_epoch=8, reason="drain",
                       state=HandoverState.SWITCHED, started=T0, deadline=T0 + 9)
    book.load({3: a, 5: b})
    assert len(book) == 2 and 3 in book
    assert book.targeting("b") == a and book.targeting("a") is None
    assert book.targeting("c") is None  # switched: its successor is the owner now
    assert book.preparing() == [a]
    assert book.sources("a") == [3, 5]
    assert sorted(book.epochs()) == [7, 8, 12, 13]
    book.forget(3)
    assert 3 not in book


def test_slot_gate() -> None:
    busy = record()
    assert slot_refusal(4, "b", capacity=2, held=1, in_place=False, busy=None) is None
    full = slot_refusal(4, "b", capacity=2, held=2, in_place=False, busy=None)
    assert full == "host b has no free slot: it runs 2 of its capacity 2"
    assert slot_refusal(4, "b", capacity=2, held=2, in_place=True, busy=None) is None  # the +1 slot
    one = slot_refusal(4, "b", capacity=4, held=0, in_place=True, busy=busy)
    assert one is not None and "cluster 3, epoch 12" in one and "one at a time" in one


def test_budget_gate() -> None:
    assert budget_refusal(3, 8, total=None, remaining=None, reserve_fraction=0.1) is None
    assert budget_refusal(3, 8, total=1000, remaining=108, reserve_fraction=0.1) is None
    refused = budget_refusal(3, 8, total=1000, remaining=107, reserve_fraction=0.1)
    assert refused == ("the identify budget cannot pay a handover of cluster 3: 107 session starts remain, "
                       "100 are the reserve, and its 8 shard(s) need 8")
