"""Two generations of unmodified discord.py clients (2 and 4 shards) on one simulator at once, guilds added at run
time through ``POST /_sim/guilds``, and a live shard closed with 4011 when it grows past the maximum."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import discord
import pytest
from support.sim import FastClient, intents, running
from support.waiting import scaled, wait_until

from letsfrag.sim import Simulator

pytestmark = pytest.mark.integration

Point = Callable[[Simulator], None]


async def test_two_shard_counts_at_once_then_guilds_added_past_the_maximum(point_discord: Point) -> None:
    async with Simulator(shards=2, guilds=12, guilds_per_shard=4, max_guilds_per_shard=4, heartbeat_interval=1.0,
                         identify_window=0.0) as sim, aiohttp.ClientSession() as http:
        point_discord(sim)
        async with http.get(sim.api_url + "/gateway/bot", headers={"Authorization": "Bot t"}) as response:
            assert (await response.json())["shards"] == 3  # ceil(12 / 4)
        old = FastClient(shard_count=2, intents=intents())  # 6 guilds per shard: over the maximum of 4
        with pytest.raises(discord.ConnectionClosed) as closed:
            await asyncio.wait_for(old.start("t"), timeout=scaled(10))
        await old.close()
        assert closed.value.code == 4011
        old, new = FastClient(shard_count=3, intents=intents()), FastClient(shard_count=4, intents=intents())
        old.reply_to_pings = new.reply_to_pings = True
        async with running(old), running(new) as new_task:
            await wait_until(lambda: old.ready_count == 1 and new.ready_count == 1, timeout=15)
            stats = sim.stats()
            assert stats["duplicate_sessions"]["count"] == 0
            assert stats["shard_counts"] == {"3": {"shards_ready": [0, 1, 2], "sessions": 3},
                                             "4": {"shards_ready": [0, 1, 2, 3], "sessions": 4}}
            for guild_id in sim.guild_ids():
                sim.send_ping(guild_id)  # each generation gets it and answers: twice
            await wait_until(lambda: sim.stats()["handling"]["answered_twice_or_more"] == 12, timeout=10)
            await old.close()
            await wait_until(lambda: "3" not in sim.stats()["shard_counts"], timeout=10)
            sim.reset()
            for guild_id in sim.guild_ids():
                sim.send_ping(guild_id)
            await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 12, timeout=10)
            async with http.post(sim.base_url + "/_sim/guilds", json={"count": 4}) as response:
                added = [int(g) for g in (await response.json())["added"]]
            await wait_until(lambda: {g.id for g in new.guilds} == set(sim.guild_ids()), timeout=10)
            assert all(new.get_guild(g).shard_id == (g >> 22) % 4 for g in added)  # type: ignore[union-attr]
            async with http.post(sim.base_url + "/_sim/guilds?count=1") as response:
                assert response.status == 200  # one shard of 4 now holds 5 guilds: closed with 4011
            with pytest.raises(discord.ConnectionClosed) as closed:
                await asyncio.wait_for(new_task, timeout=scaled(10))
            assert closed.value.code == 4011
        assert sim.stats()["close_codes"]["4011"] == 1  # counted since the reset
