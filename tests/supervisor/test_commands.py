"""Commands over the bus ({ns}:cm:{host}): restart, restart_all, rolling_restart, with acknowledgement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from support.supervisor import HOST, KEYS, doorbell, grant, host_config, set_modes, starts, write_layout
from support.waiting import wait_until

from letsfrag.bus import Bus
from letsfrag.contract.envelope import MessageType
from letsfrag.errors import RequestTimeout
from letsfrag.supervisor import ClusterManager, ClusterState


async def test_restart_and_rolling_restart_over_the_bus(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    config = host_config(redis_url, tmp_path)
    await write_layout(r)
    for cid in (0, 1, 2):
        await grant(r, cid, epoch=1)
    async with ClusterManager(config) as manager, Bus(redis_url, node_id="tool:test", namespace="t") as tool:
        await wait_until(lambda: len(manager.clusters) == 3 and all(
            v.state is ClusterState.READY for v in manager.clusters.values()), message="3 clusters ready")
        inbox = KEYS.host_inbox(HOST)

        async def command(payload: dict[str, object]) -> dict[str, object]:
            return await tool.request(inbox, MessageType.COMMAND, payload, timeout=15)  # type: ignore[no-any-return]

        # restart one cluster: acknowledged once it is READY again, with a new process
        old = manager.clusters[1].pid
        reply = await command({"action": "restart", "cluster": 1})
        assert reply["ok"] is True and "ready" in str(reply["message"]), reply
        assert manager.clusters[1].pid != old and manager.clusters[1].state is ClusterState.READY
        assert manager.clusters[0].spawns == 1 and manager.clusters[2].spawns == 1

        # bad requests get a clear answer, not an error
        assert (await command({"action": "restart", "cluster": 9}))["ok"] is False
        bad = await command({"action": "explode"})
        assert bad["ok"] is False and "rolling_restart" in str(bad["message"])

        # rolling: one at a time, each waits for the previous to be READY again
        before = {cid: len(starts(tmp_path, cid)) for cid in (0, 1, 2)}
        reply = await command({"action": "rolling_restart"})
        assert reply["ok"] is True and reply["restarted"] == [0, 1, 2], reply
        new = {cid: starts(tmp_path, cid)[before[cid]] for cid in (0, 1, 2)}
        ready = {cid: manager.clusters[cid].ready_at or 0 for cid in (0, 1, 2)}
        assert ready[0] < new[1]["ts"] and ready[1] < new[2]["ts"]

        # a rolling restart stops at the first cluster that does not come back, and says which
        set_modes(tmp_path, default="well", **{"1": "config"})
        spawns2 = manager.clusters[2].spawns
        reply = await command({"action": "rolling_restart", "timeout": 10})
        assert reply["ok"] is False and reply["failed"] == 1 and reply["restarted"] == [0], reply
        assert "cluster 1" in str(reply["message"]) and "configuration error" in str(reply["message"])
        assert manager.clusters[2].spawns == spawns2 and manager.clusters[1].state is ClusterState.FAILED

        # restart_all: the fixed cluster 1 comes back from FAILED with the others
        set_modes(tmp_path, default="well")
        reply = await command({"action": "restart_all"})
        assert reply["ok"] is True and reply["clusters"] == [0, 1, 2], reply
        assert all(v.state is ClusterState.READY for v in manager.clusters.values())


async def test_a_signed_restart_all_for_another_host_is_dropped(redis_url: str, r: aioredis.Redis,
                                                                  tmp_path: Path) -> None:
    """Attack: capture a genuine signed ``restart_all`` for host h0 and republish it on h1's inbox."""
    secret = "s3cret-for-commands"
    set_modes(tmp_path, default="well")
    config = host_config(redis_url, tmp_path, secret=secret)
    await write_layout(r)
    for cid in (0, 1):
        await grant(r, cid, epoch=1)
    async with ClusterManager(config) as manager, Bus(redis_url, node_id="tool:test", namespace="t",
                                                     secret=secret) as tool:
        await doorbell(r, secret=secret)
        await wait_until(lambda: len(manager.clusters) == 2 and all(
            v.state is ClusterState.READY for v in manager.clusters.values()), message="2 clusters ready")
        spawns = {cid: v.spawns for cid, v in manager.clusters.items()}
        raw = aioredis.Redis.from_url(redis_url)  # bytes, as a wire tap sees them
        tap = raw.pubsub(ignore_subscribe_messages=True)
        await tap.subscribe(KEYS.host_inbox("h0"))
        with pytest.raises(RequestTimeout):  # h0 does not run here: only the tap hears it
            await tool.request(KEYS.host_inbox("h0"), MessageType.COMMAND, {"action": "restart_all"},
                               target="host:h0", timeout=0.5)
        captured = await wait_until(lambda: tap.get_message(timeout=0.1), message="the captured restart_all")
        await tap.aclose()
        ident = re.search(rb'"id":\s*"([0-9a-f]+)"', captured["data"]).group(1)  # type: ignore[union-attr]
        replies = raw.pubsub(ignore_subscribe_messages=True)  # had h1 run the copy, it would answer here
        await replies.subscribe(KEYS.reply("tool:test"))
        assert await raw.publish(KEYS.host_inbox(HOST), captured["data"]) == 1
        # the host answers a signed ping after it: it has consumed the replay by then (pub/sub keeps order)
        pong = await tool.request(KEYS.host_inbox(HOST), MessageType.PING, target=f"host:{HOST}", timeout=5)
        assert pong["host"] == HOST
        assert manager.bus.dropped["misrouted"] == 1
        # the same command signed for this host still works (and takes longer than the copy would have)
        reply = await tool.request(KEYS.host_inbox(HOST), MessageType.COMMAND, {"action": "restart_all"},
                                   target=f"host:{HOST}", timeout=15)
        assert reply["ok"] is True and reply["clusters"] == [0, 1], reply
        assert {cid: v.spawns for cid, v in manager.clusters.items()} == {c: n + 1 for c, n in spawns.items()}
        answered: list[bytes] = []
        for _ in range(8):  # None for the subscription confirmation, then until nothing is left
            message = await replies.get_message(timeout=0.2)
            if message is not None:
                answered.append(message["data"])
        await replies.aclose()
        await raw.aclose()
        assert len(answered) == 2, answered  # the ping and the genuine restart_all
        assert not [m for m in answered if re.search(rb'"corr":\s*"' + ident + b'"', m)], "the copy ran on h1"
