"""How a cluster process ends: outside a supervisor, fatal gateway closes, supervisor gone, and the Bot variant."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import discord
import pytest
import redis.asyncio as aioredis
from discord.ext import commands
from support.cluster import KEYS, grant, intents, lease_kept, make_env, running, write_layout
from support.waiting import scaled, wait_until

from letsfrag import ClusterShardBot, ClusterShardClient
from letsfrag.contract.exitcodes import ExitCode
from letsfrag.environment import HOW_TO_RUN
from letsfrag.ipc import IpcChannel
from letsfrag.sim import Simulator

ROOT = Path(__file__).resolve().parents[2]
SIM: dict[str, Any] = {"shards": 1, "guilds": 2, "identify_window": 0.1, "heartbeat_interval": 30.0, "ack_delay": 0.005}


@pytest.mark.integration
def test_outside_a_supervisor_one_sentence_and_exit_78() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETSFRAG_")}
    code = ("import discord\nfrom letsfrag import ClusterShardClient\n"
            "client = ClusterShardClient(intents=discord.Intents.default())\nclient.run()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == ExitCode.CONFIG
    assert proc.stderr.strip() == f"error: {HOW_TO_RUN}"


async def test_bad_token_is_fatal_exit_77(redis_url: str, r: aioredis.Redis) -> None:
    parent, child = socket.socketpair()
    async with Simulator(token="the-right-token", **SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r):
            client = ClusterShardClient(intents=intents(), environment=make_env(redis_url, sim, 0, (0,), 1),
                                        ipc_socket=child)
            supervisor = await IpcChannel.from_socket(parent)
            await client.start()
            assert client.cluster.exit_code == ExitCode.FATAL_GATEWAY
            while (message := await supervisor.receive()) is not None and message["op"] != "fatal":
                pass
            assert message is not None and message["code"] == 4004
            await supervisor.close()


async def test_sharding_required_names_the_shard_and_is_fatal(redis_url: str, r: aioredis.Redis) -> None:
    """Discord closes an oversized shard with 4011: the cluster tells its supervisor which shard, and exits 77."""
    parent, child = socket.socketpair()
    async with Simulator(**{**SIM, "shards": 2, "guilds": 6, "max_guilds_per_shard": 2}) as sim:
        await write_layout(r, 2, 2)
        await grant(r, 0)
        async with lease_kept(r):
            client = ClusterShardClient(intents=intents(), environment=make_env(redis_url, sim, 0, (0, 1), 2),
                                        ipc_socket=child)
            supervisor = await IpcChannel.from_socket(parent)
            await asyncio.wait_for(client.start(), timeout=scaled(20))
            assert client.cluster.exit_code == ExitCode.FATAL_GATEWAY
            while (message := await supervisor.receive()) is not None and message["op"] != "fatal":
                pass
            assert message is not None and message["code"] == 4011 and message["shard"] in (0, 1)
            await supervisor.close()


async def test_supervisor_gone_closes_the_sessions(redis_url: str, r: aioredis.Redis) -> None:
    parent, child = socket.socketpair()
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r):
            client = ClusterShardClient(intents=intents(), environment=make_env(redis_url, sim, 0, (0,), 1),
                                        ipc_socket=child, guild_ready_timeout=0.1)
            async with running(client) as task:
                await wait_until(lambda: client.cluster.ready, timeout=10, message="ready")
                parent.close()
                started = time.monotonic()
                await wait_until(lambda: task.done(), timeout=5, message="exit after IPC EOF")
                assert time.monotonic() - started < scaled(3)
                await wait_until(lambda: sim.stats()["connections"] == 0, timeout=3, message="sessions closed")


async def test_bot_variant_runs_commands_and_reports_errors(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(**SIM) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r):
            bot = ClusterShardBot(command_prefix="!", intents=intents(),
                                  environment=make_env(redis_url, sim, 0, (0,), 1), guild_ready_timeout=0.1)

            @bot.command()
            async def ping(ctx: commands.Context[Any], n: int) -> None:
                await ctx.message.reply(f"pong {n}")

            @bot.event
            async def on_guild_available(guild: discord.Guild) -> None:
                raise RuntimeError("handler bug for the error report")

            async with running(bot):
                await wait_until(lambda: bot.cluster.ready, timeout=10, message="ready")
                assert bot.cluster.id == 0 and bot.cluster.shard_ids == (0,) and bot.cluster.epoch == 1
                sim.send_ping()
                await wait_until(lambda: sim.stats()["handling"]["answered_once"] == 1, message="command answered")
                errors = await wait_until(lambda: r.lrange(KEYS.cluster_errors(0), 0, -1), message="error recorded")
                assert "handler bug for the error report" in errors[0]
