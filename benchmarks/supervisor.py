"""Host supervisor overhead: CPU and RSS with 16 idle clusters, crash-to-respawn and crash-to-IDENTIFY latency.

Run ``python -m benchmarks.supervisor [--clusters 16 --idle 20 --crashes 10]``. One ``ClusterManager`` runs the
stand-in cluster program of the tests (``tests/supervisor/programs/stub.py``, heartbeating every second like an
idle bot) against a private redis-server; the benchmark writes the layout and grants as the broker would.
Goals: supervisor CPU < 2 % of a core at the default sample interval; respawn latency beyond the backoff delay
< 150 ms (median and max).

Crash → first IDENTIFY: a local deployment (``letsfrag.lab.rehearsal``: the simulator, ``letsfrag broker``, one
``letsfrag supervise`` running the example bot as ``bot.module``) per ``bot.launcher`` (``fork``, then ``exec``);
a cluster process is SIGKILLed ``--identify-crashes`` times (each once its shard's identify window is free, so
no sample waits for the rate limit) and the time from its restart being due (the
``next_restart_at`` the supervisor publishes, i.e. beyond the backoff) to the simulator receiving the new
process's first IDENTIFY is measured. Goal: ≤ 100 ms with ``fork`` (median). Writes
``benchmarks/results/supervisor.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from letsfrag.config import HostConfig
from letsfrag.contract.keys import Keys
from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings
from letsfrag.redis_server import RedisServer
from letsfrag.supervisor import ClusterManager, ClusterState, ClusterView

NS = "bench"
KEYS = Keys(NS)
ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "tests" / "supervisor" / "programs" / "stub.py"
RESULTS = Path(__file__).resolve().parent / "results"
BACKOFF = 0.5
IDENTIFY_GOAL_MS = 100.0


def _identify_after_crash(launcher: str, crashes: int, work: Path) -> dict[str, Any]:
    """SIGKILL cluster processes of a real deployment; ms from the restart being due to the new IDENTIFY."""
    settings = RehearsalSettings(hosts=1, shards=4, shards_per_cluster=1, max_concurrency=4, guilds_per_shard=2,
                                 namespace="bench-identify", launcher=launcher, restart_initial=0.3,
                                 max_restarts=1000)
    deployment = Rehearsal(settings, work)
    samples: list[float] = []
    try:
        deployment.start()
        client = deployment.redis_client()
        offset = time.time() - time.monotonic()  # wall -> monotonic (the simulator's clock is monotonic)

        def wait(predicate: Any, what: str, timeout: float = 30.0) -> Any:
            deadline = time.monotonic() + timeout
            while not (value := predicate()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out waiting for {what} (logs in {work})")
                time.sleep(0.005)
            return value

        keys = Keys(settings.namespace)

        def slot_key(shard: int) -> str:
            return keys.identify(f"slot:{shard % settings.max_concurrency}")

        wait(deployment.all_ready, "all READY", 90)
        for i in range(crashes):
            cid = i % settings.clusters
            key = f"{settings.namespace}:status:cluster:{cid}"
            pid = int(client.hget(key, "pid"))
            before = int(deployment.sim_stats()["identifies"]["per_shard"].get(str(cid), 0))
            # the identify window of the cluster's bucket (its shard's) must be free: time to the IDENTIFY
            # beyond the backoff, not a wait for Discord's rate limit
            wait(lambda slot=slot_key(cid): not client.exists(slot), "a free identify window")
            os.kill(pid, signal.SIGKILL)
            due = float(wait(lambda key=key: client.hget(key, "state") == "backoff"
                             and client.hget(key, "next_restart_at"), "backoff"))
            stats = wait(lambda cid=cid, before=before: (s := deployment.sim_stats())
                         and int(s["identifies"]["per_shard"].get(str(cid), 0)) > before and s, "IDENTIFY")
            samples.append((float(stats["identified_at"][str(cid)]) - (due - offset)) * 1000)
            wait(deployment.all_ready, "all READY again")
        client.close()
    finally:
        deployment.close()
    return {"median": round(statistics.median(samples), 1), "min": round(min(samples), 1),
            "max": round(max(samples), 1), "crashes": len(samples)}


def _config(redis_url: str, work: Path) -> HostConfig:
    return HostConfig.model_validate({
        "redis": redis_url, "namespace": NS, "host": {"id": "bench", "capacity": 64},
        "bot": {"command": [sys.executable, str(STUB)], "token": "bench-token",
                "env": {"STUB_DIR": str(work), "STUB_MODE": "well", "STUB_HB": "1.0"}},
        "restart": {"backoff": {"initial": BACKOFF, "factor": 1.0, "max": BACKOFF, "jitter": 0.0},
                    "max_restarts": 1000, "window": 60},
        "logs": {"dir": str(work / "logs")},
        # sample_interval and limits stay at their defaults (2 s, hang 30 s, stop 10 s)
    })


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="letsfrag-bench-supervisor-"))
    server = RedisServer(data_dir=work / "redis")
    server.start()
    r = aioredis.Redis.from_url(server.url, decode_responses=True)
    me = psutil.Process()
    result: dict[str, Any] = {"clusters": args.clusters, "idle_seconds": args.idle, "sample_interval": 2.0}
    try:
        await r.hset(KEYS.layout, mapping={  # type: ignore[misc]
            "shard_count": args.clusters, "shards_per_cluster": 1, "cluster_count": args.clusters,
            "max_concurrency": 1, "identify_window": 5, "lease_ttl": 10, "lease_grace": 2, "heartbeat_interval": 2})
        for cid in range(args.clusters):
            await r.hset(KEYS.assignment, str(cid), json.dumps({"host": "bench", "epoch": 1}))  # type: ignore[misc]
        created: dict[int, list[float]] = {}

        def on_create(view: ClusterView) -> None:
            created.setdefault(view.cluster_id, []).append(time.perf_counter())

        manager = ClusterManager(_config(server.url, work))
        manager.on("cluster_create", on_create)
        started = time.perf_counter()
        async with manager:
            await _wait(lambda: len(manager.clusters) == args.clusters and all(
                v.state is ClusterState.READY for v in manager.clusters.values()), 60, "clusters READY")
            result["all_ready_seconds"] = round(time.perf_counter() - started, 3)
            await asyncio.sleep(3)  # settle: first samples, status writes

            # idle overhead of the supervisor process
            cpu_before = sum(me.cpu_times()[:2])
            wall_before = time.perf_counter()
            await asyncio.sleep(args.idle)
            cpu = (sum(me.cpu_times()[:2]) - cpu_before) / (time.perf_counter() - wall_before) * 100
            result["supervisor_cpu_percent"] = round(cpu, 3)
            result["supervisor_rss_mib"] = round(me.memory_info().rss / 1024 / 1024, 1)
            result["clusters_rss_mib"] = round(sum(v.rss for v in manager.clusters.values()) / 1024 / 1024, 1)

            # crash-to-respawn: SIGKILL a cluster, time until its new process was spawned, minus the backoff
            latencies: list[float] = []
            for i in range(args.crashes):
                cid = i % args.clusters
                view = manager.clusters[cid]
                before = len(created.get(cid, []))
                assert view.pid is not None
                killed_at = time.perf_counter()
                os.kill(view.pid, signal.SIGKILL)
                await _wait(lambda cid=cid, before=before: len(created.get(cid, [])) > before, 10, "respawn")
                latencies.append((created[cid][-1] - killed_at - BACKOFF) * 1000)
                await _wait(lambda cid=cid: manager.clusters[cid].state is ClusterState.READY, 10, "ready")
            result["respawn_beyond_backoff_ms"] = {
                "median": round(statistics.median(latencies), 1), "max": round(max(latencies), 1),
                "min": round(min(latencies), 1), "backoff_seconds": BACKOFF, "crashes": len(latencies)}
        result["goals"] = {
            "cpu_below_2_percent": result["supervisor_cpu_percent"] < 2.0,
            "respawn_below_150_ms": result["respawn_beyond_backoff_ms"]["max"] < 150.0,
        }
        if args.identify_crashes:
            result["identify_after_crash_ms"] = {
                launcher: _identify_after_crash(launcher, args.identify_crashes, work / f"identify-{launcher}")
                for launcher in ("fork", "exec")}
            result["goals"]["identify_fork_below_100_ms"] = (
                result["identify_after_crash_ms"]["fork"]["median"] <= IDENTIFY_GOAL_MS)
        result["load_average"] = [round(x, 2) for x in psutil.getloadavg()]
    finally:
        await r.aclose()
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return result


def write_result(data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "supervisor.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    parser.add_argument("--crashes", type=int, default=10)
    parser.add_argument("--identify-crashes", type=int, default=6,
                        help="crashes per bot.launcher timed to the new IDENTIFY (0: skip)")
    outcome = asyncio.run(main(parser.parse_args()))
    out = write_result(outcome)
    for key, value in outcome.items():
        print(f"{key:>28}: {value}")
    print(f"written to {out}")
