"""A real cluster process (examples/bot.py) frozen with SIGSTOP past its lease: exactly-once handling.

The simulator's gateway heartbeat (30 s) is far longer than the lease TTL (1.5 s), as with real Discord, so the
frozen process's socket stays open and buffers the messages sent meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from support.cluster import grant, lease_kept, make_env, write_layout
from support.waiting import scaled, wait_until

from letsfrag.contract.exitcodes import ExitCode
from letsfrag.sim import Simulator

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL = 1.5
#: how long the process stays frozen: longer than its lease TTL (this is the phenomenon tested, not a wait)
FREEZE = 2.5


@asynccontextmanager
async def bot_process(redis_url: str, sim: Simulator) -> AsyncIterator[asyncio.subprocess.Process]:
    env = make_env(redis_url, sim, 0, (0,), 1, heartbeat_interval=0.5, lease_ttl=LEASE_TTL).to_env()
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("LETSFRAG_")}, **env,
                "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "examples.bot", cwd=ROOT, env=full_env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await asyncio.wait_for(proc.wait(), scaled(10))


async def _answered_once(sim: Simulator, n: int) -> bool:
    return sim.stats()["handling"]["answered_once"] >= n


@pytest.mark.integration
async def test_frozen_past_the_lease_and_moved_away_answers_nothing(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(shards=1, guilds=2, identify_window=0.1, heartbeat_interval=30.0, ack_delay=0.005) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=LEASE_TTL, every=0.3), bot_process(redis_url, sim) as proc:
            await wait_until(lambda: sim.stats()["shards_ready"] == [0], timeout=30, message="shard 0 ready")
            sim.send_ping()
            await wait_until(lambda: _answered_once(sim, 1), timeout=10, message="the bot answers")
            proc.send_signal(signal.SIGSTOP)
            await grant(r, 0, host="h2", epoch=2)  # the broker moved the cluster while it was frozen
            for _ in range(3):
                sim.send_ping()
            await asyncio.sleep(FREEZE)
            proc.send_signal(signal.SIGCONT)
            code = await wait_until(lambda: proc.returncode is not None and (proc.returncode,), timeout=10,
                                    message="the process exits")
            assert code == (ExitCode.FENCED,)
            handling = sim.stats()["handling"]
            assert handling["replies"] == 1 and handling["answered_once"] == 1


@pytest.mark.integration
async def test_frozen_past_the_lease_still_owner_answers_each_once(redis_url: str, r: aioredis.Redis) -> None:
    async with Simulator(shards=1, guilds=2, identify_window=0.1, heartbeat_interval=30.0, ack_delay=0.005) as sim:
        await write_layout(r, 1, 1)
        await grant(r, 0)
        async with lease_kept(r, ttl=LEASE_TTL, every=0.3), bot_process(redis_url, sim) as proc:
            await wait_until(lambda: sim.stats()["shards_ready"] == [0], timeout=30, message="shard 0 ready")
            sim.send_ping()
            await wait_until(lambda: _answered_once(sim, 1), timeout=10, message="the bot answers")
            proc.send_signal(signal.SIGSTOP)
            for _ in range(3):
                sim.send_ping()
            await asyncio.sleep(FREEZE)
            proc.send_signal(signal.SIGCONT)
            await wait_until(lambda: _answered_once(sim, 4), timeout=10, message="held pings answered")
            assert sim.stats()["handling"]["answered_twice_or_more"] == 0
            proc.send_signal(signal.SIGTERM)
            code = await wait_until(lambda: proc.returncode is not None and (proc.returncode,), timeout=10,
                                    message="graceful exit")
            assert code == (0,)
            await wait_until(lambda: sim.stats()["connections"] == 0, timeout=3, message="session closed")
