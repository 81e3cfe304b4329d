"""A reshard through real brokers and redis-server, the test playing the supervisors (FakeHost with handovers): it
finishes, and a new leader broker continues one it finds, before or after the switch (letsfrag/contract/reshard.py)."""

from __future__ import annotations

import json

from support.broker import Deployment, make_config
from support.waiting import wait_until

from letsfrag.broker.broker import ClusterBroker
from letsfrag.clock import SystemClock
from letsfrag.cluster.ownership import OwnershipChecker
from letsfrag.config import BrokerConfig

#: 8 shards in 2 clusters of 4, one on each host; a reshard to 16 prepares clusters 2-5
NEW = [2, 3, 4, 5]


def _config(dep: Deployment) -> BrokerConfig:
    return make_config(dep.url, shards=8, shards_per_cluster=4, max_concurrency=4, hosts={"expected": 2},
                       rebalance="manual", leader_ttl=1.0)


async def _two_leaders(dep: Deployment, **hosts: object) -> tuple[ClusterBroker, ClusterBroker]:
    first = await dep.broker(_config(dep), broker_id="b1", move_timeout=30.0, handover_timeout=30.0)
    await wait_until(lambda: first.is_leader, message="b1 leads")
    second = await dep.broker(_config(dep), broker_id="b2", move_timeout=30.0, handover_timeout=30.0)
    for host in ("h1", "h2"):
        await dep.host(host, handovers=True, **hosts)  # type: ignore[arg-type]
    await wait_until(lambda: dep.settled({"h1": 1, "h2": 1}), message="one cluster on each host")
    return first, second


async def _reshard_to_16(broker: ClusterBroker) -> None:
    assert broker.reconciler is not None
    broker.reconciler.request_reshard(30.0, shards=16, recommended=None, use_recommended=False)
    broker.wake()


async def _layout(dep: Deployment) -> tuple[str | None, str | None]:
    raw = await dep.redis.hgetall(dep.keys.layout)
    return raw.get("generation"), raw.get("shard_count")


async def _finished(dep: Deployment) -> bool:
    """Generation 2 serves alone: its grants only, each host runs exactly them, no reshard or handover record."""
    if await dep.redis.exists(dep.keys.reshard, dep.keys.handover):
        return False
    owners = await dep.owners()
    running = {c for host in dep.hosts.values() for c in host.running}
    return sorted(owners) == NEW and running == set(NEW) and await _layout(dep) == ("2", "16")


async def test_a_new_leader_finishes_a_reshard_it_finds_preparing(deployment: Deployment) -> None:
    dep = deployment
    first, second = await _two_leaders(dep, successor="never")
    await _reshard_to_16(first)
    raw = await wait_until(lambda: dep.redis.get(dep.keys.reshard), message="b1 prepares generation 2")
    assert json.loads(raw)["state"] == "preparing"
    await first.close()  # releases the lock: b2 takes over
    await wait_until(lambda: second.is_leader, message="b2 leads")
    for host in dep.hosts.values():
        host.successor = "ready"
        for entry in host.successors.values():
            entry[2] = "starting"
    await wait_until(lambda: _finished(dep), message="b2 switched and retired the reshard b1 began")
    assert {h for h, _ in (await dep.assignment()).values()} == {"h1", "h2"}
    assert sorted(c for host in dep.hosts.values() for c, _ in host.promoted) == NEW
    assert await dep.events("reshard_switched") and await dep.events("reshard_done")
    assert not await dep.events("reshard_rolled_back")
    assert not dep.ledger.violations


