"""The broker against a real redis-server and protocol-level fake hosts: startup, failover, leave, join."""

from __future__ import annotations

import time

from support.broker import GRACE, TTL, Deployment, make_config
from support.waiting import scaled, wait_until


async def test_startup_waits_for_expected_hosts_then_balances(deployment: Deployment) -> None:
    dep = deployment
    ready: list[bool] = []
    assigned: list[tuple[int, str | None, int]] = []
    connected: list[str] = []

    async def on_assign(cluster: int, host: str | None, epoch: int) -> None:  # async callbacks work too
        assigned.append((cluster, host, epoch))

    broker = await dep.broker()
    broker.on("ready", lambda: ready.append(True))
    broker.on("assign", on_assign)
    broker.on("connect", connected.append)
    await dep.host("h1")
    await wait_until(lambda: broker.is_leader, message="leadership")
    await wait_until(lambda: broker.reconciler and broker.reconciler.state == "waiting_for_hosts")
    assert await dep.assignment() == {}  # one of two expected hosts: nothing is granted yet
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}), message="2+2 clusters")
    assert await dep.owners() == {0: "h1", 1: "h1", 2: "h2", 3: "h2"}
    assert ready == [True]
    await wait_until(lambda: len(assigned) == 4)
    assert sorted(assigned) == [(0, "h1", 1), (1, "h1", 2), (2, "h2", 3), (3, "h2", 4)]
    assert sorted(connected) == ["h1", "h2"]
    assert broker.assignment == {0: "h1", 1: "h1", 2: "h2", 3: "h2"}
    assert [c.shard_range for c in broker.layout] == ["0–7", "8–15", "16–23", "24–31"]
    info = await dep.redis.hgetall(dep.keys.broker)
    assert info["state"] == "running" and info["unassigned"] == "0" and info["id"] == broker.broker_id
    layout = await dep.redis.hgetall(dep.keys.layout)
    assert layout["shard_count"] == "32" and layout["cluster_count"] == "4"
    assert sorted(e for _, e in (await dep.assignment()).values()) == [1, 2, 3, 4]
    assert dep.ledger.violations == []


async def test_startup_grace_assigns_with_fewer_hosts(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 3, "startup_grace": 0.5}))
    await dep.host("h1", capacity=4)
    await wait_until(lambda: dep.settled({"h1": 4}), message="all clusters on h1 after the grace")


async def test_failover_after_ttl_plus_grace_not_before(deployment: Deployment) -> None:
    dep = deployment
    lost: list[tuple[str, str]] = []
    broker = await dep.broker()
    broker.on("disconnect", lambda host, reason: lost.append((host, reason)))
    h1 = await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    before = await dep.assignment()
    killed_at = time.monotonic()
    await h1.kill()
    lease_gone = await wait_until(
        lambda: _gone_at(dep, "h1"), timeout=TTL + 2, message="h1's lease to expire")
    # while the lease is merely late (missing < grace), nothing moves
    moved_at = await wait_until(lambda: _changed_at(dep, before), timeout=TTL + GRACE + 5, interval=0.02)
    assert moved_at - lease_gone >= GRACE - 0.1, "clusters moved before the grace period was over"
    assert moved_at - killed_at >= TTL + GRACE - 0.15
    await wait_until(lambda: dep.settled({"h2": 4}), message="h2 runs everything")
    after = await dep.assignment()
    assert all(after[c][1] > before[c][1] for c in (0, 1)), "moved clusters get newer epochs"
    assert after[2] == before[2] and after[3] == before[3], "survivor's clusters untouched"
    assert await dep.redis.hget(dep.keys.host("h1"), "state") == "lost"
    assert lost == [("h1", "lease expired")]
    assert [e["host"] for e in await dep.events("host_lost")] == ["h1"]
    assert dep.ledger.violations == []


async def _gone_at(dep: Deployment, host: str) -> float | None:
    return None if await dep.redis.exists(dep.keys.lease(host)) else time.monotonic()


async def _changed_at(dep: Deployment, before: dict[int, tuple[str, int]]) -> float | None:
    return time.monotonic() if await dep.assignment() != before else None


