"""Durable state, drain, epochs, adoption and move timeouts of the broker."""

from __future__ import annotations

from typing import Any

from support.broker import Deployment, make_config
from support.waiting import wait_until

from letsfrag.bus import Bus
from letsfrag.contract.envelope import MessageType


async def command(dep: Deployment, payload: dict[str, Any], secret: str | None = None,
                  timeout: float = 10) -> Any:
    async with Bus(dep.url, node_id="tool:test", secret=secret) as tool:
        return await tool.request(dep.keys.broker_inbox, MessageType.COMMAND, payload, timeout=timeout)


async def test_drain_moves_clusters_one_at_a_time_then_undrain(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, rebalance="manual"))
    await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    reply = await command(dep, {"action": "drain", "host": "h1"})
    assert reply["ok"] is True and reply["done"] is True, reply
    assert "2 cluster(s) moved" in reply["message"]
    assert await dep.settled({"h2": 4})
    assert await dep.redis.hget(dep.keys.host("h1"), "state") == "draining"
    assert len(await dep.events("drain")) == 3  # the request and one event per move
    assert dep.ledger.violations == []
    # a draining host gets nothing new, even on rebalance
    reply = await command(dep, {"action": "rebalance"})
    assert reply["ok"] is True and await dep.counts() == {"h2": 4}
    reply = await command(dep, {"action": "undrain", "host": "h1"})
    assert reply == {"ok": True, "message": "host h1 undrained"}
    assert await dep.redis.hget(dep.keys.host("h1"), "state") == "up"
    reply = await command(dep, {"action": "rebalance"})
    assert reply["ok"] and reply["done"], reply
    assert await dep.counts() == {"h1": 2, "h2": 2}
    assert dep.ledger.violations == []


async def test_drain_unknown_host_and_bad_action_are_clear_errors(deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 1}))
    await dep.host("h1")
    await wait_until(lambda: dep.settled({"h1": 4}))
    reply = await command(dep, {"action": "drain", "host": "nope"})
    assert reply == {"ok": False, "message": "drain: unknown host 'nope' (known hosts: h1)"}
    reply = await command(dep, {"action": "explode"})
    assert reply["ok"] is False and "unknown action 'explode'" in reply["message"]
    reply = await command(dep, {"action": "drain", "host": "h1"})
    assert reply["ok"] is False and "no other host has room" in reply["message"]
    assert await dep.counts() == {"h1": 4}, "a drain without room keeps the clusters running"


async def test_restarted_broker_changes_nothing_and_epochs_only_grow(deployment: Deployment) -> None:
    dep = deployment
    first = await dep.broker(broker_id="b1")
    await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    before = await dep.assignment()
    epoch = int(await dep.redis.get(dep.keys.epoch))
    await first.close()
    second = await dep.broker(broker_id="b2")
    await wait_until(lambda: second.is_leader, message="b2 leads")
    for _ in range(5):
        await second.wait_tick(1.0)
    assert await dep.assignment() == before
    assert int(await dep.redis.get(dep.keys.epoch)) == epoch
    assert len(await dep.events("cluster_granted")) == 4, "only the first broker granted anything"
    assert second.assignment == {c: h for c, (h, _) in before.items()}


async def test_adoption_after_flushall(deployment: Deployment) -> None:
    dep = deployment
    broker = await dep.broker()
    await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    before = await dep.assignment()
    top = max(e for _, e in before.values())
    await dep.redis.flushall()
    await wait_until(lambda: _same(dep, before), timeout=5, message="assignment adopted back from claims")
    assert int(await dep.redis.get(dep.keys.epoch)) >= top, "epoch raised to the claimed epochs"
    await wait_until(lambda: dep.redis.exists(dep.keys.layout), message="layout rewritten")
    adopted = await dep.events("cluster_adopted")
    assert sorted(int(e["cluster"]) for e in adopted) == [0, 1, 2, 3]
    assert broker.is_leader
    # a later grant gets an epoch above every claimed one
    await dep.hosts["h1"].kill()
    await wait_until(lambda: dep.settled({"h2": 4}), timeout=6)
    after = await dep.assignment()
    assert min(after[c][1] for c in (0, 1)) > top
    assert dep.ledger.violations == []


async def _same(dep: Deployment, before: dict[int, tuple[str, int]]) -> bool:
    return await dep.assignment() == before


async def test_move_timeout_returns_the_cluster_and_reports(deployment: Deployment) -> None:
    dep = deployment
    errors: list[Exception] = []
    broker = await dep.broker(make_config(dep.url, hosts={"expected": 1}), move_timeout=0.5)
    broker.on("error", errors.append)
    await dep.host("h1", confirm_stops=False)
    await wait_until(lambda: dep.settled({"h1": 4}))
    await dep.host("h2")
    await wait_until(lambda: dep.events("move_timeout"), timeout=5, message="a move timeout")
    await wait_until(lambda: _counts_is(dep, {"h1": 4}), message="the cluster is given back to h1")
    assert any("did not confirm stopping" in str(e) for e in errors)
    assert dep.ledger.violations == [], "the stuck cluster was never started twice"


async def _counts_is(dep: Deployment, expected: dict[str, int]) -> bool:
    return await dep.counts() == expected
