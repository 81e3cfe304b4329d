"""The simulator during a reshard (pure, on SimCore): sessions of two shard counts at once, the recommended shard
count, guilds added at run time, and 4011 for a shard holding too many guilds."""

from __future__ import annotations

import json

import pytest
from support.sim import FakeLink

from letsfrag.clock import FakeClock
from letsfrag.contract.opcodes import GatewayOp
from letsfrag.sim import SimulatorOptions, payloads
from letsfrag.sim.client_ops import handle_command
from letsfrag.sim.core import SimCore
from letsfrag.sim.referee import Referee
from letsfrag.sim.world import recommended_shards

_INTENTS = 513 | (1 << 15)  # guilds, guild messages, message content


@pytest.mark.parametrize(
    ("guilds", "per_shard", "max_concurrency", "shards"),
    [(0, 1000, 1, 1), (1000, 1000, 1, 1), (1001, 1000, 1, 2), (2500, 1000, 4, 4), (9000, 1000, 4, 12), (7, 2, 1, 4)],
)
def test_recommended_shards(guilds: int, per_shard: int, max_concurrency: int, shards: int) -> None:
    assert recommended_shards(guilds, per_shard, max_concurrency) == shards


def _core(**options: object) -> SimCore:
    settings: dict = dict(shards=2, guilds=8, identify_window=0.0)
    settings.update(options)
    return SimCore(SimulatorOptions(**settings), clock=FakeClock())


def _identify(core: SimCore, shard: list[int]) -> FakeLink:
    link = FakeLink(core.clock())
    core.link_opened(link)
    handle_command(core, link, GatewayOp.IDENTIFY, {"token": "t", "intents": _INTENTS, "shard": shard})
    return link


def _events(link: FakeLink, name: str) -> list[dict]:
    frames = [json.loads(f) for f in link.sent]
    return [f["d"] for f in frames if f.get("t") == name]


def test_a_guild_goes_to_its_shard_of_every_shard_count_in_use() -> None:
    core = _core()
    links = {(s, n): _identify(core, [s, n]) for n in (2, 4) for s in range(n)}
    for (shard_id, count), link in links.items():
        ready = _events(link, "READY")[0]
        expected = [g for g in core.world.guilds if payloads.shard_for(g, count) == shard_id]
        assert [int(g["id"]) for g in ready["guilds"]] == expected and expected
        assert [int(g["id"]) for g in _events(link, "GUILD_CREATE")] == expected
    guild_id = list(core.world.guilds)[5]
    n = core.send_ping(guild_id)
    got = {key for key, link in links.items()
           if any(m["content"] == f"!ping {n}" for m in _events(link, "MESSAGE_CREATE"))}
    assert got == {(payloads.shard_for(guild_id, 2), 2), (payloads.shard_for(guild_id, 4), 4)}
    # one answer per event: once; the second generation answering too: twice
    core.referee.handling.reply(None, f"pong {n}")
    assert core.stats()["handling"]["answered_once"] == 1
    core.referee.handling.reply(None, f"pong {n}")
    assert core.stats()["handling"]["answered_twice_or_more"] == 1
    stats = core.stats()
    assert stats["duplicate_sessions"]["count"] == 0
    assert stats["sessions_active"] == {"0": 1, "1": 1, "0/4": 1, "1/4": 1, "2/4": 1, "3/4": 1}
    assert stats["shards_ready"] == [0, 1]
    assert stats["shard_counts"] == {"2": {"shards_ready": [0, 1], "sessions": 2},
                                     "4": {"shards_ready": [0, 1, 2, 3], "sessions": 4}}


def test_the_referee_keys_a_shard_by_id_and_count() -> None:
    referee = Referee(max_concurrency=1, identify_window=0.0, enforce_window=False, session_start_total=10,
                      reject_when_exhausted=False, answer_timeout=5.0, now=0.0, shards=8)
    referee.session_live(3, "old", 0.0, shard_count=8)
    referee.session_live(3, "new", 1.0, shard_count=16)
    assert referee.snapshot(2.0)["duplicate_sessions"]["count"] == 0
    referee.session_live(3, "stray", 2.0, shard_count=16)
    snap = referee.snapshot(3.0)
    assert snap["duplicate_sessions"]["per_shard"] == {"3/16": 1}
    assert snap["duplicate_sessions"]["overlapping_now"] == ["3/16"]
    referee.session_dead(3, "stray", 4.0, shard_count=16)
    referee.session_dead(3, "old", 4.0, shard_count=8)
    assert referee.snapshot(5.0)["sessions_active"] == {"3/16": 1}


def test_gateway_bot_recommends_from_the_guild_count() -> None:
    assert _core().recommended_shards() == 2  # without guilds_per_shard: the configured count
    core = _core(guilds_per_shard=3, max_concurrency=2)
    assert core.recommended_shards() == 4  # ceil(8 / 3) = 3, rounded up to a multiple of 2
    core.add_guilds(10)
    assert core.recommended_shards() == 6


def test_identify_refuses_a_shard_count_that_is_not_a_multiple_of_max_concurrency() -> None:
    core = _core(max_concurrency=2)
    refused = _identify(core, [0, 3])
    assert refused.closed_with is not None and refused.closed_with[0] == 4010
    assert _identify(core, [0, 4]).closed_with is None


def test_4011_at_identify_and_for_a_live_session_when_guilds_are_added() -> None:
    core = _core(max_guilds_per_shard=3)  # 8 guilds: 4 per shard of 2, 2 per shard of 4
    too_big = _identify(core, [0, 2])
    assert too_big.closed_with is not None and too_big.closed_with[0] == 4011
    assert "at most 3" in too_big.closed_with[1] and not _events(too_big, "READY")
    links = [_identify(core, [s, 4]) for s in range(4)]
    assert all(link.closed_with is None for link in links)
    added = core.add_guilds(4)  # 12 guilds: 3 per shard of 4, still fine; each appears on its shard
    for shard_id, link in enumerate(links):
        new = [int(g["id"]) for g in _events(link, "GUILD_CREATE") if int(g["id"]) in added]
        assert new == [g for g in added if payloads.shard_for(g, 4) == shard_id] and len(new) == 1
    core.add_guilds(1)  # one shard of 4 now holds 4
    closed = [link for link in links if link.closed_with is not None]
    assert len(closed) == 1 and closed[0].closed_with is not None and closed[0].closed_with[0] == 4011
    stats = core.stats()
    assert stats["close_codes"] == {"4011": 2} and stats["sessions_resumable"] == 0
    assert len(stats["shard_counts"]["4"]["shards_ready"]) == 3