async def test_lost_clusters_wait_for_capacity(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker()
    h1 = await dep.host("h1", capacity=2)
    await dep.host("h2", capacity=2)
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    await h1.kill()
    await wait_until(lambda: dep.events("cluster_unassigned"), timeout=5, message="an unassigned error event")
    assert await dep.owners() == {2: "h2", 3: "h2"}
    await dep.host("h3", capacity=4)
    # the orphans go to h3 first; then ``rebalance: on-join`` weighs the capacities (2 and 4) and moves one of h2's
    # clusters over too. (The test used to wait for the moment between the two, which a busy machine skipped.)
    await wait_until(lambda: dep.settled({"h2": 1, "h3": 3}), message="h3 takes the orphans, then one more")
    assignment = await dep.assignment()
    epochs = {c: epoch for c, (_, epoch) in assignment.items()}
    moved = next(c for c in (2, 3) if assignment[c][0] == "h3")
    assert max(epochs[0], epochs[1]) < epochs[moved], f"the orphans were granted before the rebalance: {epochs}"
    assert dep.ledger.violations == []


async def test_clean_leave_moves_at_once(deployment: Deployment) -> None:
    dep = deployment
    broker = await dep.broker(make_config(dep.url, lease={"ttl": 5.0, "grace": 5.0}, heartbeat_interval=0.1))
    left: list[str] = []
    broker.on("disconnect", lambda host, reason: left.append(reason))
    h1 = await dep.host("h1", lease_ttl=5.0)
    await dep.host("h2", lease_ttl=5.0)
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    started = time.monotonic()
    await h1.leave()
    await wait_until(lambda: dep.settled({"h2": 4}), timeout=3, message="h2 runs everything")
    assert time.monotonic() - started < scaled(2.0), "a clean leave must not wait for the lease"
    assert left == ["left"]
    await wait_until(lambda: _not_member(dep, "h1"), message="h1 removed from the hosts set")
    assert dep.ledger.violations == []


async def _not_member(dep: Deployment, host: str) -> bool:
    return not await dep.redis.sismember(dep.keys.hosts, host)


async def test_join_on_join_rebalances_one_move_at_a_time(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, shards=48))  # 6 clusters
    await dep.host("h1", capacity=6)
    await dep.host("h2", capacity=6)
    await wait_until(lambda: dep.settled({"h1": 3, "h2": 3}))
    epochs_before = {c: e for c, (_, e) in (await dep.assignment()).items()}
    await dep.host("h3", capacity=6)
    observed: list[dict[str, dict[int, int]]] = []

    async def balanced() -> bool:
        running = await dep.running()
        observed.append(running)
        holders: dict[int, list[str]] = {}
        for host, clusters in running.items():
            for cluster in clusters:
                holders.setdefault(cluster, []).append(host)
        assert all(len(h) == 1 for h in holders.values()), f"two hosts list one cluster: {holders}"
        return await dep.settled({"h1": 2, "h2": 2, "h3": 2})

    await wait_until(balanced, timeout=10, interval=0.02, message="2+2+2")
    assert dep.ledger.violations == []
    # each move is revoke -> stop confirmed -> grant, in that order, one cluster at a time
    moves = [h for h in dep.ledger.history if h[2] == "h3" or h[0] == "stop"]
    starts_h3 = [h for h in dep.ledger.history if h[0] == "start" and h[2] == "h3"]
    assert len(starts_h3) == 2
    for _, cluster, _, _ in starts_h3:
        i_start = dep.ledger.history.index(("start", cluster, "h3", _epoch(dep, cluster, "h3")))
        assert any(h[0] == "stop" and h[1] == cluster for h in dep.ledger.history[:i_start]), moves
    steps = await dep.events("rebalance_step")
    assert len(steps) == 2
    after = await dep.assignment()
    assert all(after[c][1] >= epochs_before[c] for c in after), "epochs only grow"


def _epoch(dep: Deployment, cluster: int, host: str) -> int:
    return next(e for a, c, h, e in dep.ledger.history if a == "start" and c == cluster and h == host)


async def test_manual_mode_keeps_joiner_empty_until_rebalance(deployment: Deployment) -> None:
    dep = deployment
    broker = await dep.broker(make_config(dep.url, rebalance="manual"))
    h1 = await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    await dep.host("h3")
    await wait_until(lambda: h3_seen(broker), message="broker sees h3")
    for _ in range(5):  # several ticks: h3 stays a hot spare
        await broker.wait_tick(1.0)
    assert await dep.counts() == {"h1": 2, "h2": 2}
    # failover uses the hot spare
    await h1.kill()
    await wait_until(lambda: dep.settled({"h2": 2, "h3": 2}), timeout=TTL + GRACE + 5)
    # manual rebalance: a new host joins; the command moves clusters to it
    await dep.host("h4")
    await wait_until(lambda: "h4" in (broker.reconciler.hosts if broker.reconciler else {}))
    from letsfrag.bus import Bus
    from letsfrag.contract.envelope import MessageType

    async with Bus(dep.url, node_id="tool:test") as tool:
        reply = await tool.request(dep.keys.broker_inbox, MessageType.COMMAND, {"action": "rebalance"},
                                   timeout=10)
    assert reply["ok"] is True, reply
    await wait_until(lambda: dep.settled({"h2": 1, "h3": 2, "h4": 1}) or dep.settled({"h2": 2, "h3": 1, "h4": 1}))
    assert dep.ledger.violations == []


def h3_seen(broker: object) -> bool:
    rec = getattr(broker, "reconciler", None)
    return rec is not None and "h3" in rec.membership.verdicts
