"""Fixtures of the cluster tests: discord.py's process-wide settings restored after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import discord
import discord.shard
import pytest
import redis.asyncio as aioredis


@pytest.fixture(autouse=True)
def restore_discord() -> Iterator[None]:
    """The client sets ``Route.BASE``, ``DEFAULT_GATEWAY`` and ``discord.shard.DiscordWebSocket``; undo them."""
    base = discord.http.Route.BASE
    default_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    ws_class = discord.shard.DiscordWebSocket  # type: ignore[attr-defined]
    yield
    discord.http.Route.BASE = base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = default_gateway
    discord.shard.DiscordWebSocket = ws_class  # type: ignore[attr-defined,misc]


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
