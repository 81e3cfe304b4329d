"""Cold start of cluster clients through the global identify queue versus the physical limit.

Run ``python -m benchmarks.coldstart_client [--shards 32 --per-cluster 8 --max-concurrency 4 --window 1]``.
All clusters start at once (in one process) against the simulator; every IDENTIFY goes through Redis. The limit
is ``(ceil(shards / max_concurrency) - 1) × window``; the result also counts identify violations (must be 0).
Writes ``benchmarks/results/coldstart_client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time

import redis.asyncio as aioredis

from benchmarks._cluster_common import close_clients, make_client, prepare, start_redis, write_result
from letsfrag.sim import Simulator


async def main(args: argparse.Namespace) -> dict[str, object]:
    server = start_redis()
    r = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        async with Simulator(shards=args.shards, guilds=args.shards * 4, max_concurrency=args.max_concurrency,
                             identify_window=args.window, heartbeat_interval=30.0, ack_delay=0.005) as sim:
            clusters = await prepare(r, args.shards, args.per_cluster)
            clients = [make_client(server.url, sim, cid, args.per_cluster, args.shards,
                                   max_concurrency=args.max_concurrency, identify_window=args.window)
                       for cid in range(clusters)]
            started = time.monotonic()
            tasks = [asyncio.create_task(c.start()) for c in clients]
            while len(sim.stats()["shards_ready"]) < args.shards:
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
            stats = sim.stats()
            await close_clients(clients, tasks)
    finally:
        await r.aclose()
        server.cleanup()
    limit = (math.ceil(args.shards / args.max_concurrency) - 1) * args.window
    return {"shards": args.shards, "clusters": clusters, "max_concurrency": args.max_concurrency,
            "window": args.window, "seconds_to_all_ready": round(elapsed, 3), "physical_limit": round(limit, 3),
            "overhead_seconds": round(elapsed - limit, 3),
            "identify_violations": stats["identify_violations"]["total"], "identifies": stats["identifies"]["total"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--per-cluster", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=1.0)
    result = asyncio.run(main(parser.parse_args()))
    path = write_result("coldstart_client", result)
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    print(f"written to {path}")
