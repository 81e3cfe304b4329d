"""The packed snapshot reader (Lua scripts) agrees with plain reads and survives malformed records."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ResponseError
from support.seed import NOW, seed

from letsfrag.connection import create_redis
from letsfrag.contract.keys import Keys
from letsfrag.snapshot.picture import read_snapshot


class _NoScripts:
    """Stands in for ``register_script`` on a server where scripting is denied."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ResponseError("NOPERM this user has no permissions to run the 'evalsha' command")


async def test_packed_and_plain_reads_agree(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    redis = create_redis(redis_url)
    await seed(redis, now=NOW, hosts=4, clusters=30, lost=("host-02",))
    keys = Keys()
    packed = (await read_snapshot(redis, keys, now=NOW + 3, shards=True)).to_json(shards=True, events=50)
    monkeypatch.setattr(redis, "register_script", _NoScripts)
    plain = (await read_snapshot(redis, keys, now=NOW + 3, shards=True)).to_json(shards=True, events=50)
    await redis.aclose()
    for doc in (packed, plain):  # a live TTL: it ticks between the two reads
        for host in doc["hosts"]:
            host["lease_ttl_left"] = host["lease_ttl_left"] is not None and round(host["lease_ttl_left"])
    assert packed == plain
    assert len(packed["clusters"]) == 30 and len(packed["hosts"]) == 4


async def test_a_malformed_claim_or_host_field_does_not_break_the_read(redis_url: str) -> None:
    redis = create_redis(redis_url)
    await seed(redis, now=NOW)
    keys = Keys()
    await redis.hset(keys.assignment, "5", "{not json")  # type: ignore[misc]
    await redis.hset(keys.host("host-01"), "hostname", 'quo"te\\back\nslash ünï')  # type: ignore[misc]
    snapshot = await read_snapshot(redis, keys, now=NOW)
    await redis.aclose()
    by_id = {c.id: c for c in snapshot.clusters}
    assert by_id[5].host is None and by_id[5].state == "unassigned"  # the unreadable claim counts as none
    assert by_id[0].host == "host-01" and by_id[1].host == "host-02"
    assert {h.id: h for h in snapshot.hosts}["host-01"].hostname == 'quo"te\\back\nslash ünï'


async def test_a_ready_cluster_whose_heartbeats_stopped_is_stale_not_ready(redis_url: str) -> None:
    redis = create_redis(redis_url)
    await seed(redis, now=NOW)
    keys = Keys()
    fresh = await read_snapshot(redis, keys, now=NOW)
    cluster = next(c for c in fresh.clusters if c.state == "ready")
    interval = float(await redis.hget(keys.layout, "heartbeat_interval") or 2.0)  # type: ignore[misc]
    await redis.hset(keys.cluster_status(cluster.id), "last_heartbeat", f"{NOW - 6 * interval:.3f}")  # type: ignore[misc]
    later = await read_snapshot(redis, keys, now=NOW)
    await redis.aclose()
    stale = {c.id: c for c in later.clusters}[cluster.id]
    assert stale.state == "stale" and stale.shards_ready == 0
    assert later.summary()["shards_ready"] == fresh.summary()["shards_ready"] - cluster.shards_ready


async def test_the_identify_budget_is_read_and_shown_in_the_header(redis_url: str) -> None:
    from letsfrag.snapshot.render import summary_text

    redis = create_redis(redis_url)
    await seed(redis, now=NOW)
    keys = Keys()
    assert (await read_snapshot(redis, keys, now=NOW)).identify_budget is None
    await redis.hset(keys.identify("budget"), mapping={"total": "1000", "remaining": "42",  # type: ignore[misc]
                                                       "reset_at": f"{NOW + 3600}"})
    snapshot = await read_snapshot(redis, keys, now=NOW)
    await redis.aclose()
    assert snapshot.summary()["identify_budget"] == {"total": 1000.0, "remaining": 42.0, "reset_at": NOW + 3600}
    assert "budget 42/1000" in summary_text(snapshot, "redis://x").plain
