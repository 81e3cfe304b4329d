"""Shared by the cluster-client benchmarks: a private Redis, the broker's keys, in-process cluster clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import discord
import redis.asyncio as aioredis

from letsfrag.cluster import ClusterShardClient
from letsfrag.contract.keys import Keys
from letsfrag.environment import ClusterEnvironment
from letsfrag.redis_server import RedisServer
from letsfrag.sim import Simulator

NS = "bench"
KEYS = Keys(NS)
RESULTS = Path(__file__).resolve().parent / "results"


def start_redis() -> RedisServer:
    server = RedisServer(data_dir=Path(tempfile.mkdtemp(prefix="letsfrag-bench-")))
    server.start()
    return server


async def prepare(r: aioredis.Redis, shard_count: int, per_cluster: int) -> int:
    """Write layout, grants (host h1, epoch 1) and a long host lease; return the cluster count."""
    clusters = -(-shard_count // per_cluster)
    await r.hset(KEYS.layout, mapping={"shard_count": shard_count, "shards_per_cluster": per_cluster,  # type: ignore[misc]
                                       "cluster_count": clusters})
    for cid in range(clusters):
        await r.hset(KEYS.assignment, str(cid), json.dumps({"host": "h1", "epoch": 1}))  # type: ignore[misc]
    await r.set(KEYS.lease("h1"), "inc-1", px=3_600_000)
    return clusters


def make_client(redis_url: str, sim: Simulator, cid: int, per_cluster: int, shard_count: int,
                **env: Any) -> ClusterShardClient:
    shards = tuple(range(cid * per_cluster, min((cid + 1) * per_cluster, shard_count)))
    environment = ClusterEnvironment(
        cluster_id=cid, shard_ids=shards, shard_count=shard_count, host_id="h1", host_incarnation="inc-1", epoch=1,
        redis={"url": redis_url}, namespace=NS, token="bench-token", discord_api_url=sim.api_url,
        discord_gateway_url=sim.gateway_url, heartbeat_interval=1.0, lease_ttl=3600.0, **env)
    intents = discord.Intents.default()
    intents.members = False
    return ClusterShardClient(intents=intents, environment=environment, guild_ready_timeout=0.2,
                              chunk_guilds_at_startup=False)


async def close_clients(clients: list[ClusterShardClient], tasks: list[asyncio.Task[Any]]) -> None:
    """Close the in-process cluster clients and wait (bounded) for their run tasks to end."""
    for client in clients:
        await client.close()
    for task in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
