"""The cluster client against real Redis and the simulated Discord: identify, ready, health, handling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import redis.asyncio as aioredis
from support.cluster import KEYS, RecordingClient, grant, lease_kept, make_env, running, write_layout
from support.waiting import wait_until

from letsfrag.ipc import IpcChannel
from letsfrag.sim import Simulator


async def test_two_clients_ready_through_the_identify_queue(redis_url: str, r: aioredis.Redis) -> None:
    """Two clusters, one bucket: every IDENTIFY goes through the coordinator, no window is broken."""
    async with Simulator(shards=4, guilds=8, max_concurrency=1, identify_window=0.3, heartbeat_interval=5.0,
                         ack_delay=0.005) as sim:
        await write_layout(r, 4, 2)
        await grant(r, 0)
        await grant(r, 1)
        async with lease_kept(r):
            c0 = RecordingClient(make_env(redis_url, sim, 0, (0, 1), 4, identify_window=0.3))
            c1 = RecordingClient(make_env(redis_url, sim, 1, (2, 3), 4, identify_window=0.3))
            async with running(c0), running(c1):
                await wait_until(lambda: c0.cluster.ready and c1.cluster.ready, timeout=15, message="both ready")
                stats = sim.stats()
                assert stats["identify_violations"]["total"] == 0
                assert stats["identifies"]["total"] == 4
                assert sorted(stats["shards_ready"]) == [0, 1, 2, 3]
                assert int(await r.get(KEYS.identify("granted")) or 0) == 4
                # health in Redis: written every heartbeat, so the first record may predate READY
                async def status_ready() -> dict[Any, Any] | None:
                    raw = await r.hgetall(KEYS.shard_status(1))
                    return raw if raw and json.loads(raw.get("2", "{}")).get("status") == "ready" else None

                raw = await wait_until(status_ready, message="shard 2's status ready in Redis")
                assert set(raw) == {"2", "3"}
                # handling: a ping is answered exactly once
                n = sim.send_ping(sim.guild_ids(shard_id=2)[0])
                await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 1, message="pong")
                assert f"!ping {n}" in c1.messages and not c0.messages
                assert sim.stats()["duplicate_sessions"]["count"] == 0


async def test_ipc_heartbeat_ready_and_stop(redis_url: str, r: aioredis.Redis) -> None:
    """The supervisor's end of the socketpair sees hello, ready and heartbeats; ``stop`` exits 0."""
    parent, child = socket.socketpair()
    async with Simulator(shards=1, guilds=2, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r):
            client = RecordingClient(make_env(redis_url, sim, 0, (0,), 1), ipc_socket=child)
            supervisor = await IpcChannel.from_socket(parent)
            async with running(client) as task:
                seen: list[dict] = []

                async def collect_until(op: str) -> dict:
                    while True:
                        message = await supervisor.receive()
                        assert message is not None
                        seen.append(message)
                        if message["op"] == op:
                            return message

                assert (await collect_until("hello"))["epoch"] == 1
                await collect_until("ready")
                beat = await collect_until("heartbeat")
                while not beat["ready"]:
                    beat = await collect_until("heartbeat")
                assert beat["shards"] == {"0": "ready"} and beat["guilds"] == 2 and beat["rss"] > 0
                await supervisor.send("stop", reason="test")
                await wait_until(lambda: task.done(), timeout=5, message="client stopped")
                assert client.cluster.exit_code == 0
                assert sim.stats()["connections"] == 0 or await wait_until(
                    lambda: sim.stats()["connections"] == 0, message="sessions closed")
            await supervisor.close()


async def test_the_identify_window_restarts_once_the_identify_has_left(redis_url: str, r: aioredis.Redis) -> None:
    """The bucket's window counts from the moment each IDENTIFY left, not from before it: the last restart of the
    slot's expiry (a keyspace event of its PEXPIRE) comes after the simulator saw that IDENTIFY. Before, the slot was
    confirmed and then the ownership checked (a round trip) before the send, so on a busy machine the next grant of
    the bucket could follow the IDENTIFY by less than a window."""
    await r.config_set("notify-keyspace-events", "Kg")
    slot = KEYS.identify("slot:0")
    restarts: list[float] = []
    pubsub = r.pubsub()
    await pubsub.subscribe(f"__keyspace@0__:{slot}")

    async def listen() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message" and message["data"] == "expire":
                restarts.append(time.monotonic())

    listener = asyncio.create_task(listen())
    try:
        async with Simulator(shards=2, guilds=4, max_concurrency=1, identify_window=0.3, heartbeat_interval=5.0,
                             ack_delay=0.005) as sim:
            await write_layout(r, 2, 2)
            await grant(r, 0)
            async with lease_kept(r):
                client = RecordingClient(make_env(redis_url, sim, 0, (0, 1), 2, identify_window=0.3))
                async with running(client):
                    await wait_until(lambda: client.cluster.ready, timeout=15, message="ready")
                    stats = sim.stats()
                    assert stats["identify_violations"]["total"] == 0
                    last_identify = max(stats["identified_at"].values())
                    await wait_until(lambda: restarts and restarts[-1] >= last_identify, timeout=5,
                                     message="the slot's window restarted after the last IDENTIFY")
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await pubsub.aclose()
