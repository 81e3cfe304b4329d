"""The gateway protocol driven by hand: close codes, compression framing, resume, op 8, reaper, limits."""

from __future__ import annotations

import time
from typing import Any

import pytest
from support.sim import RawGateway, raw_gateway
from support.waiting import wait_until

from letsfrag.sim import Simulator

pytestmark = pytest.mark.integration

FAST: dict[str, Any] = dict(shards=4, guilds=8, heartbeat_interval=5.0, identify_window=0.0, ack_delay=0.0)


async def _ready(gw: RawGateway, shard: list[int] | None, **kwargs: object) -> dict:
    hello = await gw.recv()
    assert hello["op"] == 10
    await gw.identify(shard, **kwargs)  # type: ignore[arg-type]
    return await gw.recv_until(lambda p: p.get("t") == "READY")


async def test_hello_ready_and_guild_creates_over_zlib_stream() -> None:
    async with Simulator(**FAST) as sim, raw_gateway(sim, zlib_stream=True) as gw:
        hello = await gw.recv()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 5000
        await gw.identify([1, 4])
        ready = await gw.recv()
        assert ready["t"] == "READY" and ready["s"] == 1
        data = ready["d"]
        assert {"resume_gateway_url", "session_id", "user", "guilds", "shard"} <= set(data)
        assert data["shard"] == [1, 4] and data["resume_gateway_url"] == sim.gateway_url
        assert [int(g["id"]) for g in data["guilds"]] == sim.guild_ids(1)
        creates = [await gw.recv() for _ in sim.guild_ids(1)]
        assert [c["t"] for c in creates] == ["GUILD_CREATE", "GUILD_CREATE"]
        assert [c["s"] for c in creates] == [2, 3]
        assert all((int(c["d"]["id"]) >> 22) % 4 == 1 for c in creates)
        # one compressobj for the connection, every message flushed with Z_SYNC_FLUSH
        assert gw.raw_frames and all(frame.endswith(b"\x00\x00\xff\xff") for frame in gw.raw_frames)


async def test_heartbeat_ack_waits_for_the_ack_delay() -> None:
    async with Simulator(**{**FAST, "ack_delay": 0.15}) as sim, raw_gateway(sim) as gw:
        await gw.recv()
        started = time.monotonic()
        await gw.send(1, None)
        ack = await gw.recv()
        assert ack["op"] == 11
        assert time.monotonic() - started >= 0.14


@pytest.mark.parametrize(
    ("shard", "kwargs", "code"),
    [
        ([0, 4], {"token": ""}, 4004),
        ([4, 4], {}, 4010),
        ([0, 0], {}, 4010),
        (None, {}, 4011),
        ([0, 4], {"intents": 1 << 30}, 4013),
    ],
)
async def test_bad_identify_is_closed_with_the_discord_code(shard: list[int] | None, kwargs: dict, code: int) -> None:
    async with Simulator(**FAST) as sim, raw_gateway(sim) as gw:
        await gw.recv()
        await gw.identify(shard, **kwargs)
        assert await gw.close_code() == code
        assert sim.stats()["close_codes"] == {str(code): 1}


async def test_configured_token_is_required_and_wrong_version_is_refused() -> None:
    async with Simulator(**FAST, token="secret") as sim:
        async with raw_gateway(sim) as gw:
            await gw.recv()
            await gw.identify([0, 4], token="other")
            assert await gw.close_code() == 4004
        async with raw_gateway(sim) as gw:
            assert (await _ready(gw, [0, 4], token="secret"))["t"] == "READY"
        async with raw_gateway(sim, query="v=6&encoding=json") as gw:
            assert await gw.close_code() == 4012


async def test_second_identify_on_one_connection_is_4005() -> None:
    async with Simulator(**FAST) as sim, raw_gateway(sim) as gw:
        await _ready(gw, [0, 4])
        await gw.identify([0, 4])
        assert await gw.close_code() == 4005


