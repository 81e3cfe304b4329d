"""The reshard planner's table tests (pure: letsfrag/broker/reshard_plan.py)."""

from __future__ import annotations

import pytest

from letsfrag.broker.reshard_plan import (
    BudgetView,
    CurrentLayout,
    HostRoom,
    ReshardPlan,
    ReshardRefusal,
    plan_reshard,
)

LAYOUT = CurrentLayout(generation=1, shard_count=8, shards_per_cluster=4, max_concurrency=4, identify_window=5.0)
HOSTS = {"h1": HostRoom(capacity=4, held=2), "h2": HostRoom(capacity=4, held=0)}
BUDGET = BudgetView(total=1000, remaining=990, reserve_fraction=0.1)


def _plan(**kwargs: object) -> ReshardPlan:
    layout = kwargs.pop("layout", LAYOUT)
    hosts = kwargs.pop("hosts", HOSTS)
    budget = kwargs.pop("budget", BUDGET)
    plan = plan_reshard(layout, hosts, budget, **kwargs)  # type: ignore[arg-type]
    assert isinstance(plan, ReshardPlan), plan
    return plan


def _refusal(**kwargs: object) -> str:
    layout = kwargs.pop("layout", LAYOUT)
    hosts = kwargs.pop("hosts", HOSTS)
    budget = kwargs.pop("budget", BUDGET)
    refused = plan_reshard(layout, hosts, budget, **kwargs)  # type: ignore[arg-type]
    assert isinstance(refused, ReshardRefusal), refused
    return refused.message


@pytest.mark.parametrize(("requested", "concurrency", "new", "rounded"), [
    (16, 4, 16, None),
    (13, 4, 16, "13 shards rounded up to 16, a multiple of max_concurrency 4 (Discord requires it)"),
    (13, 1, 13, None),
    (3, 16, 16, "3 shards rounded up to 16, a multiple of max_concurrency 16 (Discord requires it)"),
    (4, 4, 4, None),  # shrinking
])
def test_the_shard_count_rounds_up_to_max_concurrency(requested: int, concurrency: int, new: int,
                                                      rounded: str | None) -> None:
    layout = CurrentLayout(1, 8, 4, concurrency, 5.0)
    plan = _plan(layout=layout, shards=requested)
    assert (plan.requested, plan.new_shards, plan.rounded) == (requested, new, rounded)
    assert plan.identifies == new
    assert (plan.generation, plan.new_generation, plan.old_shards) == (1, 2, 8)


@pytest.mark.parametrize(("shards", "concurrency", "window", "seconds"), [
    (16, 4, 5.0, 20.0),   # 4 buckets rounds
    (32, 4, 1.0, 8.0),    # the benchmark: ceil(32 / 4) x 1 s
    (17, 1, 5.0, 85.0),
    (16, 16, 5.0, 5.0),
])
def test_the_estimated_time_is_ceil_n_over_concurrency_windows(shards: int, concurrency: int, window: float,
                                                                seconds: float) -> None:
    hosts = {"h1": HostRoom(capacity=8, held=1), "h2": HostRoom(capacity=8, held=1)}
    plan = _plan(layout=CurrentLayout(1, 8, 4, concurrency, window), shards=shards, hosts=hosts)
    assert plan.estimated_seconds == seconds


@pytest.mark.parametrize(("hosts", "shards", "given"), [
    # 4 new clusters: h2 (empty) is less loaded, h1 gets some once the loads are even
    ({"h1": HostRoom(4, 2), "h2": HostRoom(4, 0)}, 16, {"h1": 1, "h2": 3}),
    ({"h1": HostRoom(4, 1), "h2": HostRoom(4, 1)}, 16, {"h1": 2, "h2": 2}),
    # by capacity: a bigger host takes more (loads 1/2 and 1/6; at 3/6 the tie goes to the first id)
    ({"a": HostRoom(2, 1), "b": HostRoom(6, 1)}, 12, {"a": 1, "b": 2}),
    # lost and draining hosts receive nothing, nor do hosts with capacity 0
    ({"h1": HostRoom(8, 0), "lost": HostRoom(8, 0, alive=False), "dr": HostRoom(8, 0, draining=True),
      "zero": HostRoom(0, 0)}, 16, {"h1": 4}),
    # exactly full: every free slot used
    ({"h1": HostRoom(3, 2), "h2": HostRoom(3, 0)}, 16, {"h1": 1, "h2": 3}),
])
def test_new_clusters_go_to_free_slots_of_live_hosts(hosts: dict[str, HostRoom], shards: int,
                                                     given: dict[str, int]) -> None:
    plan = _plan(hosts=hosts, shards=shards)
    assert plan.clusters == sum(given.values())
    assert dict(plan.hosts) == given
    assert set(plan.free) == {h for h, r in hosts.items() if r.alive and not r.draining and r.capacity > 0}


