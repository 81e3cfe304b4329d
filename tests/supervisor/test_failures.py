"""Crashes, backoff, FAILED, fatal exits, errors and restarts lists (real processes, short timers)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import redis.asyncio as aioredis
from support.supervisor import KEYS, gone, grant, host_config, set_modes, starts, status, write_layout
from support.waiting import scaled, time_scale, wait_until

from letsfrag.clock import FakeClock
from letsfrag.events import recent
from letsfrag.supervisor import ClusterManager, ClusterState


async def test_crash_loop_backs_off_then_fails(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="crash")
    config = host_config(redis_url, tmp_path)  # backoff 0.2 x2 (0.2, 0.4, 0.8), max_restarts 3
    await write_layout(r)
    await grant(r, 0, epoch=1)
    failed: list[int] = []
    async with ClusterManager(config) as manager:
        manager.on("cluster_failed", lambda view: failed.append(view.cluster_id))
        await wait_until(lambda: 0 in manager.clusters and manager.clusters[0].state is ClusterState.FAILED,
                         timeout=10, message="cluster 0 FAILED")
        view = manager.clusters[0]
        assert view.restarts == 3 and view.spawns == 4 and failed == [0]
        assert "crash loop" in view.reason and "boom at start" in view.last_error
        # the spawns were spaced by at least the backoff delays (0.2, 0.4, 0.8 s; no jitter); a gap also holds a
        # process start (python, imports, the crash), which a busy machine stretches: the upper bound only
        # tells a backoff from a much longer one (the next delay, or the 60 s cap)
        times = [s["ts"] for s in starts(tmp_path, 0)]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for gap, delay in zip(gaps, (0.2, 0.4, 0.8), strict=True):
            assert delay <= gap < delay + 3.0 * time_scale(), gaps
        await wait_until(lambda: _state(r, 0, "failed"), message="status failed")
        restarts = [json.loads(x) for x in await r.lrange(f"{KEYS.ns}:restarts:cluster:0", 0, -1)]
        assert [e["delay"] for e in restarts] == [0.8, 0.4, 0.2]  # newest first
        assert restarts[0]["exit_code"] == 1
        errors = [json.loads(x) for x in await r.lrange(KEYS.cluster_errors(0), 0, -1)]
        assert len(errors) == 4 and "RuntimeError: boom at start" in errors[0]["text"]
        kinds = [e.kind for e in await recent(r, KEYS)]
        assert "cluster_failed" in kinds and kinds.count("cluster_restart") == 3 and "cluster_crash" in kinds

        # a restart command clears FAILED; with the bug fixed the cluster comes up
        set_modes(tmp_path, default="well")
        reply = await manager.commands.handle({"action": "restart", "cluster": 0, "timeout": 10})
        assert reply["ok"], reply
        assert manager.clusters[0].state is ClusterState.READY


async def test_restart_timers_run_on_the_managers_clock(redis_url: str, r: aioredis.Redis,
                                                        tmp_path: Path) -> None:
    """The backoff waits on the injected clock: with a fake one and a 30 s backoff, the next spawn comes as soon as
    the test advances the clock past the delay (30, then 60 s), which no wall-clock timer would do within the
    wait. The lease is long, so the advances do not fence the host. A backoff is waited for by its
    ``next_restart_at`` (set with its timer), not only by the state: a spawn counts itself while the state still says
    BACKOFF, until its process started."""
    set_modes(tmp_path, default="crash")
    clock = FakeClock()
    config = host_config(redis_url, tmp_path, restart={
        "backoff": {"initial": 30.0, "factor": 2.0, "max": 60.0, "jitter": 0.0}, "max_restarts": 3, "window": 600})
    await write_layout(r, ttl=600.0)
    await grant(r, 0, epoch=1)
    async with ClusterManager(config, clock=clock) as manager:
        for spawns, delay in ((1, 30.0), (2, 60.0)):
            await wait_until(lambda n=spawns: 0 in manager.clusters and manager.clusters[0].spawns == n
                             and manager.clusters[0].state is ClusterState.BACKOFF
                             and manager.clusters[0].next_restart_at is not None, message=f"backoff {spawns}")
            clock.advance(delay)
            await wait_until(lambda n=spawns: manager.clusters[0].spawns == n + 1,
                             message=f"spawn {spawns + 1}")


async def test_backoff_restart_after_crash(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="crash_after")
    config = host_config(redis_url, tmp_path, bot={"env": {
        "STUB_DIR": str(tmp_path / "stub"), "STUB_MODE_FILE": str(tmp_path / "stub" / "modes.json"),
        "STUB_CRASH_AFTER": "0.3"}})
    await write_layout(r)
    await grant(r, 2, epoch=1)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: len(starts(tmp_path, 2)) >= 2, timeout=10, message="a restart")
        first, second = starts(tmp_path, 2)[:2]
        assert gone(first["pid"])
        # a crash 0.3 s after the start, then the 0.2 s backoff; the upper bound (a process start and exit, which a
        # busy machine stretches) only tells it from a much longer wait
        assert 0.5 <= second["ts"] - first["ts"] < 0.5 + scaled(1.0)
        await wait_until(lambda: manager.clusters[2].state is ClusterState.READY, message="ready again")
        assert manager.clusters[2].restarts >= 1
        assert "boom after running a while" in (await status(r, 2)).get("last_error", "") or \
            "boom after running" in manager.clusters[2].last_error


async def test_exit_78_and_fatal_4004_fail_at_once(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, **{"0": "config", "1": "fatal", "2": "fenced"})
    config = host_config(redis_url, tmp_path)
    await write_layout(r)
    for cid in (0, 1, 2):
        await grant(r, cid, epoch=1)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: len(manager.clusters) == 3 and all(
            v.state is ClusterState.FAILED and v.pid is None for cid, v in manager.clusters.items() if cid < 2),
            timeout=10, message="both FAILED without a process")
        # exit 75: the cluster's epoch was fenced; stopped, not restarted
        await wait_until(lambda: manager.clusters[2].state is ClusterState.STOPPED, message="fenced cluster stopped")
        assert manager.clusters[2].spawns == 1 and manager.clusters[2].restarts == 0
        assert "fenced" in manager.clusters[2].reason
        c0, c1 = manager.clusters[0], manager.clusters[1]
        assert c0.restarts == 0 and c0.exit_code == 78 and "configuration error" in c0.reason
        assert c1.restarts == 0 and "4004: authentication failed" in c1.reason
        assert len(starts(tmp_path, 0)) == 1 and len(starts(tmp_path, 1)) == 1 and len(starts(tmp_path, 2)) == 1
        await wait_until(lambda: _state(r, 1, "failed"), message="status failed")
        running = json.loads(await r.hget(KEYS.host("h1"), "running") or "{}")
        assert running == {}


async def _state(r: aioredis.Redis, cluster_id: int, state: str) -> bool:
    return (await status(r, cluster_id)).get("state") == state
