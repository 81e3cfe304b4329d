"""Bad values in Redis never reach the supervisor's decisions, and a crashed core loop comes back.

A real supervisor with the stub program against a real redis-server; the test plays the broker's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.supervisor import HOST, KEYS, doorbell, grant, host_config, set_modes, status, write_layout
from support.waiting import scaled, wait_until

from letsfrag.events import recent
from letsfrag.supervisor import ClusterManager, ClusterState
from letsfrag.supervisor.host import HostAgent

TTL, HEARTBEAT = 3.0, 0.2


async def _events(r: aioredis.Redis, kind: str) -> list[dict[str, Any]]:
    return [e.to_dict() for e in await recent(r, KEYS, count=500) if e.kind == kind]


async def _ready(manager: ClusterManager, cid: int) -> bool:
    view = manager.clusters.get(cid)
    return view is not None and view.state is ClusterState.READY


@contextlib.asynccontextmanager
async def _cluster_0_running(r: aioredis.Redis, redis_url: str,
                             tmp_path: Path) -> AsyncIterator[tuple[ClusterManager, HostAgent, int | None]]:
    """A supervisor running cluster 0 (READY): the manager, its host agent and the cluster's pid."""
    set_modes(tmp_path, default="well")
    await write_layout(r, heartbeat=HEARTBEAT, ttl=TTL)
    await grant(r, 0, epoch=1)
    async with ClusterManager(host_config(redis_url, tmp_path)) as manager:
        agent = manager.agent
        assert agent is not None
        await wait_until(lambda: _ready(manager, 0), message="cluster 0 ready")
        yield manager, agent, manager.clusters[0].pid


async def test_a_poisoned_layout_never_takes_effect_and_recovers_after_repair(
        r: aioredis.Redis, redis_url: str, tmp_path: Path) -> None:
    async with _cluster_0_running(r, redis_url, tmp_path) as (manager, agent, pid):
        for bad, problem in [("inf", "must be a finite number, found 'inf'"),
                             ("nan", "must be a finite number, found 'nan'"),
                             ("-1", "must be greater than 0, found -1"),
                             ("abc", "must be a number, found 'abc'")]:
            await r.hset(KEYS.layout, "lease_ttl", bad)  # type: ignore[misc]

            async def reported(problem: str = problem) -> bool:
                return any(problem in e["message"] and e.get("key") == KEYS.layout and e.get("field") == "lease_ttl"
                           for e in await _events(r, "redis_value_invalid"))

            await wait_until(reported, message=f"an error event about lease_ttl = {bad}")
            renewals = agent.renewals
            await wait_until(lambda renewals=renewals: agent.renewals >= renewals + 3,  # type: ignore[misc]
                             message=f"the lease is still renewed with lease_ttl = {bad}")
            pttl = await r.pttl(KEYS.lease(HOST))
            assert 0 < pttl <= TTL * 1000, "the lease keeps the last good ttl"
            assert agent.layout is not None and agent.layout.lease_ttl == TTL and not agent.fenced
            assert manager.clusters[0].pid == pid and manager.clusters[0].state is ClusterState.READY

            await write_layout(r, heartbeat=HEARTBEAT, ttl=TTL)  # the repair (the broker rewrites it)
            await wait_until(lambda: agent.layout_problem is None, message=f"repaired after {bad}")

        # a valid layout with other shard ranges: refused while a cluster runs (ranges would overlap)
        await r.hset(KEYS.layout, mapping={"shards_per_cluster": 2, "cluster_count": 2})  # type: ignore[misc]

        async def refused() -> bool:
            return any(e.get("key") == KEYS.layout and e.get("field") == "shards_per_cluster"
                       for e in await _events(r, "layout_refused"))

        await wait_until(refused, message="a layout_refused event")
        await grant(r, 1, epoch=1)
        await wait_until(lambda: _ready(manager, 1), message="cluster 1 ready")
        assert manager.clusters[1].shard_ids == (1,) and manager.clusters[0].shard_ids == (0,)
        assert json.loads((await status(r, 1))["shard_ids"]) == [1], "cluster 1 runs the shard of the old layout"
        assert manager.clusters[0].pid == pid


