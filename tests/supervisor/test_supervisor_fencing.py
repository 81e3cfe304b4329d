"""Self-fencing: a Redis outage longer than the lease allows stops every cluster in time; shorter ones do not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.supervisor import HOST, KEYS, gone, grant, host_config, set_modes, write_layout
from support.waiting import wait_until

from letsfrag.connection import create_redis
from letsfrag.events import recent
from letsfrag.redis_server import RedisServer
from letsfrag.supervisor import ClusterManager, ClusterState

TTL, HEARTBEAT = 3.0, 0.4  # fence after ttl - max(hb, 1 s) = 2.0 s without a renewal


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server that keeps its data across a restart (append-only file)."""
    server = RedisServer(data_dir=tmp_path / "durable", persist=True)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def _all_ready(manager: ClusterManager, count: int) -> bool:
    views = manager.clusters.values()
    return len(views) == count and all(v.state is ClusterState.READY for v in views)


@pytest.mark.integration
async def test_short_outage_changes_nothing_long_outage_fences(durable: RedisServer, tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    r = create_redis(durable.url)  # retries once on a connection the restart closed
    config = host_config(durable.url, tmp_path)
    await write_layout(r, heartbeat=HEARTBEAT, ttl=TTL)
    await grant(r, 0, epoch=1)
    await grant(r, 1, epoch=1)
    try:
        async with ClusterManager(config) as manager:
            await wait_until(lambda: _all_ready(manager, 2), message="clusters ready")
            pids = {cid: v.pid for cid, v in manager.clusters.items()}
            incarnation = manager.incarnation

            # a short outage (well under the 2 s fencing horizon): nothing changes
            durable.stop()
            await asyncio.sleep(0.8)  # the outage itself, not a synchronisation
            durable.start()
            agent = manager.agent
            assert agent is not None
            renewals = agent.renewals
            await wait_until(lambda: agent.renewals >= renewals + 2, message="renewals after the outage")
            assert {cid: v.pid for cid, v in manager.clusters.items()} == pids
            assert manager.incarnation == incarnation and not agent.fenced

            # a long outage: every cluster is stopped before the lease (renewed at most 1 heartbeat ago) expires
            await wait_until(lambda: agent.renewals >= renewals + 3, message="a fresh renewal")
            down_at = time.monotonic()
            durable.stop()
            await wait_until(lambda: all(gone(pid) for pid in pids.values() if pid), timeout=TTL + 1,
                             interval=0.02, message="clusters stopped by fencing")
            stopped_after = time.monotonic() - down_at
            assert TTL - 1.0 - HEARTBEAT - 0.2 <= stopped_after < TTL, stopped_after
            assert agent.fenced
            await wait_until(lambda: all(v.state is ClusterState.STOPPED for v in manager.clusters.values()),
                             timeout=1, message="states stopped")

            # Redis returns: a new incarnation registers and takes its grants again
            durable.start()
            await wait_until(lambda: not agent.fenced and manager.incarnation != incarnation, timeout=10,
                             message="re-registered")
            await wait_until(lambda: _all_ready(manager, 2), timeout=10, message="clusters running again")
            assert all(v.pid not in pids.values() for v in manager.clusters.values())
            assert await r.get(KEYS.lease(HOST)) == manager.incarnation
            assert (await r.hget(KEYS.host(HOST), "incarnation")) == manager.incarnation
            # the event was queued during the outage; the publisher flushes it on its next round after the
            # reconnect, which may come after the (forked, fast) clusters are READY again
            async def fenced_event() -> bool:
                return "host_fenced" in [e.kind for e in await recent(r, KEYS)]

            await wait_until(fenced_event, timeout=10, message="the host_fenced event")
    finally:
        await r.aclose()
