"""Undecided ownership, live: after Redis lost its data (or while the layout names other shards) a cluster holds
its events instead of fencing, and releases them exactly once when the broker's adoption (or repair) lands."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from support.cluster import KEYS, RecordingClient, grant, lease_kept, make_env, running, write_layout
from support.waiting import wait_until

from letsfrag.cluster.guard import Ownership, bound_undecided, decide_ownership
from letsfrag.sim import Simulator

SIM: dict[str, Any] = {"shards": 1, "guilds": 2, "identify_window": 0.1, "heartbeat_interval": 30.0, "ack_delay": 0.005}
GRANT = json.dumps({"host": "h1", "epoch": 1})


async def _events(r: aioredis.Redis, kind: str) -> list[dict[str, str]]:
    return [data for _, data in await r.xrange(KEYS.events) if data.get("kind") == kind]


async def test_after_a_data_loss_events_are_held_until_the_broker_adopts(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=1.5, every=0.2):  # the supervisor's renewals (they re-create the lease)
            client = RecordingClient(make_env(redis_url, sim, 0, (0,), 1, heartbeat_interval=0.3, lease_ttl=1.5))
            async with running(client) as task:
                await wait_until(lambda: client.cluster.ready, timeout=10, message="ready")
                guild = sim.guild_ids()[0]
                first = sim.send_ping(guild)
                await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 1, message="a pong before")

                await r.flushall()  # Redis lost its data: no layout, no assignment
                guard = client._lf_guard
                await wait_until(lambda: not guard.allows(), timeout=5, message="the horizon passed")
                numbers = [sim.send_ping(guild) for _ in range(3)]
                await wait_until(lambda: _events(r, "cluster_holding"), timeout=5, message="a cluster_holding event")
                await wait_until(lambda: len(guard.held) >= 3, timeout=5, message="the messages are held")
                assert client.messages == [f"!ping {first}"] and not task.done() and not guard.fenced

                # the broker rewrites the layout with its adoption mark: still holding, not fencing
                await write_layout(r, 1, 1)
                await r.hset(KEYS.layout, "adopting", "1")  # type: ignore[misc]
                checker = client._lf_checker
                assert checker is not None
                checks = checker.checks
                await wait_until(lambda: checker.checks >= checks + 3, timeout=5, message="three more checks")
                assert checker.undecided_since is not None and len(guard.held) >= 3 and not guard.fenced

                await grant(r, 0)  # the broker adopted cluster 0 from the host's claim (same host, same epoch)
                await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 4, timeout=10,
                                 message="the held messages answered")
                assert client.messages == [f"!ping {n}" for n in [first, *numbers]]
                assert sim.stats()["handling"]["answered_twice_or_more"] == 0
                assert client.cluster.exit_code is None and not guard.fenced
                assert await _events(r, "cluster_fenced") == []


async def test_a_layout_with_other_shards_holds_until_repaired(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=1.5, every=0.2):
            client = RecordingClient(make_env(redis_url, sim, 0, (0,), 1, heartbeat_interval=0.3, lease_ttl=1.5))
            async with running(client) as task:
                await wait_until(lambda: client.cluster.ready, timeout=10, message="ready")
                await write_layout(r, 2, 2)  # cluster 0 would be shards 0-1: not what this process runs
                guard = client._lf_guard
                await wait_until(lambda: not guard.allows(), timeout=5, message="the horizon passed")
                number = sim.send_ping(sim.guild_ids()[0])
                await wait_until(lambda: guard.held, timeout=5, message="held")

                async def holding() -> bool:
                    return any("gives cluster 0 shards [0, 1]" in e["message"]
                               for e in await _events(r, "cluster_holding"))

                await wait_until(holding, timeout=5, message="a cluster_holding event naming the shards")
                assert client.messages == [] and not task.done()
                await write_layout(r, 1, 1)  # the broker's repair
                await wait_until(lambda: client.messages == [f"!ping {number}"], timeout=10, message="released")
                assert client.cluster.exit_code is None and not guard.fenced


def _judge(assignment: str | None, lease: str | None, layout: dict[str, str | None] | None,
           shard_ids: tuple[int, ...] | None = (4, 5)) -> Ownership:
    return decide_ownership(assignment, lease, 3000, cluster_id=2, host_id="h1", epoch=1, incarnation="inc",
                            default_ttl=10.0, layout=layout, shard_ids=shard_ids, layout_key="ns:layout")


GOOD = {"shard_count": "8", "shards_per_cluster": "2", "adopting": None}
GONE: dict[str, str | None] = {"shard_count": None, "shards_per_cluster": None, "adopting": None}


def test_undecided_verdicts() -> None:
    assert _judge(GRANT, "inc", GOOD).owner
    assert _judge(GRANT, "inc", GONE).owner, "a missing layout alone changes nothing"
    assert _judge(None, "inc", GOOD).reason.endswith("no longer assigned to any host")
    assert not _judge(None, "inc", GOOD).undecided, "a revoke in a running deployment fences at once"
    lost = _judge(None, "inc", GONE)
    assert lost.undecided and not lost.owner and "ns:layout is gone" in lost.reason
    assert _judge(GRANT, None, GONE).undecided
    adopting = _judge(None, "inc", {**GOOD, "adopting": "1"})
    assert adopting.undecided and "adopting" in adopting.reason
    other = json.dumps({"host": "h2", "epoch": 2})
    assert not _judge(other, "inc", {**GOOD, "adopting": "1"}).undecided, "granted elsewhere: fence"
    moved = _judge(GRANT, "inc", {**GOOD, "shards_per_cluster": "3"})
    assert moved.undecided and "gives cluster 2 shards [6, 7] but this process runs [4, 5]" in moved.reason
    bad = _judge(GRANT, "inc", {**GOOD, "shard_count": "inf"})
    assert bad.undecided and "ns:layout field 'shard_count'" in bad.reason
    assert _judge(GRANT, "inc", {**GOOD, "shards_per_cluster": "3"}, shard_ids=None).owner
    assert _judge(None, "inc", None).reason.endswith("no longer assigned to any host")


def test_an_undecided_wait_is_bounded() -> None:
    wait = Ownership(False, "layout is gone", undecided=True)
    verdict, since = bound_undecided(wait, None, 100.0, 6.0)
    assert verdict is wait and since == 100.0
    verdict, since = bound_undecided(wait, since, 105.9, 6.0)
    assert verdict.undecided and since == 100.0
    verdict, since = bound_undecided(wait, since, 106.5, 6.0)
    assert not verdict.owner and not verdict.undecided and "undecided for 6s, giving up" in verdict.reason
    owner = Ownership(True, "owner", 5.0)
    assert bound_undecided(owner, 100.0, 200.0, 6.0) == (owner, None)
