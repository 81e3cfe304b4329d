"""Fencing and the dispatch guard, live: a process that lost its shards neither identifies, resumes nor handles."""

from __future__ import annotations

import socket
from typing import Any

import redis.asyncio as aioredis
from support.cluster import RecordingClient, grant, lease_kept, make_env, running, write_layout
from support.waiting import wait_until

from letsfrag.contract.exitcodes import ExitCode
from letsfrag.ipc import IpcChannel
from letsfrag.sim import Simulator

SIM: dict[str, Any] = {"shards": 1, "guilds": 2, "identify_window": 0.1, "heartbeat_interval": 30.0, "ack_delay": 0.005}


async def _next_op(channel: IpcChannel, op: str) -> dict:
    while True:
        message = await channel.receive()
        assert message is not None, f"IPC closed before {op!r}"
        if message["op"] == op:
            return message


async def test_not_owner_at_start_never_identifies(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0, epoch=2)  # the broker already moved on
        async with lease_kept(r):
            client = RecordingClient(make_env(redis_url, sim, 0, (0,), 1, epoch=1))
            await client.start()
            assert client.cluster.exit_code == ExitCode.FENCED
            assert sim.stats()["identifies"]["total"] == 0


async def test_epoch_bumped_then_connection_dropped_no_resume(redis_url: str, r: aioredis.Redis) -> None:
    """The gateway connection drops after the broker re-granted the cluster: the RESUME is never sent."""
    parent, child = socket.socketpair()
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=30.0):
            env = make_env(redis_url, sim, 0, (0,), 1, heartbeat_interval=30.0, lease_ttl=30.0)
            client = RecordingClient(env, ipc_socket=child)
            supervisor = await IpcChannel.from_socket(parent)
            async with running(client) as task:
                await wait_until(lambda: client.cluster.ready, timeout=10, message="ready")
                identifies = sim.stats()["identifies"]["total"]
                await grant(r, 0, host="h2", epoch=2)
                assert sim.drop_shard(0) == 1
                fenced = await _next_op(supervisor, "fenced")
                assert "h2" in fenced["reason"]
                await wait_until(lambda: task.done(), timeout=10, message="client exited")
                assert client.cluster.exit_code == ExitCode.FENCED
                stats = sim.stats()
                assert stats["resumes"] == 0 and stats["identifies"]["total"] == identifies
            await supervisor.close()


async def test_epoch_bumped_then_invalid_session_no_identify(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=30.0):
            env = make_env(redis_url, sim, 0, (0,), 1, heartbeat_interval=30.0, lease_ttl=30.0)
            client = RecordingClient(env)
            async with running(client) as task:
                await wait_until(lambda: client.cluster.ready, timeout=10, message="ready")
                await grant(r, 0, host="h1", epoch=7)
                assert sim.invalidate_shard(0) == 1
                await wait_until(lambda: task.done(), timeout=10, message="client exited")
                assert client.cluster.exit_code == ExitCode.FENCED
                assert sim.stats()["identifies"]["total"] == 1


async def test_lease_lost_messages_are_held_and_never_handled(redis_url: str, r: aioredis.Redis) -> None:
    """Past the horizon a MESSAGE_CREATE is held; the check finds the lease gone -> dropped, exit 75."""
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=1.5, every=0.2) as stop_renewing:
            env = make_env(redis_url, sim, 0, (0,), 1, heartbeat_interval=30.0, lease_ttl=1.5)
            client = RecordingClient(env)
            async with running(client) as task:
                await wait_until(lambda: client.cluster.ready, timeout=10, message="ready")
                stop_renewing.set()
                await r.delete("lftest:lease:h1")
                guard = client._lf_guard
                await wait_until(lambda: not guard.allows(), timeout=5, message="horizon passed")
                sim.send_ping(sim.guild_ids()[0])
                await wait_until(lambda: task.done(), timeout=10, message="client fenced")
                assert client.cluster.exit_code == ExitCode.FENCED
                assert client.messages == []
                assert guard.dropped_total >= 1
                assert sim.stats()["handling"]["replies"] == 0


async def test_held_messages_are_released_in_order_while_still_owner(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=1.0, every=0.2):
            env = make_env(redis_url, sim, 0, (0,), 1, heartbeat_interval=30.0, lease_ttl=1.0)
            client = RecordingClient(env)
            async with running(client):
                await wait_until(lambda: client.cluster.ready, timeout=10, message="ready")
                guard = client._lf_guard
                await wait_until(lambda: not guard.allows(), timeout=5, message="horizon passed")
                held_before = guard.held_total
                guild = sim.guild_ids()[0]
                numbers = [sim.send_ping(guild) for _ in range(5)]
                await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 5, message="5 pongs")
                assert guard.held_total > held_before
                assert client.messages == [f"!ping {n}" for n in numbers]
                assert sim.stats()["handling"]["answered_twice_or_more"] == 0
                assert client.cluster.exit_code is None
