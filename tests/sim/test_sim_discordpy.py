"""Unmodified discord.py 2.7 clients against the simulator, in-process on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import discord
import pytest
from support.sim import FastClient, ZlibContext, intents, running
from support.waiting import scaled, wait_until

from letsfrag.sim import Simulator, SimulatorOptions
from letsfrag.sim.compression import zstd_available

pytestmark = pytest.mark.integration

Point = Callable[[Simulator], None]
FAST: dict[str, Any] = dict(shards=8, guilds=40, heartbeat_interval=1.0, identify_window=0.0)


def zstd_requested() -> bool:
    """discord.py 2.7 asks for zstd-stream when zstandard (or Python 3.14's compression.zstd) imports."""
    return discord.utils._ActiveDecompressionContext.COMPRESSION_TYPE == "zstd-stream"


@pytest.mark.parametrize("transport", ["zstd-stream", "zlib-stream"])
async def test_autosharded_client_gets_every_shard_ready(
    transport: str, point_discord: Point, monkeypatch: pytest.MonkeyPatch
) -> None:
    if transport == "zstd-stream" and not (zstd_requested() and zstd_available()):
        pytest.skip("discord.py does not ask for zstd-stream here (zstandard not importable)")
    if transport == "zlib-stream":
        monkeypatch.setattr(discord.utils, "_ActiveDecompressionContext", ZlibContext)
    async with Simulator(**FAST, ack_delay=0.03) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=[0, 1, 2, 3], shard_count=8, intents=intents())
        async with running(client):
            await wait_until(lambda: client.ready_count == 1, timeout=15, message="on_ready")
            assert sorted(client.shards_ready) == [0, 1, 2, 3]
            expected = {g for s in range(4) for g in sim.guild_ids(s)}
            assert {g.id for g in client.guilds} == expected
            for guild in client.guilds:
                assert guild.shard_id == (guild.id >> 22) % 8
                assert [c.name for c in guild.text_channels] == ["general"]
                assert guild.default_role.is_default()
                assert guild.me is not None and client.user is not None and guild.me.id == client.user.id
            await wait_until(lambda: all(0 < lat < 1 for _, lat in client.latencies), message="latencies")
            assert all(lat >= 0.025 for _, lat in client.latencies), client.latencies  # the ACK delay shows
            stats = sim.stats()
            assert stats["gateway_connections"] == {transport: 4}
            assert stats["identifies"] == {"total": 4, "per_shard": {"0": 1, "1": 1, "2": 1, "3": 1}}
            assert stats["shards_ready"] == [0, 1, 2, 3]
            assert stats["duplicate_sessions"]["count"] == 0
            assert stats["session_start_remaining"] == 996
        await wait_until(lambda: sim.stats()["shards_ready"] == [], message="sessions end with the client")


async def test_members_intent_is_answered_with_chunks(point_discord: Point) -> None:
    async with Simulator(**FAST, members_per_guild=7) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=[0, 1, 2, 3], shard_count=8, intents=intents(members=True))
        async with running(client):
            # unanswered op 8 would hold on_ready ~5 s per guild
            await wait_until(lambda: client.ready_count == 1, timeout=4, message="on_ready with members")
            assert sim.stats()["member_chunk_requests"] == len(client.guilds) == 20
            assert all(len(g.members) == 8 and g.chunked for g in client.guilds)


async def test_two_clients_in_one_bucket_inside_the_window_is_a_violation(point_discord: Point) -> None:
    async with Simulator(**{**FAST, "identify_window": 5.0}, max_concurrency=2) as sim:
        point_discord(sim)
        first = FastClient(shard_ids=[0], shard_count=8, intents=intents())
        second = FastClient(shard_ids=[2], shard_count=8, intents=intents())  # bucket 0 as well
        third = FastClient(shard_ids=[1], shard_count=8, intents=intents())  # bucket 1: fine
        async with running(first), running(second), running(third):
            await wait_until(lambda: first.ready_count and second.ready_count and third.ready_count)
            stats = sim.stats()
            assert stats["identify_violations"] == {"total": 1, "per_bucket": {"0": 1}}
            assert stats["shards_ready"] == [0, 1, 2]


