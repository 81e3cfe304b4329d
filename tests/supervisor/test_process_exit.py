"""The supervisor as its own process (`letsfrag supervise`): SIGTERM leaves cleanly, SIGKILL leaves no orphans."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import redis.asyncio as aioredis
from support.supervisor import (
    HOST,
    KEYS,
    TOKEN,
    gone,
    grant,
    set_modes,
    start_supervisor,
    status,
    write_layout,
    write_supervise_config,
)
from support.waiting import scaled, wait_until


async def _ready_pids(r: aioredis.Redis, clusters: list[int]) -> list[int] | None:
    pids = []
    for cid in clusters:
        st = await status(r, cid)
        if st.get("state") != "ready" or not st.get("pid"):
            return None
        pids.append(int(st["pid"]))
    return pids


async def _two_clusters(redis_url: str, r: aioredis.Redis, tmp_path: Path, **modes: str) -> Path:
    """Stub modes set, the layout written and clusters 0 and 1 granted; returns the config path."""
    set_modes(tmp_path, default="well", **modes)
    config = write_supervise_config(redis_url, tmp_path)
    await write_layout(r)
    await grant(r, 0, epoch=1)
    await grant(r, 1, epoch=1)
    return config


async def test_sigterm_then_sigkill(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    config = await _two_clusters(redis_url, r, tmp_path)

    # 1. SIGTERM: every cluster stopped, lease removed, exit 0
    proc = start_supervisor(config)
    try:
        pids = await wait_until(lambda: _ready_pids(r, [0, 1]), timeout=15, message="clusters ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=scaled(10)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert all(gone(pid) for pid in pids)
    assert await r.get(KEYS.lease(HOST)) is None
    assert TOKEN not in output and "registered" in output
    assert json.loads(await r.hget(KEYS.host(HOST), "running")) == {}

    # 2. SIGKILL: no chance to clean up, yet the clusters exit by themselves (IPC EOF + parent-death signal)
    await r.delete(KEYS.cluster_status(0), KEYS.cluster_status(1))
    proc = start_supervisor(config)
    try:
        pids = await wait_until(lambda: _ready_pids(r, [0, 1]), timeout=15, message="clusters ready again")
        proc.kill()
        proc.wait(timeout=scaled(5))
        await wait_until(lambda: all(gone(pid) for pid in pids), timeout=5, message="no orphan cluster process")
    finally:
        if proc.poll() is None:
            proc.kill()


async def _heartbeat_age(r: aioredis.Redis, cluster_id: int) -> float:
    last = (await status(r, cluster_id)).get("last_heartbeat")
    return time.time() - float(last) if last else float("inf")


async def test_sigkill_with_a_hung_cluster_leaves_no_process(redis_url: str, r: aioredis.Redis,
                                                            tmp_path: Path) -> None:
    """A blocked event loop sees neither the parent-death SIGTERM nor the IPC EOF: the orphan watchdog ends it."""
    config = await _two_clusters(redis_url, r, tmp_path, **{"0": "hang"})
    proc = start_supervisor(config)
    try:
        pids = await wait_until(lambda: _ready_pids(r, [0, 1]), timeout=15, message="clusters ready")

        async def hung() -> bool:
            return await _heartbeat_age(r, 0) > 1.5 and await _heartbeat_age(r, 1) < 1.0

        await wait_until(hung, timeout=15, message="cluster 0's event loop blocked, cluster 1 beating")
        proc.kill()
        proc.wait(timeout=scaled(5))
        killed_at = time.monotonic()
        await wait_until(lambda: gone(pids[1]), timeout=5, message="the healthy cluster exits at once")
        await wait_until(lambda: gone(pids[0]), timeout=15, message="the hung cluster is gone within 15 s")
        assert time.monotonic() - killed_at < scaled(15)
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_second_sigint_forces(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="ignore_term")  # would take 15 s to stop gracefully
    config = write_supervise_config(redis_url, tmp_path, stop_timeout="10s")
    await write_layout(r)
    await grant(r, 0, epoch=1)
    proc = start_supervisor(config)
    try:
        pids = await wait_until(lambda: _ready_pids(r, [0]), timeout=15, message="cluster ready")
        proc.send_signal(signal.SIGINT)
        await wait_until(lambda: _state_is(r, 0, "stopping"), message="stopping after the first SIGINT")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=scaled(5)) == 0
        assert time.monotonic() - started < scaled(4)
        assert gone(pids[0])
    finally:
        if proc.poll() is None:
            proc.kill()


async def _state_is(r: aioredis.Redis, cluster_id: int, state: str) -> bool:
    return (await status(r, cluster_id)).get("state") == state
