"""The pure layout and assignment decisions: tables for the rules, hypothesis for the invariants."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from letsfrag.broker.assignment import (
    ClusterSpec,
    HostView,
    Plan,
    cluster_of_shard,
    compute_layout,
    is_balanced,
    plan_assignment,
    plan_rebalance_step,
    round_shard_count,
    shard_of_guild,
)

# ------------------------------------------------------------------------------------------ helpers


def hosts_of(*views: HostView) -> dict[str, HostView]:
    return {view.id: view for view in views}


def by_host(assignment: Mapping[int, str | None]) -> dict[str, list[int]]:
    result: dict[str, list[int]] = {}
    for cluster_id, host_id in sorted(assignment.items()):
        if host_id is not None:
            result.setdefault(host_id, []).append(cluster_id)
    return result


def settle(
    cluster_ids: Sequence[int], hosts: Mapping[str, HostView], current: Mapping[int, str | None]
) -> tuple[dict[int, str | None], list[tuple[int, str, str]]]:
    """Apply the plan, then rebalance steps until none is left; return the final state and the moves."""
    state = dict(plan_assignment(cluster_ids, hosts, current).assignment)
    moves: list[tuple[int, str, str]] = []
    for _ in range(10 * len(cluster_ids) + 10):
        move = plan_rebalance_step(cluster_ids, hosts, state)
        if move is None:
            return state, moves
        cluster_id, source, target = move
        assert state[cluster_id] == source
        state[cluster_id] = target
        moves.append(move)
    raise AssertionError(f"rebalancing did not end after {len(moves)} moves")


# ------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize(
    ("shard_count", "per_cluster", "expected"),
    [
        (1, 1, [(0,)]),
        (1, 8, [(0,)]),
        (8, 8, [tuple(range(8))]),
        (10, 4, [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]),
        (9, 4, [(0, 1, 2, 3), (4, 5, 6, 7), (8,)]),
        (4, 1, [(0,), (1,), (2,), (3,)]),
    ],
)
def test_compute_layout_makes_contiguous_blocks(
    shard_count: int, per_cluster: int, expected: list[tuple[int, ...]]
) -> None:
    layout = compute_layout(shard_count, per_cluster)
    assert [spec.shard_ids for spec in layout] == expected
    assert [spec.id for spec in layout] == list(range(len(expected)))


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (ClusterSpec(3, tuple(range(24, 32))), "24–31"),
        (ClusterSpec(5, (5,)), "5"),
        (ClusterSpec(0, (0, 1)), "0–1"),
        (ClusterSpec(0, ()), ""),
    ],
)
def test_shard_range_for_people(spec: ClusterSpec, text: str) -> None:
    assert spec.shard_range == text


@pytest.mark.parametrize(("shard_count", "per_cluster"), [(0, 8), (8, 0), (-1, 4), (4, -2)])
def test_compute_layout_rejects_nonsense(shard_count: int, per_cluster: int) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        compute_layout(shard_count, per_cluster)


@pytest.mark.parametrize(
    ("recommended", "max_concurrency", "expected"),
    [(1, 1, 1), (7, 1, 7), (1, 16, 16), (16, 16, 16), (17, 16, 32), (33, 16, 48), (5, 2, 6), (6, 2, 6)],
)
def test_round_shard_count(recommended: int, max_concurrency: int, expected: int) -> None:
    assert round_shard_count(recommended, max_concurrency) == expected


def test_round_shard_count_rejects_zero() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        round_shard_count(4, 0)
    with pytest.raises(ValueError, match="recommended"):
        round_shard_count(0, 4)


@pytest.mark.parametrize(("shard", "per_cluster", "cluster"), [(0, 8, 0), (7, 8, 0), (8, 8, 1), (31, 8, 3), (5, 1, 5)])
def test_cluster_of_shard(shard: int, per_cluster: int, cluster: int) -> None:
    assert cluster_of_shard(shard, per_cluster) == cluster


def test_cluster_of_shard_rejects_negative_shard() -> None:
    with pytest.raises(ValueError, match="shard_id"):
        cluster_of_shard(-1, 8)


@pytest.mark.parametrize(
    ("guild_id", "shard_count", "shard"),
    [(0, 1, 0), (81384788765712384, 1, 0), (81384788765712384, 16, 2), ((5 << 22) | 12345, 4, 1), (3 << 22, 2, 1)],
)
def test_shard_of_guild(guild_id: int, shard_count: int, shard: int) -> None:
    assert shard_of_guild(guild_id, shard_count) == shard


@given(shard_count=st.integers(1, 300), per_cluster=st.integers(1, 40))
def test_layout_covers_every_shard_once_and_agrees_with_cluster_of_shard(shard_count: int, per_cluster: int) -> None:
    layout = compute_layout(shard_count, per_cluster)
    flat = [shard for spec in layout for shard in spec.shard_ids]
    assert flat == list(range(shard_count))
    assert all(len(spec.shard_ids) == per_cluster for spec in layout[:-1])
    assert 1 <= len(layout[-1].shard_ids) <= per_cluster
    for spec in layout:
        assert all(cluster_of_shard(shard, per_cluster) == spec.id for shard in spec.shard_ids)


# ------------------------------------------------------------------------------------------ plan: rules


def test_initial_placement_gives_contiguous_ranges() -> None:
    hosts = hosts_of(HostView("a", 4), HostView("b", 4))
    plan = plan_assignment(range(8), hosts, {})
    assert by_host(plan.assignment) == {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7]}
    assert plan.granted == {c: ("a" if c < 4 else "b") for c in range(8)}
    assert plan.revoked == {} and plan.unassigned == []


def test_initial_placement_is_proportional_to_capacity() -> None:
    hosts = hosts_of(HostView("a", 4), HostView("b", 8))
    plan = plan_assignment(range(6), hosts, {})
    assert by_host(plan.assignment) == {"a": [0, 1], "b": [2, 3, 4, 5]}


def test_initial_placement_orders_hosts_naturally() -> None:
    hosts = hosts_of(HostView("host-10", 2), HostView("host-2", 2), HostView("host-1", 2))
    plan = plan_assignment(range(6), hosts, {})
    assert by_host(plan.assignment) == {"host-1": [0, 1], "host-2": [2, 3], "host-10": [4, 5]}


def test_an_uneven_split_favours_the_lower_host_id() -> None:
    hosts = hosts_of(HostView("c", 10), HostView("b", 10), HostView("a", 10))
    plan = plan_assignment(range(10), hosts, {})
    assert by_host(plan.assignment) == {"a": [0, 1, 2, 3], "b": [4, 5, 6], "c": [7, 8, 9]}


def test_dead_draining_and_unknown_hosts_lose_their_clusters() -> None:
    hosts = hosts_of(HostView("ok", 10), HostView("dead", 10, alive=False), HostView("drain", 10, draining=True))
    current = {0: "ok", 1: "dead", 2: "drain", 3: "ghost", 4: None}
    plan = plan_assignment(range(5), hosts, current)
    assert plan.revoked == {1: "dead", 2: "drain", 3: "ghost"}
    assert plan.reasons == {1: "host dead", 2: "host draining", 3: "unknown host"}
    assert plan.assignment == dict.fromkeys(range(5), "ok")
    assert plan.granted == {1: "ok", 2: "ok", 3: "ok", 4: "ok"}


def test_over_capacity_keeps_the_lowest_ids() -> None:
    hosts = hosts_of(HostView("a", 2), HostView("b", 5))
    current = {0: "a", 3: "a", 5: "a", 1: "b"}
    plan = plan_assignment([0, 1, 3, 5], hosts, current)
    assert plan.revoked == {5: "a"}
    assert plan.reasons == {5: "over capacity"}
    assert plan.assignment == {0: "a", 1: "b", 3: "a", 5: "b"}
    assert plan.granted == {5: "b"}


def test_capacity_zero_gets_nothing_and_gives_back_what_it_had() -> None:
    hosts = hosts_of(HostView("zero", 0), HostView("one", 1))
    plan = plan_assignment([0, 1], hosts, {0: "zero"})
    assert plan.revoked == {0: "zero"}
    assert plan.assignment == {0: "one", 1: None}
    assert plan.unassigned == [1]


def test_what_does_not_fit_stays_unassigned() -> None:
    hosts = hosts_of(HostView("a", 2), HostView("b", 1))
    plan = plan_assignment(range(5), hosts, {})
    assert plan.unassigned == [3, 4]
    assert Counter(h for h in plan.assignment.values() if h) == {"a": 2, "b": 1}


def test_no_hosts_leaves_everything_unassigned() -> None:
    plan = plan_assignment(range(3), {}, {})
    assert plan == Plan(assignment=dict.fromkeys(range(3)), granted={}, revoked={}, unassigned=[0, 1, 2])
    assert not plan.changed


def test_clusters_removed_from_the_layout_are_revoked() -> None:
    hosts = hosts_of(HostView("a", 4))
    plan = plan_assignment([0, 1], hosts, {0: "a", 1: "a", 2: "a"})
    assert plan.revoked == {2: "a"}
    assert plan.reasons == {2: "not in layout"}
    assert plan.assignment == {0: "a", 1: "a"}


def test_free_clusters_go_to_the_least_loaded_host_by_ratio() -> None:
    # a: 2/4 = 0.5, b: 2/8 = 0.25 -> the two free clusters both go to b (0.25 -> 0.375 -> 0.5)
    hosts = hosts_of(HostView("a", 4), HostView("b", 8))
    current = {0: "a", 1: "a", 2: "b", 3: "b"}
    plan = plan_assignment(range(6), hosts, current)
    assert plan.granted == {4: "b", 5: "b"}


def test_a_healthy_host_keeps_its_clusters_even_when_unbalanced() -> None:
    hosts = hosts_of(HostView("a", 10), HostView("b", 10))
    current = dict.fromkeys(range(6), "a")
    plan = plan_assignment(range(6), hosts, current)
    assert not plan.changed
    assert plan_rebalance_step(range(6), hosts, current) is not None


@pytest.mark.parametrize(
    ("cluster_ids", "hosts", "match"),
    [
        ([0, 1, 1], {}, "appears more than once"),
        ([0], {"a": HostView("b", 1)}, "does not match"),
    ],
)
def test_bad_inputs_are_named(cluster_ids: list[int], hosts: dict[str, HostView], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_assignment(cluster_ids, hosts, {})


def test_negative_capacity_is_rejected() -> None:
    with pytest.raises(ValueError, match="host 'a': capacity"):
        HostView("a", -1)


# ------------------------------------------------------------------------------------------ rebalance: rules


def test_rebalance_moves_one_cluster_from_most_to_least_loaded() -> None:
    hosts = hosts_of(HostView("a", 8), HostView("b", 8), HostView("c", 8))
    current: dict[int, str | None] = {**dict.fromkeys(range(4), "a"), **dict.fromkeys(range(4, 6), "b")}
    assert plan_rebalance_step(range(6), hosts, current) == (3, "a", "c")


def test_rebalance_stops_when_a_move_would_not_narrow_the_gap() -> None:
    hosts = hosts_of(HostView("a", 8), HostView("b", 8))
    current: dict[int, str | None] = {0: "a", 1: "a", 2: "b"}
    assert plan_rebalance_step(range(3), hosts, current) is None
    assert is_balanced(range(3), hosts, current)


def test_rebalance_waits_for_an_unsettled_plan() -> None:
    hosts = hosts_of(HostView("a", 8), HostView("b", 8, alive=False))
    current: dict[int, str | None] = {0: "b", 1: "b"}
    assert plan_rebalance_step(range(2), hosts, current) is None
    assert not is_balanced(range(2), hosts, current)


def test_rebalance_respects_capacity_ratios() -> None:
    # a holds 2 of 2 (ratio 1), b 0 of 4: one move narrows the gap, a second would widen it (0 vs 0.5)
    hosts = hosts_of(HostView("a", 2), HostView("b", 4))
    current: dict[int, str | None] = {0: "a", 1: "a"}
    state, moves = settle(range(2), hosts, current)
    assert moves == [(1, "a", "b")]
    assert state == {0: "a", 1: "b"}


def test_rebalance_finds_a_gain_beyond_the_extreme_pair() -> None:
    # the most (x) and least (y) loaded hosts cannot trade usefully, but big1 -> big2 still narrows a gap
    hosts = hosts_of(HostView("x", 1), HostView("y", 1), HostView("big1", 100), HostView("big2", 100))
    current: dict[int, str | None] = {
        0: "x",
        **dict.fromkeys(range(1, 61), "big1"),
        **dict.fromkeys(range(61, 101), "big2"),
    }
    move = plan_rebalance_step(range(101), hosts, current)
    assert move is not None and move[1:] == ("big1", "big2")


def test_a_joining_host_takes_contiguous_edges() -> None:
    hosts = hosts_of(HostView("a", 8), HostView("b", 8))
    state, _ = settle(range(10), hosts, {})
    hosts["c"] = HostView("c", 8)
    assert not plan_assignment(range(10), hosts, state).changed
    state, moves = settle(range(10), hosts, state)
    assert [m[2] for m in moves] == ["c", "c", "c"]
    assert by_host(state) == {"a": [0, 1, 2], "c": [3, 4, 5], "b": [6, 7, 8, 9]}


# ------------------------------------------------------------------------------------------ properties

HOST_IDS = ["a", "b", "c", "d", "e", "h10", "h2"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[int], dict[str, HostView], dict[int, str | None]]:
    ids = draw(st.lists(st.sampled_from(HOST_IDS), min_size=0, max_size=5, unique=True))
    hosts = {
        host_id: HostView(
            host_id,
            capacity=draw(st.integers(0, 12)),
            alive=draw(st.sampled_from([True, True, True, False])),
            draining=draw(st.sampled_from([False, False, False, False, True])),
        )
        for host_id in ids
    }
    cluster_ids = sorted(draw(st.sets(st.integers(0, 40), max_size=30)))
    owners = [None, "ghost", *ids]
    current = {c: draw(st.sampled_from(owners)) for c in draw(st.sets(st.integers(0, 45), max_size=30))}
    return cluster_ids, hosts, current


def healthy_hosts(count: int) -> st.SearchStrategy[dict[str, HostView]]:
    return st.lists(st.integers(1, 10), min_size=count, max_size=count).map(
        lambda caps: {HOST_IDS[i]: HostView(HOST_IDS[i], cap) for i, cap in enumerate(caps)}
    )


@settings(max_examples=300)
@given(scenarios())
def test_plan_invariants(scenario: tuple[list[int], dict[str, HostView], dict[int, str | None]]) -> None:
    cluster_ids, hosts, current = scenario
    plan = plan_assignment(cluster_ids, hosts, current)
    # every cluster of the layout appears exactly once; nothing else does
    assert list(plan.assignment) == cluster_ids
    load = Counter(h for h in plan.assignment.values() if h is not None)
    for host_id, count in load.items():
        host = hosts[host_id]
        assert host.alive and not host.draining, f"{host_id} got clusters while unhealthy"
        assert count <= host.capacity, f"{host_id} over capacity"
    # granted / revoked / unassigned describe exactly the difference from current
    for c in cluster_ids:
        before, after = current.get(c), plan.assignment[c]
        assert (c in plan.granted) == (after is not None and after != before)
        assert (c in plan.revoked) == (before is not None and after != before)
    for c, owner in current.items():
        if c not in plan.assignment and owner is not None:
            assert plan.revoked[c] == owner
    assert set(plan.reasons) == set(plan.revoked)
    assert plan.unassigned == [c for c in cluster_ids if plan.assignment[c] is None]
    spare = [h for h in hosts.values() if h.eligible and load[h.id] < h.capacity]
    assert not (plan.unassigned and spare), "a cluster stayed unassigned while a host had room"
    # stickiness: a healthy host within capacity keeps everything it had
    for host_id, host in hosts.items():
        had = [c for c in cluster_ids if current.get(c) == host_id]
        if host.eligible and len(had) <= host.capacity:
            assert all(plan.assignment[c] == host_id for c in had)
    # the greedy rule: a host received its last grant only while no host with room was less loaded
    for host_id in set(plan.granted.values()):
        before_last = Fraction(load[host_id] - 1, hosts[host_id].capacity)
        assert all(before_last <= Fraction(load[h.id], h.capacity) for h in spare)
    # a plan applied is settled
    assert not plan_assignment(cluster_ids, hosts, plan.assignment).changed


@given(scenarios())
def test_plan_is_deterministic(scenario: tuple[list[int], dict[str, HostView], dict[int, str | None]]) -> None:
    cluster_ids, hosts, current = scenario
    first = plan_assignment(cluster_ids, hosts, current)
    shuffled_hosts = dict(reversed(list(hosts.items())))
    shuffled_current = dict(reversed(list(current.items())))
    again = plan_assignment(list(reversed(cluster_ids)), shuffled_hosts, shuffled_current)
    assert first == again
    assert plan_rebalance_step(cluster_ids, hosts, first.assignment) == plan_rebalance_step(
        cluster_ids, shuffled_hosts, first.assignment
    )


@given(count=st.integers(1, 40), hosts=st.integers(1, 5).flatmap(healthy_hosts))
def test_initial_placement_is_contiguous_per_host(count: int, hosts: dict[str, HostView]) -> None:
    plan = plan_assignment(range(count), hosts, {})
    for clusters in by_host(plan.assignment).values():
        assert clusters == list(range(clusters[0], clusters[-1] + 1))


@settings(max_examples=200)
@given(scenarios())
def test_rebalancing_ends_balanced_and_each_step_narrows_a_gap(
    scenario: tuple[list[int], dict[str, HostView], dict[int, str | None]],
) -> None:
    cluster_ids, hosts, current = scenario
    state = dict(plan_assignment(cluster_ids, hosts, current).assignment)
    for _ in range(10 * len(cluster_ids) + 10):
        move = plan_rebalance_step(cluster_ids, hosts, state)
        if move is None:
            break
        cluster_id, source, target = move
        load = Counter(h for h in state.values() if h is not None)
        gap = Fraction(load[source], hosts[source].capacity) - Fraction(load[target], hosts[target].capacity)
        new_gap = Fraction(load[source] - 1, hosts[source].capacity) - Fraction(
            load[target] + 1, hosts[target].capacity
        )
        assert state[cluster_id] == source and hosts[target].eligible
        assert load[target] < hosts[target].capacity
        assert abs(new_gap) < gap
        state[cluster_id] = target
    else:
        raise AssertionError("rebalancing did not end")
    assert is_balanced(cluster_ids, hosts, state)
    if len({h.capacity for h in hosts.values() if h.eligible}) == 1:
        load = Counter(h for h in state.values() if h is not None)
        counts = [load[h.id] for h in hosts.values() if h.eligible]
        assert max(counts) - min(counts) <= 1


@settings(max_examples=200)
@given(count=st.integers(0, 40), hosts=st.integers(1, 4).flatmap(healthy_hosts), new_cap=st.integers(1, 10))
def test_a_joining_host_moves_only_what_balance_needs(count: int, hosts: dict[str, HostView], new_cap: int) -> None:
    cluster_ids = list(range(count))
    state, _ = settle(cluster_ids, hosts, {})
    hosts["new"] = HostView("new", new_cap)
    plan = plan_assignment(cluster_ids, hosts, state)
    assert plan.revoked == {}
    unplaced = {c for c in cluster_ids if state[c] is None}
    assert set(plan.granted) <= unplaced, "only unplaced clusters move"
    assert len(plan.granted) == min(len(unplaced), new_cap)
    final, moves = settle(cluster_ids, hosts, state)
    moved = [m[0] for m in moves]
    assert len(moved) == len(set(moved)), "a cluster moved twice"
    assert all(target == "new" for _, _, target in moves), "clusters shuffled between old hosts"
    on_new = sum(1 for h in final.values() if h == "new")
    assert len(moves) == on_new - len(plan.granted)


@settings(max_examples=200)
@given(count=st.integers(0, 40), hosts=st.integers(2, 5).flatmap(healthy_hosts), data=st.data())
def test_a_leaving_host_moves_only_its_clusters(count: int, hosts: dict[str, HostView], data: st.DataObject) -> None:
    cluster_ids = list(range(count))
    state, _ = settle(cluster_ids, hosts, {})
    leaving = data.draw(st.sampled_from(sorted(hosts)))
    how = data.draw(st.sampled_from(["dead", "draining", "gone"]))
    if how == "gone":
        del hosts[leaving]
    else:
        hosts[leaving] = HostView(leaving, hosts[leaving].capacity, alive=how != "dead", draining=how == "draining")
    plan = plan_assignment(cluster_ids, hosts, state)
    theirs = {c for c in cluster_ids if state[c] == leaving}
    assert set(plan.revoked) == theirs
    for c in cluster_ids:
        if c not in theirs and state[c] is not None:
            assert plan.assignment[c] == state[c]
        assert plan.assignment[c] != leaving