async def test_violation_closes_with_4008_and_the_client_gets_in_after_the_window(point_discord: Point) -> None:
    async with Simulator(**{**FAST, "identify_window": 0.5}, on_violation="close", max_concurrency=1) as sim:
        point_discord(sim)
        first = FastClient(shard_ids=[0], shard_count=8, intents=intents())
        second = FastClient(shard_ids=[1], shard_count=8, intents=intents())
        async with running(first):
            await wait_until(lambda: first.ready_count == 1)
            async with running(second):
                await wait_until(lambda: second.ready_count == 1, timeout=10)
        stats = sim.stats()
        assert stats["identify_violations"]["total"] >= 1
        assert stats["close_codes"].get("4008", 0) >= 1
        assert stats["duplicate_sessions"]["count"] == 0


async def test_two_clients_running_one_shard_are_duplicate_sessions(point_discord: Point) -> None:
    async with Simulator(**FAST) as sim:
        point_discord(sim)
        first = FastClient(shard_ids=[3], shard_count=8, intents=intents())
        second = FastClient(shard_ids=[3], shard_count=8, intents=intents())
        async with running(first):
            await wait_until(lambda: first.ready_count == 1)
            async with running(second):
                await wait_until(lambda: second.ready_count == 1)
                stats = sim.stats()
                assert stats["sessions_active"] == {"3": 2}
                assert stats["duplicate_sessions"]["count"] == 1
                assert stats["duplicate_sessions"]["overlapping_now"] == [3]
                # Discord sends a shard's events to every live session of it
                sim.send_ping(sim.guild_ids(3)[0])
                await wait_until(lambda: len(first.messages) == 1 and len(second.messages) == 1)
            await wait_until(lambda: sim.stats()["sessions_active"] == {"3": 1})
            duplicates = sim.stats()["duplicate_sessions"]
            assert duplicates["overlapping_now"] == []
            assert duplicates["longest_overlap_seconds"] > 0


async def test_resume_after_drop_replays_what_was_sent_meanwhile(point_discord: Point) -> None:
    async with Simulator(**FAST) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=[0, 1], shard_count=8, intents=intents())
        client.reply_to_pings = True
        async with running(client):
            await wait_until(lambda: client.ready_count == 1)
            assert sim.drop_shard(0) == 1
            # synchronous: the ping is buffered before the client can possibly have resumed
            n = sim.send_ping(sim.guild_ids(0)[0])
            assert sim.stats()["handling"]["undeliverable"] == 1
            await wait_until(lambda: [m.content for m in client.messages] == [f"!ping {n}"], message="replay")
            await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 1, message="answer")
            stats = sim.stats()
            assert client.shards_resumed == [0]
            assert stats["resumes"] == 1
            assert stats["identifies"]["total"] == 2  # resumed, not re-identified
            assert stats["handling"]["undeliverable"] == 0
            assert stats["shards_ready"] == [0, 1]


async def test_reconnect_and_invalidate_are_followed_by_resume_and_identify(point_discord: Point) -> None:
    async with Simulator(**FAST) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=[0, 1], shard_count=8, intents=intents())
        async with running(client):
            await wait_until(lambda: client.ready_count == 1)
            assert sim.reconnect_shard(1) == 1
            await wait_until(lambda: sim.stats()["resumes"] == 1 and sim.stats()["shards_ready"] == [0, 1])
            assert sim.invalidate_shard(0) == 1
            await wait_until(lambda: sim.stats()["identifies"]["per_shard"]["0"] == 2)
            await wait_until(lambda: sim.stats()["shards_ready"] == [0, 1])
            assert sim.stats()["invalid_sessions"] == 1
            assert sim.stats()["duplicate_sessions"]["count"] == 0