def test_the_plan_is_the_same_for_the_same_inputs() -> None:
    assert _plan(shards=16) == _plan(shards=16)


def test_the_plan_lines_name_every_number() -> None:
    lines = _plan(shards=13, hosts={"h1": HostRoom(4, 2), "h2": HostRoom(4, 0)}).lines()
    assert lines == [
        "reshard plan: generation 1 -> 2 (--shards 13)",
        "  shards: 8 -> 16",
        "  note: 13 shards rounded up to 16, a multiple of max_concurrency 4 (Discord requires it)",
        "  clusters of generation 2: 4 (4 shards per cluster)",
        "  capacity during the overlap: generation 2's processes run beside generation 1's until the switch; "
        "each counts against its host's capacity",
        "    h1: 1 new cluster(s) in 2 free slot(s)",
        "    h2: 3 new cluster(s) in 4 free slot(s)",
        "  identifies: 16 needed of 990 remaining (100 reserve, 874 left after)",
        "  estimated time: 20s (ceil(16 / 4) = 4 x identify_window 5s)",
    ]


def test_an_unknown_budget_is_not_checked_and_the_plan_says_so() -> None:
    plan = _plan(shards=16, budget=BudgetView(None, None, 0.1))
    assert plan.budget_remaining is None
    assert "  identifies: 16 needed; the identify budget is unknown (not checked)" in plan.lines()


def test_recommended_uses_the_gateway_bot_count() -> None:
    plan = _plan(use_recommended=True, recommended=13)
    assert plan.new_shards == 16 and plan.source == "--recommended: 13 from /gateway/bot"
    assert plan.to_dict()["lines"][0] == "reshard plan: generation 1 -> 2 (--recommended: 13 from /gateway/bot)"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shards": 0}, "the shard count must be at least 1, found 0"),
    ({"shards": -3}, "the shard count must be at least 1, found -3"),
    ({"shards": 2_000_000}, "the shard count 2000000 is too large: at most 1000000"),
    ({"shards": 8}, "generation 1 already has 8 shards: nothing to reshard"),
    ({"shards": 7}, "generation 1 already has 8 shards (7 rounded up to a multiple of 4): nothing to reshard"),
    ({}, "no target: give --shards N or --recommended"),
    ({"use_recommended": True}, "the recommended shard count is unknown: the broker has no /gateway/bot answer"),
])
def test_refusals_name_the_numbers(kwargs: dict[str, object], message: str) -> None:
    result = plan_reshard(LAYOUT, HOSTS, BUDGET, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, ReshardRefusal)
    assert message in result.message


def test_a_count_that_rounds_above_the_largest_refuses() -> None:
    layout = CurrentLayout(1, 8, 4, 128, 5.0)
    assert _refusal(layout=layout, shards=999_999) == (
        "the shard count 999999 rounds up to 1000064 (a multiple of max_concurrency 128), more than the largest, "
        "1000000")


def test_a_budget_minus_the_reserve_that_cannot_pay_refuses() -> None:
    message = _refusal(shards=16, budget=BudgetView(total=1000, remaining=115, reserve_fraction=0.1))
    assert message == ("the identify budget cannot pay a reshard to 16 shards: 115 session starts remain, 100 are "
                       "the reserve, and the 16 new sessions need 16")
    # one more session start and it can
    assert _plan(shards=16, budget=BudgetView(total=1000, remaining=116, reserve_fraction=0.1)).identifies == 16


def test_no_room_refuses_naming_each_host() -> None:
    hosts = {"h1": HostRoom(4, 4), "h2": HostRoom(4, 3), "gone": HostRoom(9, 0, alive=False)}
    message = _refusal(shards=16, hosts=hosts)
    assert message == ("no room for generation 2: its 4 cluster(s) run beside generation 1's during the overlap "
                       "and need 4 free slot(s), the live hosts have 1 (h1: 0 of capacity 4 free, h2: 1 of "
                       "capacity 4 free)")
    assert "the live hosts have 0 (no live host)" in _refusal(shards=16, hosts={})


def test_room_is_checked_before_the_budget() -> None:
    message = _refusal(shards=16, hosts={"h1": HostRoom(1, 1)}, budget=BudgetView(1000, 0, 0.1))
    assert message.startswith("no room for generation 2")
