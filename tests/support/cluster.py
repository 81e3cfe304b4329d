"""Helpers for the cluster tests: play broker and supervisor in Redis, and run clients against a Simulator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import discord
import discord.shard
import redis.asyncio as aioredis

from letsfrag.cluster import ClusterMixin, ClusterShardClient
from letsfrag.contract.keys import Keys
from letsfrag.environment import ClusterEnvironment
from letsfrag.sim import Simulator
from support.waiting import scaled, wait_until

NS = "lftest"
KEYS = Keys(NS)


@contextlib.contextmanager
def discord_settings_restored() -> Iterator[None]:
    """The client sets ``Route.BASE``, ``DEFAULT_GATEWAY`` and ``discord.shard.DiscordWebSocket``; undo them."""
    base = discord.http.Route.BASE
    default_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    ws_class = discord.shard.DiscordWebSocket  # type: ignore[attr-defined]
    try:
        yield
    finally:
        discord.http.Route.BASE = base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = default_gateway
        discord.shard.DiscordWebSocket = ws_class  # type: ignore[attr-defined,misc]


def make_env(
    redis_url: str,
    sim: Simulator | None,
    cluster_id: int,
    shard_ids: tuple[int, ...],
    shard_count: int,
    **overrides: Any,
) -> ClusterEnvironment:
    """A cluster environment as a supervisor would write it."""
    values: dict[str, Any] = {
        "cluster_id": cluster_id,
        "shard_ids": shard_ids,
        "shard_count": shard_count,
        "host_id": "h1",
        "host_incarnation": "inc-1",
        "epoch": 1,
        "redis": {"url": redis_url},
        "namespace": NS,
        "token": "test-token",
        "discord_api_url": sim.api_url if sim else None,
        "discord_gateway_url": sim.gateway_url if sim else None,
        "heartbeat_interval": 0.5,
        "lease_ttl": 5.0,
        "max_concurrency": 1,
        "identify_window": 0.5,
    }
    values.update(overrides)
    return ClusterEnvironment(**values)


async def write_layout(r: aioredis.Redis, shard_count: int, shards_per_cluster: int, *,
                       allow_eval: bool = False) -> None:
    """``{ns}:layout`` as the broker writes it."""
    await r.hset(KEYS.layout, mapping={  # type: ignore[misc]
        "shard_count": shard_count,
        "shards_per_cluster": shards_per_cluster,
        "cluster_count": -(-shard_count // shards_per_cluster),
        "allow_eval": "1" if allow_eval else "0",
    })


async def grant(r: aioredis.Redis, cluster_id: int, host: str = "h1", epoch: int = 1) -> None:
    """The broker's grant of ``cluster_id`` to ``host`` with ``epoch``."""
    await r.hset(KEYS.assignment, str(cluster_id), json.dumps({"host": host, "epoch": epoch}))  # type: ignore[misc]


@contextlib.asynccontextmanager
async def lease_kept(r: aioredis.Redis, host: str = "h1", incarnation: str = "inc-1",
                     ttl: float = 5.0, every: float = 0.5) -> AsyncIterator[asyncio.Event]:
    """Renew ``{ns}:lease:{host}`` like a supervisor until the block ends or the yielded event is set."""
    stop = asyncio.Event()

    async def renew() -> None:
        while not stop.is_set():
            await r.set(KEYS.lease(host), incarnation, px=int(ttl * 1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    await r.set(KEYS.lease(host), incarnation, px=int(ttl * 1000))
    task = asyncio.create_task(renew())
    try:
        yield stop
    finally:
        stop.set()
        await task


def intents() -> discord.Intents:
    value = discord.Intents.default()
    value.members = False
    value.message_content = True
    return value


class RecordingClient(ClusterShardClient):
    """Counts messages, answers ``!ping <n>`` and serves a ``stats`` RPC."""

    def __init__(self, env: ClusterEnvironment, **kwargs: Any) -> None:
        kwargs.setdefault("guild_ready_timeout", 0.1)
        super().__init__(intents=intents(), environment=env, **kwargs)
        self.messages: list[str] = []
        self.shards_ready: list[int] = []

        @self.cluster.handler("stats")
        async def stats() -> dict[str, Any]:
            return {"cluster": self.cluster.id, "guilds": len(self.guilds), "messages": len(self.messages)}

        @self.cluster.handler()
        async def add(a: int, b: int = 0) -> int:
            return a + b

        @self.cluster.handler()
        async def boom() -> None:
            raise ValueError("boom on purpose")

    async def on_shard_ready(self, shard_id: int) -> None:
        self.shards_ready.append(shard_id)

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message.content)
        if message.content.startswith("!ping "):
            await message.reply("pong " + message.content.split()[1])


@contextlib.asynccontextmanager
async def running(client: ClusterMixin) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``client.start()`` in a task; close it and collect the task on exit."""
    task = asyncio.create_task(client.start())
    try:
        yield task
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=scaled(10))
    # a closed client leaves no heartbeat thread behind (it would outlive the test's event loop)
    await wait_until(lambda: not keep_alive_threads(client), timeout=5,
                     message="the client's discord.py keep-alive threads stopped")


def keep_alive_threads(client: discord.Client) -> list[threading.Thread]:
    """discord.py's keep-alive (heartbeat) threads, one per gateway connection, still running for ``client``."""
    found = []
    for thread in threading.enumerate():
        ws = getattr(thread, "ws", None)
        get_client = getattr(getattr(ws, "_connection", None), "_get_client", None)
        if thread.name.startswith("keep-alive-handler") and thread.is_alive() and get_client is not None \
                and get_client() is client:
            found.append(thread)
    return found


class AnsweringClient(ClusterShardClient):
    """Answers ``!ping <n>`` with ``pong <n>`` and welcomes joins, like examples/bot.py; ``work`` seconds of
    simulated work before each answer."""

    def __init__(self, env: ClusterEnvironment, *, work: float = 0.0, **kwargs: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True
        super().__init__(intents=intents, environment=env, chunk_guilds_at_startup=False, guild_ready_timeout=0.1,
                         **kwargs)
        self.work = work
        self.handled = 0
        #: monotonic times of the handled events
        self.handled_at: list[float] = []

    async def _handled(self) -> None:
        self.handled += 1
        self.handled_at.append(time.monotonic())
        if self.work:
            await asyncio.sleep(self.work)

    async def on_message(self, message: discord.Message) -> None:
        if message.content.startswith("!ping "):
            await self._handled()
            await message.reply("pong " + message.content.split()[1])

    async def on_member_join(self, member: discord.Member) -> None:
        await self._handled()
        if member.guild.system_channel is not None:
            await member.guild.system_channel.send(f"welcome {member.name}")
