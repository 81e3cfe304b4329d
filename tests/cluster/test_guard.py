"""The pure exactly-once logic: ownership verdicts and the dispatch horizon, with a fake clock."""

from __future__ import annotations

import json

import pytest

from letsfrag.clock import FakeClock
from letsfrag.cluster.guard import DispatchGuard, DispatchVerdict, decide_ownership, default_margin

GRANT = json.dumps({"host": "h1", "epoch": 3})


def judge(assignment: str | None = GRANT, lease: str | None = "inc", pttl: int = 4000, **kw: object) -> object:
    args: dict[str, object] = {"cluster_id": 2, "host_id": "h1", "epoch": 3, "incarnation": "inc", "default_ttl": 10.0}
    args.update(kw)
    return decide_ownership(assignment, lease, pttl, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("assignment", "lease", "pttl", "owner", "reason_part"),
    [
        (GRANT, "inc", 4000, True, "owner"),
        (None, "inc", 4000, False, "no longer assigned"),
        (json.dumps({"host": "h2", "epoch": 4}), "inc", 4000, False, "host h2 epoch 4"),
        (json.dumps({"host": "h1", "epoch": 4}), "inc", 4000, False, "epoch 4"),
        ("{not json", "inc", 4000, False, "unreadable"),
        (GRANT, None, -2, False, "lease has expired"),
        (GRANT, "other", 4000, False, "another incarnation"),
    ],
)
def test_decide_ownership(assignment: str | None, lease: str | None, pttl: int, owner: bool, reason_part: str) -> None:
    verdict = judge(assignment, lease, pttl)
    assert verdict.owner is owner  # type: ignore[attr-defined]
    assert reason_part in verdict.reason  # type: ignore[attr-defined]


def test_ttl_comes_from_the_lease_pttl() -> None:
    assert judge(pttl=2500).ttl == 2.5  # type: ignore[attr-defined]
    assert judge(pttl=-1).ttl == 10.0  # type: ignore[attr-defined]  # no expiry: the configured TTL


def test_nothing_dispatches_before_the_first_check() -> None:
    guard = DispatchGuard(FakeClock(), margin=0.5)
    ran: list[int] = []
    assert guard.admit(lambda: ran.append(1)) is DispatchVerdict.HOLD
    assert ran == [] and len(guard.held) == 1


def test_horizon_is_check_sent_time_plus_pttl_minus_margin() -> None:
    clock = FakeClock(start=100.0)
    guard = DispatchGuard(clock, margin=0.5)
    sent = clock.monotonic()
    clock.advance(0.2)  # the answer took 200 ms: the horizon still counts from the send time
    guard.confirm(sent, ttl=5.0)
    assert guard.valid_until == pytest.approx(104.5)
    clock.advance(4.29)
    assert guard.verdict() is DispatchVerdict.DISPATCH
    clock.advance(0.02)
    assert guard.verdict() is DispatchVerdict.HOLD


def test_frozen_process_holds_then_releases_in_order_when_still_owner() -> None:
    clock = FakeClock()
    guard = DispatchGuard(clock, margin=0.5)
    guard.confirm(clock.monotonic(), 5.0)
    ran: list[str] = []
    guard.admit(lambda: ran.append("a"))
    clock.advance(60)  # SIGSTOP ... SIGCONT: events buffered in the socket arrive now
    assert guard.admit(lambda: ran.append("b")) is DispatchVerdict.HOLD
    assert guard.admit(lambda: ran.append("c")) is DispatchVerdict.HOLD
    assert guard.release() == 0  # nothing released while the horizon has passed
    guard.confirm(clock.monotonic(), 5.0)  # a fresh check: still the owner
    # an event arriving after the confirmation but before the release still queues behind the held ones
    guard.admit(lambda: ran.append("d"))
    assert guard.release() == 3
    assert ran == ["a", "b", "c", "d"]
    assert guard.held_total == 3


def test_fenced_drops_what_it_held_and_everything_after() -> None:
    clock = FakeClock()
    guard = DispatchGuard(clock)
    ran: list[str] = []
    guard.admit(lambda: ran.append("x"))
    guard.admit(lambda: ran.append("y"))
    assert guard.fence() == 2
    assert guard.admit(lambda: ran.append("z")) is DispatchVerdict.DROP
    guard.confirm(clock.monotonic(), 5.0)  # a late positive answer cannot undo a fence
    assert not guard.allows() and ran == [] and guard.dropped_total == 3


def test_late_answer_of_an_older_check_does_not_shrink_the_horizon() -> None:
    clock = FakeClock(start=0.0)
    guard = DispatchGuard(clock, margin=0.0)
    guard.confirm(10.0, 5.0)
    guard.confirm(8.0, 5.0)
    assert guard.valid_until == 15.0


def test_events_caused_by_a_released_event_run_in_place() -> None:
    clock = FakeClock()
    guard = DispatchGuard(clock)
    ran: list[str] = []

    def parse() -> None:
        ran.append("parse")
        guard.admit(lambda: ran.append("dispatch"))  # the parser dispatches while being released

    guard.admit(parse)
    guard.admit(lambda: ran.append("next"))
    guard.confirm(clock.monotonic(), 5.0)
    errors: list[BaseException] = []
    guard.admit(lambda: None)
    guard.release(errors.append)
    assert ran == ["parse", "dispatch", "next"]


def test_a_failing_held_event_does_not_stop_the_others() -> None:
    clock = FakeClock()
    guard = DispatchGuard(clock)
    ran: list[str] = []

    def bad() -> None:
        raise RuntimeError("handler bug")

    guard.admit(bad)
    guard.admit(lambda: ran.append("ok"))
    guard.confirm(clock.monotonic(), 5.0)
    errors: list[BaseException] = []
    assert guard.release(errors.append) == 2
    assert ran == ["ok"] and isinstance(errors[0], RuntimeError)


def test_default_margin() -> None:
    assert default_margin(5.0) == 0.5
    assert default_margin(30.0) == 1.0
