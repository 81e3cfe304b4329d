"""Cross-cluster RPC latency over Redis: request, broadcast, and broadcast with one cluster unreachable.

Run ``python -m benchmarks.rpc [--clusters 4 --calls 500]``. Clusters run in one process against the simulator;
the caller is an ``RpcClient`` (a tool outside the bot). Writes ``benchmarks/results/rpc.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from benchmarks._cluster_common import NS, make_client, prepare, start_redis, write_result
from letsfrag.rpc import RpcClient
from letsfrag.sim import Simulator


async def _timed(calls: int, call: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3), "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
            "calls_per_second": round(calls / (sum(samples) / 1000), 1)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = start_redis()
    r = aioredis.Redis.from_url(server.url, decode_responses=True)
    shards = args.clusters * 2
    result: dict[str, Any] = {"clusters": args.clusters, "calls": args.calls}
    try:
        async with Simulator(shards=shards, guilds=shards * 4, max_concurrency=shards, identify_window=0.1,
                             heartbeat_interval=30.0, ack_delay=0.005) as sim:
            await prepare(r, shards, 2)
            clients = [make_client(server.url, sim, cid, 2, shards, max_concurrency=shards, identify_window=0.1)
                       for cid in range(args.clusters)]
            for client in clients:
                @client.cluster.handler("echo")
                async def echo(value: Any) -> Any:
                    return value
            tasks = [asyncio.create_task(c.start()) for c in clients]
            while not all(c.cluster.ready for c in clients):
                await asyncio.sleep(0.05)
            async with RpcClient(server.url, namespace=NS) as rpc:
                result["request"] = await _timed(args.calls, lambda: rpc.request(0, "echo", "x"))
                result["broadcast"] = await _timed(args.calls // 5, lambda: rpc.broadcast("echo", "x"))
                result["fetch_guild_counts"] = await _timed(
                    args.calls // 5, lambda: rpc.fetch_client_values("guilds", length=True))
                await r.hset("bench:layout", "cluster_count", args.clusters + 1)  # type: ignore[misc]
                started = time.perf_counter()
                partial = await rpc.broadcast("echo", "x", timeout=1.0)
                result["broadcast_one_unreachable"] = {
                    "seconds": round(time.perf_counter() - started, 3), "timeout": 1.0,
                    "statuses": {str(cid): res.status for cid, res in partial.items()}}
            for client in clients:
                await client.close()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
    finally:
        await r.aclose()
        server.cleanup()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--calls", type=int, default=500)
    outcome = asyncio.run(main(parser.parse_args()))
    path = write_result("rpc", outcome)
    for key, value in outcome.items():
        print(f"{key:>26}: {value}")
    print(f"written to {path}")
