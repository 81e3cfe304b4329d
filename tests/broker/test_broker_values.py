"""Bad values in Redis: the broker repairs what it owns (the layout, the epoch), tells a data error from an
outage, and keeps judging hosts. A real broker and protocol-level hosts against a real redis-server."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from support.broker import Deployment, make_config
from support.waiting import wait_until


async def _layout_is(dep: Deployment, expected: dict[str, str]) -> bool:
    found = await dep.redis.hgetall(dep.keys.layout)
    return {k: v for k, v in found.items() if k != "updated_at"} == expected


async def _events_about(dep: Deployment, kind: str, text: str) -> bool:
    return any(text in e["message"] for e in await dep.events(kind))


@pytest.mark.parametrize(("poison", "problem"), [
    ({"lease_ttl": "inf"}, "must be a finite number"),
    ({"lease_ttl": "nan"}, "must be a finite number"),
    ({"lease_ttl": "-1"}, "must be greater than 0"),
    ({"lease_ttl": "abc"}, "must be a number"),
    ({"shards_per_cluster": "4"}, "'cluster_count' must be 8"),
    ({"shards_per_cluster": "4", "cluster_count": "8"}, "shards_per_cluster (4, expected 8)"),  # valid, other ranges
])
async def test_a_poisoned_layout_is_rewritten_with_an_error_event(deployment: Deployment, poison: dict[str, str],
                                                                  problem: str) -> None:
    dep = deployment
    await dep.broker()
    await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    good = {k: v for k, v in (await dep.redis.hgetall(dep.keys.layout)).items() if k != "updated_at"}
    before = await dep.assignment()
    await dep.redis.hset(dep.keys.layout, mapping=poison)
    await wait_until(lambda: _events_about(dep, "layout_repaired", problem), message="a layout_repaired event")
    await wait_until(lambda: _layout_is(dep, good), message="the layout rewritten")
    event = (await dep.events("layout_repaired"))[0]
    assert event["key"] == dep.keys.layout and dep.keys.layout in event["message"]
    assert await dep.assignment() == before, "nothing moved"
    assert dep.ledger.violations == []


async def test_an_epoch_that_is_no_number_is_repaired_and_hosts_are_still_judged(
        deployment: Deployment, caplog: pytest.LogCaptureFixture) -> None:
    dep = deployment
    caplog.set_level(logging.WARNING, logger="letsfrag.broker")
    await dep.broker()
    h1 = await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    before = await dep.assignment()
    top = max(e for _, e in before.values())
    await dep.redis.set(dep.keys.epoch, "abc")
    await wait_until(lambda: _events_about(dep, "epoch_repaired", "must be an integer, found 'abc'"),
                     message="an epoch_repaired event")
    assert (await dep.events("epoch_repaired"))[0]["key"] == dep.keys.epoch
    assert int(await dep.redis.get(dep.keys.epoch)) >= top
    await h1.kill()
    await wait_until(lambda: dep.events("host_lost"), timeout=8, message="the lost host detected")
    await wait_until(lambda: dep.settled({"h2": 4}), timeout=8, message="its clusters moved, with new epochs")
    after = await dep.assignment()
    assert all(after[c][1] > top for c, (host, _) in before.items() if host == "h1"), "grants work again"
    assert "Redis unavailable" not in caplog.text
    assert dep.ledger.violations == []


async def test_a_data_error_is_not_an_outage(deployment: Deployment, caplog: pytest.LogCaptureFixture) -> None:
    dep = deployment
    caplog.set_level(logging.WARNING, logger="letsfrag.broker")
    broker = await dep.broker()
    await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    await dep.redis.delete(dep.keys.epoch)
    await dep.redis.sadd(dep.keys.epoch, "x")  # the wrong type: every GET of it is refused (WRONGTYPE)
    await wait_until(lambda: _events_about(dep, "redis_data_error", dep.keys.epoch),
                     message="a redis_data_error event naming the key")
    event = (await dep.events("redis_data_error"))[0]
    assert "WRONGTYPE" in event["message"] and "not an outage" in event["message"]
    assert "Redis unavailable" not in caplog.text
    await dep.redis.delete(dep.keys.epoch)
    await wait_until(lambda: broker._data_error is None, message="the broker recovers once the key is fixed")
    assert dep.ledger.violations == []


async def test_after_a_data_loss_the_layout_says_adopting_until_the_claims_are_adopted(
        deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(make_config(dep.url, hosts={"expected": 1}))
    await dep.host("h1")
    h2 = await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    assert await dep.redis.hget(dep.keys.layout, "adopting") is None
    await h2.kill()  # its claims never come back: the broker waits one lease ttl for them
    await dep.redis.flushall()
    await wait_until(lambda: _adopting(dep, "1"), timeout=5, interval=0.02, message="the adoption mark")
    await wait_until(lambda: dep.settled({"h1": 4}), timeout=8, message="h1 adopted and granted the rest")
    await wait_until(lambda: _adopting(dep, None), timeout=5, message="the mark removed")
    assert dep.ledger.violations == []


async def _adopting(dep: Deployment, value: str | None) -> bool:
    return bool(await dep.redis.exists(dep.keys.layout)) and \
        await dep.redis.hget(dep.keys.layout, "adopting") == value


async def test_a_crashed_tick_is_logged_with_its_traceback_and_the_broker_goes_on(
        deployment: Deployment, caplog: pytest.LogCaptureFixture) -> None:
    dep = deployment
    caplog.set_level(logging.ERROR, logger="letsfrag.broker")
    broker = await dep.broker()
    h1 = await dep.host("h1")
    await dep.host("h2")
    await wait_until(lambda: dep.settled({"h1": 2, "h2": 2}))
    rec = broker.reconciler
    assert rec is not None
    real = rec.step
    calls = {"n": 0}

    async def broken(now: float, snap: Any) -> bool:  # fault injection: one tick raises a bug
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected bug in the broker tick")
        return await real(now, snap)

    rec.step = broken  # type: ignore[method-assign]
    await wait_until(lambda: dep.events("loop_crashed"), message="a loop_crashed event")
    assert "injected bug in the broker tick" in caplog.text and "Traceback" in caplog.text
    await h1.kill()
    await wait_until(lambda: dep.settled({"h2": 4}), timeout=8, message="the broker still judges hosts")
