"""The broker's reshard decisions (pure, broker.reshard_plan): the new layout, placement, switch, rollback, done."""

from __future__ import annotations

from letsfrag.broker.moves import HostFacts
from letsfrag.broker.reshard_plan import (
    BudgetView,
    CurrentLayout,
    HostRoom,
    ReshardAction,
    ReshardPlan,
    auto_reshard_reason,
    decide_reshard,
    new_layout,
    old_running,
    place,
    plan_reshard,
    ready_clusters,
    sharding_target,
)
from letsfrag.contract.handover import SuccessorReport, SuccessorState
from letsfrag.contract.records import Grant, LayoutRecord
from letsfrag.contract.reshard import ReshardRecord, ReshardState

LIVE = LayoutRecord.from_hash({"shard_count": "8", "shards_per_cluster": "4", "cluster_count": "2",
                               "max_concurrency": "4", "identify_window": "1", "lease_ttl": "10", "lease_grace": "2",
                               "heartbeat_interval": "2"})


def _plan() -> ReshardPlan:
    plan = plan_reshard(CurrentLayout(1, 8, 4, 4, 1.0), {"h1": HostRoom(4, 1), "h2": HostRoom(4, 1)},
                        BudgetView(None, None, 0.1), shards=16)
    assert isinstance(plan, ReshardPlan)
    return plan


def test_the_new_layout_numbers_its_clusters_after_the_live_ones_and_alternates_hosts() -> None:
    layout = new_layout(LIVE, _plan())
    assert (layout.generation, layout.shard_count, list(layout.cluster_ids)) == (2, 16, [2, 3, 4, 5])
    assert layout.lease_ttl == LIVE.lease_ttl and layout.max_concurrency == 4
    assert place(layout, _plan()) == {2: "h1", 3: "h2", 4: "h1", 5: "h2"}


def _record(state: ReshardState = ReshardState.PREPARING, deadline: float = 160.0) -> ReshardRecord:
    layout = new_layout(LIVE, _plan())
    return ReshardRecord(generation=2, from_generation=1, state=state, started=100.0, deadline=deadline,
                         layout=layout.to_hash(), clusters={2: Grant("h1", 11), 3: Grant("h2", 12)}, retiring=(0, 1))


def _hosts(states: dict[int, SuccessorState], *, running: dict[str, dict[int, int]] | None = None,
           alive: bool = True) -> dict[str, HostFacts]:
    running = running or {}
    out = {}
    for host, cid, epoch in (("h1", 2, 11), ("h2", 3, 12)):
        reports = {cid: SuccessorReport(cid, epoch, states[cid], reason="boom")} if cid in states else {}
        out[host] = HostFacts(alive if host == "h2" else True, running.get(host, {}), reports)
    return out


def test_it_waits_until_every_new_cluster_is_ready_then_switches() -> None:
    record = _record()
    one = _hosts({2: SuccessorState.READY, 3: SuccessorState.STARTING})
    assert decide_reshard(record, 120.0, one).action is ReshardAction.WAIT
    assert ready_clusters(record, one) == [2]
    both = _hosts({2: SuccessorState.READY, 3: SuccessorState.READY})
    assert decide_reshard(record, 120.0, both).action is ReshardAction.SWITCH


def test_a_failed_or_lost_or_late_new_cluster_rolls_back_naming_it() -> None:
    record = _record()
    failed = decide_reshard(record, 120.0, _hosts({2: SuccessorState.READY, 3: SuccessorState.FAILED}))
    assert (failed.action, failed.cluster) == (ReshardAction.ROLLBACK, 3) and "failed on h2: boom" in failed.reason
    lost = decide_reshard(record, 120.0, _hosts({2: SuccessorState.READY}, alive=False))
    assert (lost.action, lost.cluster) == (ReshardAction.ROLLBACK, 3) and "h2 is not alive" in lost.reason
    late = decide_reshard(record, 161.0, _hosts({3: SuccessorState.READY}))
    assert (late.action, late.cluster) == (ReshardAction.ROLLBACK, 2)
    assert late.reason == "cluster 2 of generation 2 was not ready within 60s"
    assert decide_reshard(record, 159.0, _hosts({})).action is ReshardAction.WAIT


def test_after_the_switch_it_is_done_once_the_old_clusters_stopped_and_settled() -> None:
    record = _record(ReshardState.SWITCHED, deadline=200.0)
    hosts = _hosts({}, running={"h1": {0: 4, 2: 11}})
    assert old_running(record, hosts) == [0]
    assert decide_reshard(record, 150.0, hosts).action is ReshardAction.WAIT
    gone = _hosts({}, running={"h1": {2: 11}})
    assert old_running(record, gone) == []
    assert decide_reshard(record, 150.0, gone, stopped_since=149.0, settle=2.0).action is ReshardAction.WAIT
    done = decide_reshard(record, 151.0, gone, stopped_since=149.0, settle=2.0)
    assert done.action is ReshardAction.DONE and "stopped" in done.reason
    late = decide_reshard(record, 201.0, hosts)
    assert late.action is ReshardAction.DONE and "in time" in late.reason


def test_after_a_4011_the_target_is_the_recommendation_if_more_else_twice_the_shards() -> None:
    assert sharding_target(8, 4, None) == 16
    assert sharding_target(8, 4, 6) == 16  # not more than now: split every shard
    assert sharding_target(8, 4, 13) == 16  # rounded up to a multiple of max_concurrency
    assert sharding_target(8, 4, 40) == 40
    assert sharding_target(3, 1, None) == 6


def test_an_automatic_reshard_is_due_when_a_shard_passes_the_threshold_naming_the_fullest() -> None:
    assert auto_reshard_reason({0: 10, 1: 3}, 10) is None
    assert auto_reshard_reason({}, 10) is None
    assert auto_reshard_reason({0: 12, 1: 15, 2: 15}, 10) == \
        "shard 1 holds 15 guilds, more than reshard.max_guilds_per_shard 10 (and 2 more)"


def test_a_host_without_handovers_receives_no_new_cluster() -> None:
    rooms = {"h1": HostRoom(6, 1), "h2": HostRoom(6, 1, handovers=False)}
    plan = plan_reshard(CurrentLayout(1, 8, 4, 4, 1.0), rooms, BudgetView(None, None, 0.1), shards=16)
    assert isinstance(plan, ReshardPlan) and plan.hosts == {"h1": 4} and "h2" not in plan.free
    refusal = plan_reshard(CurrentLayout(1, 8, 4, 4, 1.0), rooms, BudgetView(None, None, 0.1), shards=32)
    assert not isinstance(refusal, ReshardPlan)
    assert refusal.message.endswith("h2 cannot start them gated (an older supervisor without handovers))")
