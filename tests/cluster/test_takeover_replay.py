"""Replay on takeover, in one process against the simulator: the next process of a cluster RESUMEs what its
predecessor left, unless the predecessor ended its sessions on purpose.

The first test reproduces the cause of the old host-SIGKILL flake (op 9 on the replay): a cluster whose
supervisor died first took that for a graceful stop and closed its sessions with 1000 (ending them at Discord)
while its records still offered them for RESUME. Now it leaves them resumable (4000) and the successor replays.
"""

from __future__ import annotations

import socket

import redis.asyncio as aioredis
from support.cluster import KEYS, RecordingClient, grant, lease_kept, make_env, running, write_layout
from support.waiting import wait_until

from letsfrag.cluster.session_records import SessionRecord, SessionStore
from letsfrag.events import recent
from letsfrag.ipc import IpcChannel
from letsfrag.sim import Simulator


async def _first_run(redis_url: str, sim: Simulator, r: aioredis.Redis, *, graceful: bool) -> dict[int, SessionRecord]:
    """Cluster 0 (epoch 1) answers a ping on each shard, then its supervisor stops it (``graceful``) or dies."""
    parent, child = socket.socketpair()
    first = RecordingClient(make_env(redis_url, sim, 0, (0, 1), 2, epoch=1), ipc_socket=child)
    supervisor = await IpcChannel.from_socket(parent)
    store = SessionStore(r, KEYS, 0)
    async with running(first) as task:
        await wait_until(lambda: first.cluster.ready, timeout=20, message="first process ready")
        for shard in (0, 1):
            sim.send_ping(sim.guild_ids(shard_id=shard)[0])
        await wait_until(lambda: len(first.messages) == 2, message="first pings handled")

        async def recorded() -> dict[int, SessionRecord] | None:
            records = await store.load()
            return records if set(records) == {0, 1} else None
        records: dict[int, SessionRecord] = await wait_until(recorded, timeout=10, message="records")
        if graceful:
            await supervisor.send("stop", reason="test")
        await supervisor.close()  # graceful: already stopping; else the supervisor is gone
        await wait_until(lambda: task.done(), timeout=10, message="first process exits")
    return records


async def test_a_cluster_whose_supervisor_dies_leaves_its_sessions_for_the_replay(redis_url: str,
                                                                                  r: aioredis.Redis) -> None:
    async with Simulator(shards=2, guilds=4, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 2, 2)
        await grant(r, 0, epoch=1)
        async with lease_kept(r):
            records = await _first_run(redis_url, sim, r, graceful=False)
            assert all(sim.core.sessions.get(rec.session_id) is not None for rec in records.values()), \
                "the sessions stay resumable at Discord"
            assert not any(rec.closed for rec in (await SessionStore(r, KEYS, 0).load()).values())
            missed = [sim.send_ping(sim.guild_ids(shard_id=shard)[0]) for shard in (0, 1, 0, 1)]
            assert sim.stats()["handling"]["undeliverable"] == len(missed)
            identifies = sim.stats()["identifies"]["total"]

            await grant(r, 0, epoch=2)  # the next owner (a new host; or the same one after a crash)
            second = RecordingClient(make_env(redis_url, sim, 0, (0, 1), 2, epoch=2))
            async with running(second):
                await wait_until(lambda: len(second.messages) == len(missed), timeout=20,
                                 message="the missed pings replayed and handled")
                async def replayed() -> bool:
                    return len([e for e in await recent(r, KEYS) if e.kind == "session_replayed"]) == 2
                await wait_until(replayed, timeout=10, message="two session_replayed events")
                # the bot recorded its answers when it sent them; they reach the simulator a moment later
                await wait_until(lambda: sim.stats()["handling"]["pending"] == 0, timeout=10,
                                 message="every answer at the simulator")
                kinds = [e.kind for e in await recent(r, KEYS)]
                stats = sim.stats()
            assert sorted(second.messages) == sorted(f"!ping {n}" for n in missed)
    assert "replay_refused" not in kinds and "replay_failed" not in kinds, kinds
    assert stats["replay_drains"] == 2 and stats["resume_failures"] == 0
    assert stats["identifies"]["total"] - identifies == 2  # the fresh sessions only: the replays RESUMEd
    handling = stats["handling"]
    assert handling["answered_once"] == handling["sent"] == 2 + len(missed), handling
    assert handling["answered_twice_or_more"] == 0


async def test_a_graceful_stop_ends_its_sessions_and_nobody_tries_to_resume_them(redis_url: str,
                                                                                 r: aioredis.Redis) -> None:
    async with Simulator(shards=2, guilds=4, identify_window=0.1, heartbeat_interval=5.0, ack_delay=0.005) as sim:
        await write_layout(r, 2, 2)
        await grant(r, 0, epoch=1)
        async with lease_kept(r):
            await _first_run(redis_url, sim, r, graceful=True)
            assert all(rec.closed for rec in (await SessionStore(r, KEYS, 0).load()).values())
            await grant(r, 0, epoch=2)
            second = RecordingClient(make_env(redis_url, sim, 0, (0, 1), 2, epoch=2))
            async with running(second):
                await wait_until(lambda: second.cluster.ready, timeout=20, message="second process ready")
                sim.send_ping(sim.guild_ids(shard_id=0)[0])
                await wait_until(lambda: len(second.messages) == 1, message="new traffic handled")
                kinds = [e.kind for e in await recent(r, KEYS)]
                stats = sim.stats()
    assert stats["replay_drains"] == 0 and stats["resume_failures"] == 0, stats
    assert "replay_refused" not in kinds