async def test_a_new_leader_keeps_the_switched_generation_and_retires_the_old_one(deployment: Deployment) -> None:
    dep = deployment
    first, second = await _two_leaders(dep, confirm_stops=False)  # the old clusters keep running: not retired
    await _reshard_to_16(first)
    await wait_until(lambda: _switched(dep), message="b1 switched to generation 2")
    assert await _layout(dep) == ("2", "16")
    await first.close()
    await wait_until(lambda: second.is_leader, message="b2 leads")
    # b2's config says 8 shards: the stored generation 2 is kept, not rewritten
    await wait_until(lambda: dep.events("layout_generation_kept"), message="b2 says it keeps generation 2")
    for _ in range(3):
        await second.wait_tick(5.0)
    assert await _layout(dep) == ("2", "16") and sorted(await dep.owners()) == NEW
    for host in dep.hosts.values():
        host.confirm_stops = True
    await wait_until(lambda: _finished(dep), message="b2 retired generation 1")
    assert await dep.events("reshard_done")
    for cid in (0, 1):
        assert not await dep.redis.exists(dep.keys.cluster_status(cid), dep.keys.session_records(cid))


async def _switched(dep: Deployment) -> bool:
    raw = await dep.redis.get(dep.keys.reshard)
    return raw is not None and json.loads(raw)["state"] == "switched"


async def test_a_broker_restarted_with_another_shard_count_reshards_to_it(deployment: Deployment) -> None:
    """Changing ``shards`` in the config and restarting the broker reshards the same way (never a silent full
    restart); restarting it again with that config changes nothing."""
    dep = deployment
    first = await dep.broker(_config(dep), broker_id="b1")
    for host in ("h1", "h2"):
        await dep.host(host, handovers=True)
    await wait_until(lambda: dep.settled({"h1": 1, "h2": 1}), message="one cluster on each host")
    assert (await dep.redis.hgetall(dep.keys.layout))["config_shards"] == "8"
    await first.close()
    sixteen = make_config(dep.url, shards=16, shards_per_cluster=4, max_concurrency=4, hosts={"expected": 2},
                          rebalance="manual", leader_ttl=1.0)
    second = await dep.broker(sixteen, broker_id="b2")
    await wait_until(lambda: _finished(dep), message="b2 resharded to its config's 16 shards")
    assert len(await dep.events("reshard_from_config")) == 1
    assert (await dep.redis.hgetall(dep.keys.layout))["config_shards"] == "16"
    assert not dep.ledger.violations
    await second.close()
    third = await dep.broker(sixteen, broker_id="b3")
    await wait_until(lambda: third.is_leader, message="b3 leads")
    for _ in range(3):
        await third.wait_tick(5.0)
    assert await _finished(dep) and await _layout(dep) == ("2", "16")
    assert len(await dep.events("reshard_from_config")) == 1 and not await dep.events("layout_generation_kept")


async def test_a_cluster_closed_with_4011_reshards_to_twice_the_shards(deployment: Deployment) -> None:
    """A supervisor lists a cluster Discord closed with 4011 in ``sharding_required``: the broker reshards once,
    to twice the shards (no /gateway/bot answer here), and forgets the old generation's report."""
    dep = deployment
    broker = await dep.broker(_config(dep), broker_id="b1")
    for host in ("h1", "h2"):
        await dep.host(host, handovers=True)
    await wait_until(lambda: dep.settled({"h1": 1, "h2": 1}), message="one cluster on each host")
    host, cluster = next((h, c) for c, h in sorted((await dep.owners()).items()))
    await dep.redis.hset(dep.keys.host(host), "sharding_required", json.dumps([cluster]))
    broker.wake()
    await wait_until(lambda: _finished(dep), message="resharded to 16 after the 4011")
    events = await dep.events("sharding_required")
    assert len(events) == 1 and "8 -> 16 shards (generation 2)" in events[0]["message"], events
    assert json.loads(events[0]["clusters"]) == [cluster]
    for _ in range(3):
        await broker.wait_tick(5.0)
    assert len(await dep.events("reshard_started")) == 1, "the old generation's report starts nothing more"


