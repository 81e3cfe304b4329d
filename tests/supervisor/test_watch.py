"""Stop sequence, orphans, hangs, memory and log floods (real processes, short timers)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import redis.asyncio as aioredis
from support.supervisor import KEYS, gone, grant, host_config, revoke, set_modes, starts, write_layout
from support.waiting import scaled, wait_until

from letsfrag.events import recent
from letsfrag.supervisor import ClusterManager, ClusterState


def _env(tmp_path: Path, **extra: str) -> dict[str, dict[str, str]]:
    return {"env": {"STUB_DIR": str(tmp_path / "stub"), "STUB_MODE_FILE": str(tmp_path / "stub" / "modes.json"),
                    **extra}}


def _grandchildren(tmp_path: Path, cluster_id: int) -> list[int]:
    return sorted(int(p.read_text()) for p in (tmp_path / "stub").glob(f"grandchild-{cluster_id}-*.pid")
                  if p.read_text())


async def test_sigterm_ignoring_cluster_is_killed_after_the_timeouts(
        redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="ignore_term")
    config = host_config(redis_url, tmp_path, limits={"stop_timeout": 0.6})
    await write_layout(r)
    await grant(r, 0, epoch=1)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: 0 in manager.clusters and manager.clusters[0].state is ClusterState.READY,
                         message="ready")
        pid = manager.clusters[0].pid
        assert pid is not None
        started = time.monotonic()
        await revoke(r, 0)
        await wait_until(lambda: manager.clusters[0].state is ClusterState.STOPPED, message="stopped")
        took = time.monotonic() - started
        # IPC stop ignored (0.3 s), SIGTERM ignored (0.6 s), then SIGKILL
        assert 0.85 <= took < scaled(2.5), took
        assert gone(pid) and manager.clusters[0].exit_signal == signal.SIGKILL


async def test_grandchildren_are_killed_with_their_cluster(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="fork")
    config = host_config(redis_url, tmp_path)
    await write_layout(r)
    await grant(r, 0, epoch=1)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: _grandchildren(tmp_path, 0), message="a grandchild")
        first = _grandchildren(tmp_path, 0)[0]
        # the middle process dies hard; the grandchild left its group, yet the sampler remembered it
        await wait_until(lambda: manager.clusters[0].threads > 1 or manager.clusters[0].rss > 0,
                         message="a sample")
        await wait_until(lambda: first in _tree_pids(manager), message="grandchild sampled")
        middle = manager.clusters[0].pid
        assert middle is not None
        os.kill(middle, signal.SIGKILL)
        await wait_until(lambda: gone(first), timeout=3, message="grandchild of the crashed process gone")
        await wait_until(lambda: len(_grandchildren(tmp_path, 0)) == 2, message="restarted with a new grandchild")
        second = next(pid for pid in _grandchildren(tmp_path, 0) if pid != first)
        events = [e.kind for e in await recent(r, KEYS)]
        assert "cluster_leftovers" in events
        await wait_until(lambda: manager.clusters[0].state is ClusterState.READY, message="ready again")
    # a clean stop of the supervisor leaves nothing behind either
    assert gone(second) and all(gone(s["pid"]) for s in starts(tmp_path, 0))


def _tree_pids(manager: ClusterManager) -> set[int]:
    process = manager.processes.get(0)
    return set(process._known) if process is not None else set()


async def test_hung_cluster_dumps_stacks_and_restarts(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="hang")
    config = host_config(redis_url, tmp_path, limits={"hang_timeout": 0.8, "stop_timeout": 0.5})
    await write_layout(r)
    await grant(r, 0, epoch=1)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: starts(tmp_path, 0), message="first start")
        set_modes(tmp_path, default="well")  # the next start behaves
        hung_pid = starts(tmp_path, 0)[0]["pid"]
        await wait_until(lambda: len(starts(tmp_path, 0)) == 2, timeout=10, message="restart after the hang")
        assert gone(hung_pid)
        await wait_until(lambda: manager.clusters[0].state is ClusterState.READY, message="ready again")
        restarts = [json.loads(x) for x in await r.lrange(f"{KEYS.ns}:restarts:cluster:0", 0, -1)]
        assert restarts and restarts[0]["reason"].startswith("hung: no heartbeat")
        assert "cluster_hung" in [e.kind for e in await recent(r, KEYS)]
        text = (tmp_path / "logs" / "cluster-0.log").read_text(errors="replace")
        assert "SIGUSR1" in text and "most recent call first" in text  # faulthandler's stack dump


async def test_memory_limit_restarts_the_cluster(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="memory")
    config = host_config(redis_url, tmp_path, limits={"max_memory": "70MiB"}, bot=_env(tmp_path, STUB_GROW_MB="90"))
    await write_layout(r)
    await grant(r, 0, epoch=1)
    async with ClusterManager(config) as manager:
        await wait_until(lambda: starts(tmp_path, 0), message="first start")
        set_modes(tmp_path, default="well")
        await wait_until(lambda: len(starts(tmp_path, 0)) == 2, timeout=10, message="restart for memory")
        await wait_until(lambda: manager.clusters[0].state is ClusterState.READY, message="ready again")
        restarts = [json.loads(x) for x in await r.lrange(f"{KEYS.ns}:restarts:cluster:0", 0, -1)]
        assert restarts[0]["reason"].startswith("memory: RSS")
        assert "cluster_memory" in [e.kind for e in await recent(r, KEYS)]
        metrics = [json.loads(x) for x in await r.lrange(f"{KEYS.ns}:metrics:cluster:0", 0, -1)]
        assert max(m["rss"] for m in metrics) > 70 * 1024 * 1024


async def test_output_flood_is_rotated(redis_url: str, r: aioredis.Redis, tmp_path: Path) -> None:
    set_modes(tmp_path, default="flood")
    config = host_config(redis_url, tmp_path, bot=_env(tmp_path, STUB_FLOOD_MB="6"),
                         logs={"max_bytes": 1024 * 1024, "backups": 2})
    await write_layout(r)
    await grant(r, 0, epoch=1)
    async with ClusterManager(config) as manager:
        log_file = manager.state.logs  # created on spawn
        await wait_until(lambda: 0 in log_file and log_file[0].rotations >= 5, timeout=15, message="rotations")
        await wait_until(lambda: manager.clusters[0].state is ClusterState.READY, message="ready")
        files = sorted(p.name for p in (tmp_path / "logs").iterdir())
        assert files == ["cluster-0.log", "cluster-0.log.1", "cluster-0.log.2"]
        for name in files:
            assert (tmp_path / "logs" / name).stat().st_size <= 1024 * 1024
