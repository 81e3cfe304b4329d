"""Session records: the format both ways, and a running cluster keeping them current in Redis."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from support.cluster import KEYS, RecordingClient, grant, lease_kept, make_env, running, write_layout
from support.waiting import wait_until

from letsfrag.cluster.session_records import SESSION_RECORD_TTL, SessionRecord, SessionStore, resumable
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


async def test_an_older_epoch_never_replaces_a_newer_record(r: aioredis.Redis) -> None:
    """A woken or stopping old process (epoch 4) cannot overwrite what its successor (epoch 5) wrote."""
    successor = SessionStore(r, KEYS, 6)
    assert await successor.save([SessionRecord(0, "new", "ws://g/", 3, 5)]) == 1
    old = SessionStore(r, KEYS, 6)
    assert await old.save([SessionRecord(0, "old", "ws://g/", 99, 4), SessionRecord(1, "old1", "ws://g/", 7, 4)]) == 1
    records = await old.load()
    assert records[0] == SessionRecord(0, "new", "ws://g/", 3, 5)
    assert records[1].epoch == 4  # a field nobody newer wrote is still the old process's to keep


async def test_records_are_written_only_while_the_assignment_names_the_writer(r: aioredis.Redis) -> None:
    await grant(r, 7, epoch=5)
    moved_away = SessionStore(r, KEYS, 7, owner=("h1", 4))
    assert await moved_away.save([SessionRecord(0, "s", "ws://g/", 3, 4)]) == -1
    assert await moved_away.load() == {}
    owner = SessionStore(r, KEYS, 7, owner=("h1", 5))
    assert await owner.save([SessionRecord(0, "s", "ws://g/", 3, 5)]) == 1
    other_host = SessionStore(r, KEYS, 7, owner=("h2", 5))
    assert await other_host.save([SessionRecord(0, "t", "ws://g/", 4, 5)]) == -1


async def test_a_session_ended_by_a_graceful_stop_is_never_offered_for_replay(r: aioredis.Redis) -> None:
    store = SessionStore(r, KEYS, 8)
    live = [SessionRecord(0, "a", "ws://g/", 5, 2), SessionRecord(1, "b", "ws://g/", 6, 2)]
    await store.save(live)
    assert [rec.session_id for rec in resumable(await store.load(), (0, 1), 3)] == ["a", "b"]
    assert await store.end(live[:1]) == 1
    records = await store.load()
    assert records[0].closed and not records[1].closed
    assert json.loads(await r.hget(KEYS.session_records(8), "0"))["closed"] is True  # type: ignore[misc]
    assert await store.save([SessionRecord(0, "a", "ws://g/", 9, 2)]) == 0  # a late write does not reopen it
    assert [rec.session_id for rec in resumable(await store.load(), (0, 1), 3)] == ["b"]
    # the successor already overwrote shard 1's record when the old process ends session b: b is marked anyway
    await store.save([SessionRecord(1, "c", "ws://g/", 1, 3)])
    await store.end(live[1:])
    assert (await store.load())[1] == SessionRecord(1, "c", "ws://g/", 1, 3)
    assert await store.ended(["b", "c"]) == {"b"}
    # a record of a newer epoch than the reader's is not the reader's to replay
    assert resumable({1: SessionRecord(1, "c", "ws://g/", 1, 3)}, (1,), 2) == []
