"""Register, take grants, run well-behaved clusters, revoke, change epoch, leave (real redis, real processes)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis.asyncio as aioredis
from support.supervisor import (
    HOST,
    KEYS,
    TOKEN,
    gone,
    grant,
    host_config,
    revoke,
    set_modes,
    starts,
    status,
    write_layout,
)
from support.waiting import scaled, wait_until

from letsfrag.bus import Bus
from letsfrag.contract.envelope import Envelope
from letsfrag.supervisor import ClusterManager, ClusterState


async def test_register_run_revoke_and_leave(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="well")
    config = host_config(redis_url, tmp_path)
    manager = ClusterManager(config)
    seen: dict[str, list[int]] = {"cluster_create": [], "cluster_ready": [], "cluster_exit": []}
    all_ready: list[bool] = []
    for name in seen:
        manager.on(name, lambda view, name=name: seen[name].append(view.cluster_id))
    manager.on("ready", lambda: all_ready.append(True))
    inbox: list[Envelope] = []
    async with Bus(redis_url, node_id="broker:test", namespace="t") as spy:
        async def collect(envelope: Envelope) -> None:
            inbox.append(envelope)
        await spy.subscribe(KEYS.broker_inbox, collect)
        await write_layout(r)
        await grant(r, 0, epoch=1)
        await grant(r, 1, epoch=2)
        await manager.start()
        try:
            await wait_until(lambda: all(v.state is ClusterState.READY for v in manager.clusters.values())
                             and len(manager.clusters) == 2, timeout=10, message="both clusters READY")
            assert all_ready == [True]
            assert sorted(seen["cluster_ready"]) == [0, 1]
            # the host record and lease, as docs/redis.md says
            record = await r.hgetall(KEYS.host(HOST))
            assert record["state"] == "up" and record["incarnation"] == manager.incarnation
            assert await r.get(KEYS.lease(HOST)) == manager.incarnation
            assert 0 < await r.pttl(KEYS.lease(HOST)) <= 2000
            assert await r.sismember(KEYS.hosts, HOST)
            await wait_until(lambda: _running(r, {"0": 1, "1": 2}), message="running lists both clusters")
            st = await wait_until(lambda: _status_state(r, 1, "ready"), message="status key ready")
            assert st["epoch"] == "2" and st["host"] == HOST and json.loads(st["shard_ids"]) == [1]
            assert st["pid"] == str(manager.clusters[1].pid)
            assert any(e.type == "host_hello" for e in inbox)
            # the environment contract reached the child; the token is not on its command line
            first = starts(tmp_path, 1)[0]
            assert first["epoch"] == "2" and first["incarnation"] == manager.incarnation
            assert first["token_in_env"] and not any(TOKEN in arg for arg in first["argv"])

            # revoke cluster 0: stopped, running updated, cluster_stopped published
            pid0 = manager.clusters[0].pid
            assert pid0 is not None
            await revoke(r, 0)
            await wait_until(lambda: manager.clusters[0].state is ClusterState.STOPPED, message="cluster 0 stopped")
            assert gone(pid0)
            await wait_until(lambda: _running(r, {"1": 2}), message="running without cluster 0")
            await wait_until(lambda: any(e.type == "cluster_stopped" and e.payload.get("cluster") == 0
                                         for e in inbox), message="cluster_stopped")
            assert (await status(r, 0))["state"] == "stopped"

            # a newer epoch for cluster 1: the old process is stopped and a new one runs under epoch 5
            old_pid = manager.clusters[1].pid
            await grant(r, 1, epoch=5)
            await wait_until(lambda: manager.clusters[1].epoch == 5
                             and manager.clusters[1].state is ClusterState.READY, message="epoch 5 ready")
            assert manager.clusters[1].pid != old_pid and old_pid is not None and gone(old_pid)
            assert starts(tmp_path, 1)[-1]["epoch"] == "5"
        finally:
            pids = [v.pid for v in manager.clusters.values() if v.pid]
            started = time.monotonic()
            await manager.close()
            assert time.monotonic() - started < scaled(5)
        assert pids and all(gone(pid) for pid in pids)
        assert await r.get(KEYS.lease(HOST)) is None
        record = await r.hgetall(KEYS.host(HOST))
        assert record["state"] == "leaving" and json.loads(record["running"]) == {}
        await wait_until(lambda: any(e.type == "host_leave" for e in inbox), message="host_leave")


async def _running(r: aioredis.Redis, expected: dict[str, int]) -> bool:
    raw = await r.hget(KEYS.host(HOST), "running")
    return raw is not None and json.loads(raw) == expected


async def _status_state(r: aioredis.Redis, cluster_id: int, state: str) -> dict[str, str] | None:
    st = await status(r, cluster_id)
    return st if st.get("state") == state else None