async def test_chaos_leaves_every_shard_live_again(point_discord: Point) -> None:
    async with Simulator(**FAST, seed=7) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=[0, 1, 2, 3], shard_count=8, intents=intents())
        async with running(client):
            await wait_until(lambda: client.ready_count == 1)
            await sim.start_chaos(seconds=1.0, rate=8)
            await wait_until(lambda: sim.stats()["shards_ready"] == [0, 1, 2, 3], timeout=15)
            stats = sim.stats()
            assert stats["reconnects"] + stats["invalid_sessions"] >= 8
            assert stats["duplicate_sessions"]["count"] == 0


async def test_traffic_is_answered_exactly_once(point_discord: Point) -> None:
    async with Simulator(**FAST) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=list(range(8)), shard_count=8, intents=intents())
        client.reply_to_pings = True
        async with running(client):
            await wait_until(lambda: client.ready_count == 1)
            await sim.start_traffic(rate=40, seconds=0.5)
            await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 20, message="20 answers")
            handling = sim.stats()["handling"]
            assert handling["sent"] == 20
            assert handling["answered_twice_or_more"] == handling["unanswered_live"] == 0


async def test_member_joins_are_welcomed_once_and_counted_beside_pings(point_discord: Point) -> None:
    async with Simulator(**FAST) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=list(range(8)), shard_count=8, intents=intents(members=True),
                            chunk_guilds_at_startup=False)
        client.reply_to_pings = True
        async with running(client):
            await wait_until(lambda: client.ready_count == 1)
            await sim.start_traffic(rate=40, seconds=0.5, joins=0.5)
            await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 20, message="20 answers")
            handling = sim.stats()["handling"]
            assert handling["sent"] == 20 and handling["sent_join"] == 10 and handling["sent_ping"] == 10
            assert handling["answered_twice_or_more"] == handling["unanswered_live"] == 0
            joined = [m for g in client.guilds for m in g.members if m.name.startswith("joiner-")]
            assert len(joined) == 10


async def test_a_join_is_not_delivered_without_the_members_intent(point_discord: Point) -> None:
    async with Simulator(**FAST) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=list(range(8)), shard_count=8, intents=intents(members=False))
        async with running(client):
            await wait_until(lambda: client.ready_count == 1)
            sim.core.send_join()
            assert sim.stats()["handling"]["undeliverable"] == 1


async def test_bad_token_is_login_failure(point_discord: Point) -> None:
    async with Simulator(**FAST, token="the-right-token") as sim:
        point_discord(sim)
        client = FastClient(shard_ids=[0], shard_count=8, intents=intents())
        try:
            with pytest.raises(discord.LoginFailure):
                await asyncio.wait_for(client.start("a-wrong-token"), timeout=scaled(10))
        finally:
            await client.close()


async def test_disallowed_intents_surface_as_privileged_intents_required(point_discord: Point) -> None:
    async with Simulator(SimulatorOptions(**FAST, privileged_intents_allowed=False)) as sim:
        point_discord(sim)
        client = FastClient(shard_ids=[0], shard_count=8, intents=intents(members=True))
        try:
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(client.start("token"), timeout=scaled(10))
        finally:
            await client.close()
        assert sim.stats()["close_codes"] == {"4014": 1}


async def test_plain_client_and_gateway_bot_shard_count(point_discord: Point) -> None:
    async with Simulator(shards=1, guilds=3, heartbeat_interval=1.0) as sim:
        point_discord(sim)
        plain = discord.Client(intents=intents(), guild_ready_timeout=0.1)
        ready = asyncio.Event()
        plain.event(_setter(ready, "on_ready"))
        async with running(plain):
            await asyncio.wait_for(ready.wait(), timeout=scaled(10))
            assert len(plain.guilds) == 3 and plain.application_id is not None
    async with Simulator(**FAST) as sim:
        point_discord(sim)
        auto = FastClient(intents=intents())  # no shard_count: asks GET /gateway/bot
        async with running(auto):
            await wait_until(lambda: auto.ready_count == 1, timeout=10)
            assert auto.shard_count == 8 and sorted(auto.shards_ready) == list(range(8))


def _setter(event: asyncio.Event, name: str) -> Callable[[], Any]:
    async def handler() -> None:
        event.set()

    handler.__name__ = name
    return handler
