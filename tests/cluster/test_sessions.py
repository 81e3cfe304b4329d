"""Session records: the format both ways, and a running cluster keeping them current in Redis."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from cluster_support import KEYS, RecordingClient, grant, lease_kept, make_env, running, write_layout
from helpers import wait_until

from letsfrag.cluster.sessions import SESSION_RECORD_TTL, SessionRecord, SessionStore
from letsfrag.ipc import IpcChannel
from letsfrag.sim import Simulator


def test_record_round_trip_has_exactly_the_four_fields() -> None:
    record = SessionRecord(3, "abc", "wss://gateway.example/", 41, 7)
    assert json.loads(record.to_json()) == {"session_id": "abc", "resume_gateway_url": "wss://gateway.example/",
                                            "seq": 41, "epoch": 7}
    assert SessionRecord.from_json(3, record.to_json()) == record


@pytest.mark.parametrize(("raw", "problem"), [
    ("{nope", "shard 2 is not JSON"),
    ("[1]", "not a JSON object"),
    ('{"session_id": "", "resume_gateway_url": "ws://x", "seq": 1, "epoch": 1}', "session_id must be"),
    ('{"session_id": "s", "resume_gateway_url": "http://x", "seq": 1, "epoch": 1}', "resume_gateway_url must be"),
    ('{"session_id": "s", "resume_gateway_url": "ws://x", "seq": -1, "epoch": 1}', "seq must be an integer"),
    ('{"session_id": "s", "resume_gateway_url": "ws://x", "seq": 1, "epoch": true}', "epoch must be an integer"),
])
def test_bad_records_are_named(raw: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SessionRecord.from_json(2, raw)


async def test_store_skips_an_unreadable_record(r: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    store = SessionStore(r, KEYS, 5)
    assert await store.save([SessionRecord(0, "s0", "ws://g/", 9, 2)]) == 1
    await r.hset(KEYS.session_records(5), "1", "garbage")  # type: ignore[misc]
    assert await store.load() == {0: SessionRecord(0, "s0", "ws://g/", 9, 2)}
    assert f"{KEYS.session_records(5)}: session record of shard 1 is not JSON" in caplog.text
    assert 0 < await r.pttl(KEYS.session_records(5)) <= SESSION_RECORD_TTL * 1000


async def test_a_running_cluster_keeps_its_session_records(redis_url: str, r: aioredis.Redis) -> None:
    parent, child = socket.socketpair()
    async with Simulator(shards=2, guilds=4, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 2, 2)
        await grant(r, 0, epoch=4)
        async with lease_kept(r):
            env = make_env(redis_url, sim, 0, (0, 1), 2, epoch=4, heartbeat_interval=2.0)
            client = RecordingClient(env, ipc_socket=child)
            supervisor = await IpcChannel.from_socket(parent)
            store = SessionStore(r, KEYS, 0)
            async with running(client) as task:
                await wait_until(lambda: client.cluster.ready, timeout=20, message="cluster ready")

                async def records_when(check: Callable[[dict[int, SessionRecord]], bool]) -> dict[int, SessionRecord]:
                    async def probe() -> dict[int, SessionRecord] | None:
                        records = await store.load()
                        return records if check(records) else None
                    return await wait_until(probe, timeout=15, message="session records")  # type: ignore[no-any-return]

                first = await records_when(lambda records: set(records) == {0, 1})
                assert {rec.epoch for rec in first.values()} == {4}
                assert all(rec.resume_gateway_url == sim.gateway_url for rec in first.values())
                sessions = {sid: sim.core.sessions.get(rec.session_id) for sid, rec in first.items()}
                assert all(session is not None and session.shard_id == sid for sid, session in sessions.items())
                raw = await r.hgetall(KEYS.session_records(0))  # type: ignore[misc]
                assert all("test-token" not in value for value in raw.values())  # never the token
                # traffic on shard 1 moves its seq on at a following heartbeat (every 2 s here)
                for _ in range(3):
                    sim.send_ping(sim.guild_ids(shard_id=1)[0])
                await wait_until(lambda: len(client.messages) == 3, message="pings handled")
                moved = await records_when(lambda records: records[1].seq >= first[1].seq + 3)
                assert moved[1].session_id == first[1].session_id
                # a graceful stop right after more traffic writes the last seq of every session
                sim.send_ping(sim.guild_ids(shard_id=0)[0])
                await wait_until(lambda: len(client.messages) == 4, message="last ping handled")
                await supervisor.send("stop", reason="test")
                await wait_until(lambda: task.done(), timeout=10, message="client stopped")
                final = await store.load()
                assert {sid: rec.seq for sid, rec in final.items()} == {
                    sid: session.seq for sid, session in sessions.items() if session is not None}
                assert final[0].seq > first[0].seq
            await supervisor.close()