async def test_request_guild_members_answers_a_chunk_with_the_nonce() -> None:
    async with Simulator(**FAST, members_per_guild=3) as sim, raw_gateway(sim) as gw:
        await _ready(gw, [0, 4], intents=513 | 2)
        guild_id = sim.guild_ids(0)[0]
        await gw.send(8, {"guild_id": str(guild_id), "query": "", "limit": 0, "nonce": "abc"})
        chunk = await gw.recv_until(lambda p: p.get("t") == "GUILD_MEMBERS_CHUNK")
        assert chunk["d"]["nonce"] == "abc" and chunk["d"]["chunk_count"] == 1
        assert len(chunk["d"]["members"]) == 4  # the bot and three members
        await gw.send(8, {"guild_id": str(guild_id), "user_ids": ["1"], "limit": 0, "nonce": "x"})
        chunk = await gw.recv_until(lambda p: p.get("t") == "GUILD_MEMBERS_CHUNK")
        assert chunk["d"]["members"] == [] and chunk["d"]["not_found"] == ["1"]


async def test_resume_replays_missed_dispatches_then_resumed() -> None:
    async with Simulator(**FAST) as sim:
        async with raw_gateway(sim) as gw:
            ready = await _ready(gw, [2, 4])
            session_id = ready["d"]["session_id"]
            last_seq = ready["s"]  # resume from READY: the GUILD_CREATEs must come again
        await wait_until(lambda: sim.stats()["sessions_resumable"] == 1)
        routed = sim.dispatch("TYPING_START", {"channel_id": "1"}, shard_id=2)
        assert (routed.live, routed.buffered) == (0, 1)
        async with raw_gateway(sim) as gw:
            await gw.recv()
            await gw.send(6, {"token": "t", "session_id": session_id, "seq": last_seq})
            events = [(await gw.recv())["t"] for _ in range(4)]
            assert events == ["GUILD_CREATE", "GUILD_CREATE", "TYPING_START", "RESUMED"]
            assert sim.stats()["resumes"] == 1 and sim.stats()["shards_ready"] == [2]


async def test_resume_of_an_unknown_or_closed_session_is_invalid_session_false() -> None:
    async with Simulator(**FAST) as sim:
        async with raw_gateway(sim) as gw:
            ready = await _ready(gw, [0, 4])
            session_id = ready["d"]["session_id"]
            await gw.ws.close(code=1000)  # a clean close ends the session for good
        async with raw_gateway(sim) as gw:
            await gw.recv()
            await gw.send(6, {"token": "t", "session_id": session_id, "seq": 1})
            assert await gw.recv() == {"op": 9, "d": False, "s": None, "t": None}
        assert sim.stats()["resume_failures"] == 1


async def test_silent_connection_is_reaped_with_4009_and_stays_resumable() -> None:
    async with Simulator(**{**FAST, "heartbeat_interval": 0.2}) as sim:
        async with raw_gateway(sim) as gw:
            ready = await _ready(gw, [3, 4])
            assert await gw.close_code(timeout=3) == 4009
        stats = sim.stats()
        assert stats["zombies_reaped"] == 1 and stats["shards_ready"] == []
        async with raw_gateway(sim) as gw:
            await gw.recv()
            await gw.send(6, {"token": "t", "session_id": ready["d"]["session_id"], "seq": 3})
            assert (await gw.recv())["t"] == "RESUMED"


async def test_resume_window_expires() -> None:
    async with Simulator(**FAST, resume_window=0.1) as sim:
        async with raw_gateway(sim) as gw:
            ready = await _ready(gw, [0, 4])
        await wait_until(lambda: sim.stats()["sessions_resumable"] == 0, message="session expiry")
        async with raw_gateway(sim) as gw:
            await gw.recv()
            await gw.send(6, {"token": "t", "session_id": ready["d"]["session_id"], "seq": 1})
            assert (await gw.recv())["op"] == 9


