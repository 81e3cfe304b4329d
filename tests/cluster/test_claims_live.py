"""Two sessions of one shard, both getting every event: with claims each ping and join is answered once,
without them (the control) twice. Real discord.py clients, real Redis, the simulated Discord."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from support.cluster import KEYS, AnsweringClient, grant, lease_kept, make_env, running, write_layout
from support.waiting import wait_until

from letsfrag.sim import Simulator

EVENTS = 12


@pytest.mark.parametrize("claims", [True, False], ids=["claims", "control-without-claims"])
async def test_two_sessions_of_one_shard_answer_each_event_once(redis_url: str, r: aioredis.Redis,
                                                                claims: bool) -> None:
    async with Simulator(shards=1, guilds=2, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)  # both processes run cluster 0 under its grant: two sessions of shard 0 at once
        overrides: dict[str, Any] = {} if claims else {"claim_events": ()}
        async with lease_kept(r):
            first = AnsweringClient(make_env(redis_url, sim, 0, (0,), 1, **overrides))
            second = AnsweringClient(make_env(redis_url, sim, 0, (0,), 1, **overrides))
            async with running(first), running(second):
                await wait_until(lambda: first.cluster.ready and second.cluster.ready, timeout=20,
                                 message="both sessions of shard 0 ready")
                for index in range(EVENTS):
                    if index % 3 == 2:
                        sim.send_join()
                    else:
                        sim.send_ping()

                def settled() -> bool:
                    handling = sim.stats()["handling"]
                    return handling["answered_once"] + handling["answered_twice_or_more"] == EVENTS

                await wait_until(settled, timeout=20, message="every event answered")
                handling = sim.stats()["handling"]
                assert handling["sent_join"] == EVENTS // 3
                if claims:
                    assert (handling["answered_once"], handling["answered_twice_or_more"]) == (EVENTS, 0)
                    assert first.handled + second.handled == EVENTS
                    stats = [first.claim_stats, second.claim_stats]
                    assert sum(s["won"] for s in stats) == EVENTS and sum(s["lost"] for s in stats) == EVENTS
                    assert len(await r.keys(KEYS.claim("*"))) == EVENTS
                else:
                    await wait_until(lambda: first.handled == second.handled == EVENTS, timeout=10,
                                     message="both sessions handled every event")
                    assert handling["answered_twice_or_more"] == EVENTS
                    assert await r.keys(KEYS.claim("*")) == []
