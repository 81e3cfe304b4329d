"""Resolving ``shards``/``max_concurrency: auto`` against a tiny aiohttp stub of ``/gateway/bot``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from support.broker import TOKEN, Deployment, Stub, make_config
from support.waiting import scaled, wait_until

from letsfrag.broker.layout import fetch_gateway_bot, resolve_layout
from letsfrag.cli.broker_command import run
from letsfrag.errors import ConfigError, DiscordSetupError
from letsfrag.redis_server import free_port


def _config(url: str, api_url: str, **over: Any) -> Any:
    return make_config(url, shards="auto", max_concurrency="auto", token=TOKEN, discord={"api_url": api_url},
                       **over)


@pytest.mark.integration
async def test_auto_rounds_shards_to_max_concurrency(stub: Stub) -> None:
    layout, info = await resolve_layout(_config("redis://127.0.0.1:1/0", stub.url))
    assert (layout.shard_count, layout.max_concurrency) == (16, 4)  # 13 rounded up to a multiple of 4
    assert layout.cluster_count == 2 and layout.shards_of(1) == tuple(range(8, 16))
    assert info is not None and info.remaining == 990 and info.reset_after == 60.0
    assert stub.calls == [f"Bot {TOKEN}"]


@pytest.mark.integration
async def test_numbers_are_used_as_they_are(stub: Stub) -> None:
    layout, info = await resolve_layout(make_config("redis://127.0.0.1:1/0", shards=10, max_concurrency=2))
    assert (layout.shard_count, layout.max_concurrency, info) == (10, 2, None)
    assert stub.calls == []


@pytest.mark.integration
async def test_bad_token_and_network_errors_are_one_clear_sentence(stub: Stub) -> None:
    with pytest.raises(DiscordSetupError, match="rejected the bot token") as err:
        await fetch_gateway_bot(stub.url, "wrong-token")
    assert "wrong-token" not in str(err.value)
    dead = f"http://127.0.0.1:{free_port()}/api/v10"
    with pytest.raises(DiscordSetupError, match="cannot reach Discord"):
        await fetch_gateway_bot(dead, TOKEN, timeout=2)


async def test_broker_writes_layout_and_identify_budget(stub: Stub, deployment: Deployment) -> None:
    dep = deployment
    await dep.broker(_config(dep.url, stub.url, hosts={"expected": 0}))
    budget = await wait_until(lambda: dep.redis.hgetall(dep.keys.identify("budget")), message="budget")
    assert budget["total"] == "1000" and budget["remaining"] == "990" and budget["max_concurrency"] == "4"
    assert float(budget["reset_at"]) - float(budget["updated_at"]) == pytest.approx(60.0, abs=0.01)
    layout = await dep.redis.hgetall(dep.keys.layout)
    assert layout["shard_count"] == "16" and layout["max_concurrency"] == "4" and layout["cluster_count"] == "2"


async def test_budget_refresh_errors_are_events_not_crashes(stub: Stub, deployment: Deployment) -> None:
    dep = deployment
    config = make_config(dep.url, shards=8, token=TOKEN, discord={"api_url": stub.url}, hosts={"expected": 0})
    broker = await dep.broker(config, budget_interval=0.1)
    await wait_until(lambda: dep.redis.exists(dep.keys.identify("budget")))
    broker.config.discord.api_url = f"http://127.0.0.1:{free_port()}/api/v10"
    await wait_until(lambda: dep.events("identify_budget"), message="a budget warning event")
    assert broker._loop_task is not None and not broker._loop_task.done()


def test_main_bad_config_raises_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "broker.yaml"
    bad.write_text("shards: 0\nlease: {ttl: 1}\n")
    with pytest.raises(ConfigError) as err:
        run(argparse.Namespace(config=str(bad), broker_id=None))
    assert "shards" in str(err.value)


async def test_cli_runs_until_sigterm_and_exits_0(tmp_path: Path, deployment: Deployment) -> None:
    dep = deployment
    config = tmp_path / "broker.yaml"
    config.write_text(f"redis: {dep.url}\nshards: 16\nhosts: {{expected: 0}}\nlease: {{ttl: 2}}\n"
                      "heartbeat_interval: 0.2\nleader_ttl: 2\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "letsfrag", "broker", str(config), "--broker-id", "cli-b",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_until(lambda: _leader_is(dep, "cli-b"), timeout=15, message="the CLI broker leads")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(10)) == 0
        assert await dep.redis.get(dep.keys.leader) is None, "the lock is released on a clean exit"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _leader_is(dep: Deployment, broker_id: str) -> bool:
    return await dep.redis.get(dep.keys.leader) == broker_id