@pytest.mark.parametrize(("mode", "expect"), [("close", "close4008"), ("invalid", "op9")])
async def test_identify_violation_modes(mode: str, expect: str) -> None:
    async with Simulator(**{**FAST, "identify_window": 30.0}, on_violation=mode) as sim:
        async with raw_gateway(sim) as first, raw_gateway(sim) as second:
            await _ready(first, [0, 4])
            await second.recv()
            await second.identify([1, 4])  # same bucket (max_concurrency 1), 30 s too early
            if expect == "close4008":
                assert await second.close_code() == 4008
            else:
                assert await second.recv() == {"op": 9, "d": False, "s": None, "t": None}
            stats = sim.stats()
            assert stats["identify_violations"] == {"total": 1, "per_bucket": {"0": 1}}
            assert stats["shards_ready"] == [0]


async def test_exhausted_session_budget_is_refused_when_asked() -> None:
    async with Simulator(**FAST, session_start_total=1, reject_when_exhausted=True) as sim:
        async with raw_gateway(sim) as gw:
            await _ready(gw, [0, 4])
        assert sim.stats()["session_start_remaining"] == 0
        async with raw_gateway(sim) as gw:
            await gw.recv()
            await gw.identify([1, 4])
            assert await gw.close_code() == 4008
        assert sim.stats()["session_start_rejections"] == 1


async def test_gateway_command_rate_limit_is_counted() -> None:
    async with Simulator(**FAST, gateway_rate_limit=5, on_violation="close") as sim, raw_gateway(sim) as gw:
        await gw.recv()
        for _ in range(6):
            await gw.send(1, None)
        assert await gw.close_code() == 4008
        assert sim.stats()["gateway_rate_limited"] == 1


async def test_added_guilds_reach_live_sessions() -> None:
    async with Simulator(**FAST) as sim, raw_gateway(sim) as gw:
        await _ready(gw, [0, 4])
        for _ in sim.guild_ids(0):
            await gw.recv()
        new_ids = sim.add_guilds(4)
        assert sum(1 for g in new_ids if (g >> 22) % 4 == 0) == 1
        create = await gw.recv()
        assert create["t"] == "GUILD_CREATE" and int(create["d"]["id"]) in new_ids


async def test_a_successor_connection_is_an_announced_overlap_not_a_duplicate() -> None:
    async with Simulator(**FAST) as sim, raw_gateway(sim) as old, \
            raw_gateway(sim, query="v=10&encoding=json&letsfrag_handover=5") as new:
        await _ready(old, [1, 4])
        ready = await _ready(new, [1, 4])
        stats = sim.stats()
        assert stats["duplicate_sessions"]["count"] == 0 and stats["sessions_active"]["1"] == 2
        assert stats["announced_overlaps"]["count"] == 1 and stats["announced_overlaps"]["overlapping_now"] == [1]
        # the successor's session resumed on a plain connection (resume_gateway_url) keeps its mark
        await new.close()
        async with raw_gateway(sim) as again:
            await again.recv()
            await again.send(6, {"token": "test-token", "session_id": ready["d"]["session_id"], "seq": ready["s"]})
            await again.recv_until(lambda p: p.get("t") == "RESUMED")
            assert sim.stats()["duplicate_sessions"]["count"] == 0
        await old.close(1000)
        await wait_until(lambda: sim.stats()["announced_overlaps"]["overlapping_now"] == [], timeout=5)
        assert "1" in sim.stats()["announced_overlaps"]["longest_per_shard"]
    async with Simulator(**FAST) as sim, raw_gateway(sim) as first, raw_gateway(sim) as second:
        await _ready(first, [2, 4])
        await _ready(second, [2, 4])  # two sessions nobody announced: still a duplicate
        assert sim.stats()["duplicate_sessions"]["count"] == 1 and sim.stats()["announced_overlaps"]["count"] == 0