async def test_reshard_auto_reshards_when_a_shard_passes_the_threshold(deployment: Deployment) -> None:
    """``reshard.auto``: the leader reads the guild counts the clusters report per shard every check_interval and
    reshards (to twice the shards here) once one passes ``max_guilds_per_shard``, saying why."""
    dep = deployment
    config = make_config(dep.url, shards=8, shards_per_cluster=4, max_concurrency=4, hosts={"expected": 2},
                         rebalance="manual", reshard={"auto": True, "max_guilds_per_shard": 10,
                                                      "check_interval": 0.3})
    broker = await dep.broker(config, broker_id="b1")
    for host in ("h1", "h2"):
        await dep.host(host, handovers=True)
    await wait_until(lambda: dep.settled({"h1": 1, "h2": 1}), message="one cluster on each host")
    for cid, shards in ((0, range(4)), (1, range(4, 8))):  # what the clusters' health reports would write
        await dep.redis.hset(dep.keys.shard_status(cid), mapping={str(s): json.dumps({"guilds": 10}) for s in shards})
    for _ in range(3):
        await broker.wait_tick(5.0)
    assert not await dep.redis.exists(dep.keys.reshard) and not await dep.events("reshard_auto"), "10 is not over"
    await dep.redis.hset(dep.keys.shard_status(1), "6", json.dumps({"guilds": 11}))
    await wait_until(lambda: _finished(dep), message="resharded to 16 by itself")
    events = await dep.events("reshard_auto")
    assert len(events) == 1, events
    assert events[0]["message"].startswith("shard 6 holds 11 guilds, more than reshard.max_guilds_per_shard 10: "
                                           "resharding 8 -> 16 shards (generation 2, reshard.auto)")


async def test_a_generation_a_reshard_started_is_handed_over_by_the_next_reshard_not_fenced(
        deployment: Deployment) -> None:
    """Generation 2's processes were started as reshard successors (``LETSFRAG_HANDOVER=1``) and became the
    exclusive owners; when the reshard 16 -> 8 retires them, their ownership check (as the process makes it, through
    :class:`OwnershipChecker` against the real keys the switch script wrote) finds them handed over, serving until
    their supervisors stop them, like generation 1's were: not fenced for a shard range the new layout does not give
    them. (Seen in the chaos test's 16 -> 8 story whenever a check fell between the switch and the stop.)"""
    dep = deployment
    broker = await dep.broker(_config(dep), broker_id="b1")
    for host in ("h1", "h2"):
        await dep.host(host, handovers=True)
    await wait_until(lambda: dep.settled({"h1": 1, "h2": 1}), message="one cluster on each host")
    await _reshard_to_16(broker)
    await wait_until(lambda: _finished(dep), message="generation 2 serves alone")
    host, epoch = (await dep.assignment())[2]
    checker = OwnershipChecker(dep.redis, dep.keys, cluster_id=2, host_id=host, epoch=epoch,
                               incarnation=dep.hosts[host].incarnation, lease_ttl=5.0, clock=SystemClock(),
                               shard_ids=(0, 1, 2, 3), successor=True)
    owner = (await checker.check()).ownership
    assert owner.owner and owner.exclusive, owner
    for fake in dep.hosts.values():
        fake.confirm_stops = False  # generation 2 keeps running after the next switch: the check sees it retired
    assert broker.reconciler is not None
    broker.reconciler.request_reshard(30.0, shards=8, recommended=None, use_recommended=False)
    broker.wake()
    await wait_until(lambda: _switched(dep), message="switched to generation 3")
    assert await _layout(dep) == ("3", "8")
    retired = (await checker.check()).ownership
    assert not retired.fenced, retired.reason
    assert retired.owner and retired.handed_over and "retired by the reshard to generation 3" in retired.reason
    # a successor that never became the owner is still fenced once its reshard is gone (a rollback)
    never = OwnershipChecker(dep.redis, dep.keys, cluster_id=3, host_id=host, epoch=epoch + 100,
                             incarnation=dep.hosts[host].incarnation, lease_ttl=5.0, clock=SystemClock(),
                             shard_ids=(4, 5, 6, 7), successor=True)
    assert (await never.check()).ownership.fenced
