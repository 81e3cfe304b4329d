"""The replay side connection against the simulator: RESUME a dead session, drain it, close 1000; no IDENTIFY."""

from __future__ import annotations

import json

import aiohttp
import pytest
from support.waiting import wait_until

from letsfrag.cluster.replay import (
    DISCORD_EPOCH_MS,
    drain_session,
    is_expired_interaction,
    snowflake_time,
)
from letsfrag.cluster.session_records import SessionRecord
from letsfrag.sim import Simulator

#: GUILDS | GUILD_MEMBERS | GUILD_MESSAGES | MESSAGE_CONTENT
INTENTS = 1 | 2 | 512 | 32768


async def dead_session(sim: Simulator) -> SessionRecord:
    """IDENTIFY shard 0 on a raw connection, read READY and its GUILD_CREATEs, then cut the TCP connection
    without a close frame (a SIGKILLed host): the session stays resumable."""
    http = aiohttp.ClientSession()
    try:
        ws = await http.ws_connect(sim.gateway_url + "?v=10&encoding=json")
        hello = json.loads((await ws.receive()).data)
        assert hello["op"] == 10
        await ws.send_str(json.dumps({"op": 2, "d": {"token": "test-token", "intents": INTENTS, "shard": [0, 1],
                                                     "properties": {}}}))
        ready = json.loads((await ws.receive()).data)
        assert ready["t"] == "READY"
        seq = ready["s"]
        for _ in sim.guild_ids(shard_id=0):
            frame = json.loads((await ws.receive()).data)
            assert frame["t"] == "GUILD_CREATE"
            seq = frame["s"]
        return SessionRecord(0, ready["d"]["session_id"], ready["d"]["resume_gateway_url"], seq, 1)
    finally:
        await http.close()  # the socket goes away without a websocket close frame


@pytest.mark.integration
async def test_drain_replays_what_the_dead_session_missed_then_ends_it() -> None:
    async with Simulator(shards=1, guilds=2, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        record = await dead_session(sim)
        await wait_until(lambda: sim.stats()["connections"] == 0, message="the simulator saw the connection drop")
        sent = [sim.send_ping(), sim.send_ping(), sim.send_join(), sim.send_ping()]
        assert sim.stats()["handling"]["undeliverable"] == len(sent)  # nobody is connected
        identifies = sim.stats()["identifies"]["total"]

        replay = await drain_session(record, "test-token")
        assert replay.resumed and replay.reason == ""
        assert [event for event, _ in replay.events] == ["MESSAGE_CREATE"] * 2 + ["GUILD_MEMBER_ADD", "MESSAGE_CREATE"]
        assert [data["content"] for event, data in replay.events if event == "MESSAGE_CREATE"] == [
            f"!ping {sent[0]}", f"!ping {sent[1]}", f"!ping {sent[3]}"]
        assert replay.seq == record.seq + len(sent) + 1  # the replayed dispatches and RESUMED
        stats = sim.stats()
        assert stats["identifies"]["total"] == identifies  # a replay spends no IDENTIFY
        assert stats["resumes"] == 1 and stats["handling"]["undeliverable"] == 0
        assert stats["replay_drains"] == 1 and stats["duplicate_sessions"]["count"] == 0

        # closed with 1000: the session is over, a second RESUME of it is refused (op 9)
        again = await drain_session(record, "test-token")
        assert not again.resumed and again.events == []
        assert "INVALID_SESSION" in again.reason
        assert sim.stats()["resume_failures"] == 1


def test_interactions_older_than_three_seconds_are_expired() -> None:
    created_ms = 1_700_000_000_000
    snowflake = (created_ms - DISCORD_EPOCH_MS) << 22
    assert snowflake_time(snowflake) == created_ms / 1000
    data = {"id": str(snowflake), "type": 2}
    assert not is_expired_interaction("INTERACTION_CREATE", data, now=created_ms / 1000 + 2.9)
    assert is_expired_interaction("INTERACTION_CREATE", data, now=created_ms / 1000 + 3.1)
    assert not is_expired_interaction("MESSAGE_CREATE", {"id": str(snowflake)}, now=created_ms / 1000 + 60)