async def test_a_crashed_lease_loop_is_logged_with_its_traceback_and_recovers(
        r: aioredis.Redis, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    set_modes(tmp_path, default="well")
    await write_layout(r, heartbeat=HEARTBEAT, ttl=TTL)
    caplog.set_level(logging.ERROR, logger="letsfrag.supervisor.manager")
    async with ClusterManager(host_config(redis_url, tmp_path)) as manager:
        agent = manager.agent
        assert agent is not None
        await wait_until(lambda: agent.renewals >= 2, message="renewing")
        offset = await r.hget(KEYS.host(HOST), "clock_offset")  # type: ignore[misc]
        assert offset is not None and abs(float(offset)) < 1.0, "same machine: the clocks agree"
        real = agent._heartbeat
        calls = {"n": 0}

        async def broken() -> Any:  # fault injection: the next renewal raises a bug, later ones work
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected bug in the lease loop")
            return await real()

        agent._heartbeat = broken  # type: ignore[method-assign]
        await wait_until(lambda: calls["n"] >= 1, message="the injected failure ran")
        renewals = agent.renewals
        await wait_until(lambda: agent.renewals >= renewals + 3, message="renewals after the crash")
        crashes = [rec for rec in caplog.records if "supervisor-lease crashed" in rec.getMessage()]
        assert crashes and crashes[0].exc_info is not None
        assert "injected bug in the lease loop" in caplog.text and "Traceback" in caplog.text
        assert not agent.fenced

        async def event() -> bool:
            return any(e.get("loop") == "supervisor-lease" for e in await _events(r, "loop_crashed"))

        await wait_until(event, message="a loop_crashed event")



async def test_after_a_data_loss_running_clusters_wait_for_the_adoption(
        r: aioredis.Redis, redis_url: str, tmp_path: Path) -> None:
    async with _cluster_0_running(r, redis_url, tmp_path) as (manager, agent, pid):
        await r.flushall()
        # the broker's first tick after the loss: the layout is back, marked adopting, the assignment still empty
        await write_layout(r, heartbeat=HEARTBEAT, ttl=TTL)
        await r.hset(KEYS.layout, "adopting", "1")  # type: ignore[misc]
        await doorbell(r)
        renewals = agent.renewals
        await wait_until(lambda: agent.renewals >= renewals + 3, message="grants read while adopting")
        assert manager.clusters[0].pid == pid and manager.clusters[0].state is ClusterState.READY
        assert json.loads(await r.hget(KEYS.host(HOST), "running")) == {"0": 1}  # type: ignore[misc]
        # the adoption lands: same host, same epoch
        await grant(r, 0, epoch=1)
        await r.hdel(KEYS.layout, "adopting")  # type: ignore[misc]
        renewals = agent.renewals
        await wait_until(lambda: agent.renewals >= renewals + 3, message="renewals after the adoption")
        assert manager.clusters[0].pid == pid and manager.assigned == {0: 1}
        # without the mark an empty assignment is a revoke, as before
        await r.hdel(KEYS.assignment, "0")  # type: ignore[misc]
        await doorbell(r)
        await wait_until(lambda: manager.clusters[0].state is ClusterState.STOPPED, message="revoked")


async def test_a_bad_layout_at_startup_is_reported_and_the_host_registers_once_it_is_repaired(
        r: aioredis.Redis, redis_url: str, tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    await write_layout(r, heartbeat=HEARTBEAT, ttl=TTL)
    await r.hset(KEYS.layout, "heartbeat_interval", "nan")  # type: ignore[misc]
    manager = ClusterManager(host_config(redis_url, tmp_path))
    starting = asyncio.ensure_future(manager.start())
    try:
        async def reported() -> bool:
            return any(e.get("field") == "heartbeat_interval" and "'nan'" in e["message"]
                       for e in await _events(r, "redis_value_invalid"))

        await wait_until(reported, message="an error event naming the field, while waiting for the layout")
        assert not starting.done() and await r.exists(KEYS.lease(HOST)) == 0
        await write_layout(r, heartbeat=HEARTBEAT, ttl=TTL)
        await asyncio.wait_for(starting, timeout=scaled(10))
        assert await r.get(KEYS.lease(HOST)) == manager.incarnation
    finally:
        if not starting.done():
            starting.cancel()
        await manager.close()
