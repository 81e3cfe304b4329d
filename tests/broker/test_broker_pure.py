"""Pure parts of the broker: membership verdicts with a fake clock, move bookkeeping, planning views."""

from __future__ import annotations

from letsfrag.broker.membership import HostObservation, HostVerdict, Membership
from letsfrag.broker.moves import HostFacts, Move, Moves, pick_drain_move, planning_views
from letsfrag.clock import FakeClock

UP = HostObservation(lease=True)
GONE = HostObservation(lease=False)


def test_lost_only_after_grace_of_continuous_observation() -> None:
    clock = FakeClock()
    m = Membership(grace=2.0)
    changes = m.observe(clock.monotonic(), {"a": UP})
    assert [(c.host, c.before, c.after) for c in changes] == [("a", None, HostVerdict.UP)]
    clock.advance(1)
    assert m.observe(clock.monotonic(), {"a": GONE})[0].after is HostVerdict.LATE
    clock.advance(1.9)
    assert m.observe(clock.monotonic(), {"a": GONE}) == []
    assert m.verdicts["a"] is HostVerdict.LATE
    clock.advance(0.1)
    assert m.observe(clock.monotonic(), {"a": GONE})[0].after is HostVerdict.LOST
    clock.advance(5)
    assert m.observe(clock.monotonic(), {"a": GONE}) == [] and m.verdicts["a"] is HostVerdict.LOST
    assert m.observe(clock.monotonic(), {"a": UP})[0].after is HostVerdict.UP  # it came back


def test_outage_resets_the_timers() -> None:
    clock = FakeClock()
    m = Membership(grace=2.0)
    m.observe(clock.monotonic(), {"a": GONE})
    clock.advance(1.5)
    m.reset()  # Redis was unreachable: what we saw before does not count
    m.observe(clock.monotonic(), {"a": GONE})
    clock.advance(1.5)
    m.observe(clock.monotonic(), {"a": GONE})
    assert m.verdicts["a"] is HostVerdict.LATE
    clock.advance(0.5)
    m.observe(clock.monotonic(), {"a": GONE})
    assert m.verdicts["a"] is HostVerdict.LOST


def test_a_long_gap_between_observations_counts_as_an_outage() -> None:
    clock = FakeClock()
    m = Membership(grace=2.0, max_gap=1.0)
    m.observe(clock.monotonic(), {"a": GONE})
    clock.advance(3)  # the broker itself stalled
    m.observe(clock.monotonic(), {"a": GONE})
    assert m.verdicts["a"] is HostVerdict.LATE
    assert m.missing_for("a", clock.monotonic()) == 0


def test_leaving_and_left() -> None:
    m = Membership(grace=10.0)
    m.observe(0, {"a": UP})
    assert m.observe(1, {"a": HostObservation(lease=True, state="leaving")})[0].after is HostVerdict.LEAVING
    assert HostVerdict.LEAVING.alive
    assert m.observe(2, {"a": HostObservation(lease=False, state="leaving")})[0].after is HostVerdict.LEFT
    m2 = Membership(grace=10.0)
    m2.observe(0, {"b": UP})
    assert m2.observe(1, {"b": HostObservation(lease=False, said_leave=True)})[0].after is HostVerdict.LEFT
    assert not HostVerdict.LEFT.alive and not HostVerdict.LOST.alive


def test_a_record_already_marked_lost_stays_lost_for_a_new_broker() -> None:
    m = Membership(grace=10.0)
    assert m.observe(0, {"a": HostObservation(lease=False, state="lost")})[0].after is HostVerdict.LOST
    m.observe(1, {})
    assert "a" not in m.verdicts  # a host that left the hosts set is forgotten


def test_moves_settle_on_stop_confirmation_death_or_timeout() -> None:
    moves = Moves(timeout=5.0)
    moves.begin(Move(1, "a", "b", "rebalance", 0.0))
    moves.begin(Move(2, "a", "c", "drain", 0.0))
    moves.begin(Move(3, "d", "c", "drain", 0.0))
    moves.begin(Move(4, "a", "b", "drain", 0.0))
    facts = {"a": HostFacts(True, frozenset({1, 2, 4})), "d": HostFacts(False, frozenset({3}))}
    moves.confirm_stopped(2, "a", 0)
    moves.confirm_stopped(4, "zzz", 0)  # not the source: ignored
    done, expired = moves.settle(1.0, facts)
    assert [m.cluster for m in done] == [2, 3] and expired == []
    facts["a"] = HostFacts(True, frozenset({4}))
    done, expired = moves.settle(2.0, facts)
    assert [m.cluster for m in done] == [1] and expired == []
    done, expired = moves.settle(5.5, facts)
    assert done == [] and [m.cluster for m in expired] == [4]
    assert len(moves) == 0


def test_an_old_epochs_stop_confirmation_does_not_end_a_later_move() -> None:
    """Attack: a ``cluster_stopped`` from an earlier move (epoch 3) replayed while cluster 1 moves at epoch 7."""
    moves = Moves(timeout=5.0)
    running = {"a": HostFacts(True, frozenset({1})), "b": HostFacts(True, frozenset())}
    moves.begin(Move(1, "a", "b", "rebalance", 0.0, epoch=7))
    assert moves.confirm_stopped(1, "a", 3) is False
    assert moves.confirm_stopped(1, "a", None) is False  # no epoch: not proof of anything
    assert moves.settle(1.0, running) == ([], []) and 1 in moves, "the old confirmation ended the move"
    assert moves.stale_confirmations == 2
    assert moves.confirm_stopped(1, "a", 7) is True
    done, expired = moves.settle(2.0, running)
    assert [m.cluster for m in done] == [1] and expired == []
    assert moves.confirm_stopped(2, "a", 1) is True and moves.stale_confirmations == 2  # no move: harmless


def test_planning_views_freeze_draining_hosts() -> None:
    current: dict[int, str | None] = {0: "a", 1: "a", 2: "b", 3: None}
    views = planning_views({"a": 4, "b": 4, "c": 4}, {"a": True, "b": True, "c": False}, {"a"}, current)
    assert views["a"].capacity == 2 and views["b"].capacity == 4
    assert not views["c"].alive


def test_pick_drain_move() -> None:
    current: dict[int, str | None] = {0: "a", 1: "a", 2: "b", 3: "c", 4: "c"}
    caps = {"a": 4, "b": 4, "c": 4}
    assert pick_drain_move(["a"], caps, {"b", "c"}, current) == (1, "a", "b")
    assert pick_drain_move(["a"], {"a": 4, "b": 1, "c": 2}, {"b", "c"}, current) is None
    assert pick_drain_move(["b"], caps, {"a", "c"}, {0: "a"}) is None
