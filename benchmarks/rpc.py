"""Cross-cluster RPC latency over Redis against a raw redis-py round trip on the same server.

Run ``python -m benchmarks.rpc [--clusters 16 --calls 500]``. Clusters run in one process against the
simulator; the caller is an ``RpcClient`` (a tool outside the bot). The baseline is the cheapest round trip
redis-py can do: two asyncio clients, one subscribed to a request channel that publishes every message back on
a reply channel the other is subscribed to. Goals: request p50 ≤ 2 × baseline p50, broadcast to every cluster
p50 ≤ 4 × baseline p50. A second baseline, the raw fan-out (one redis-py client per cluster answering every
request, all in this process like the clusters), shows the floor of a broadcast here: with every cluster in one
Python process a broadcast costs N × (receive + publish + receive) of redis-py CPU, so ``broadcast_over_raw``
grows with N whatever the bus does; ``broadcast_over_raw_fanout`` is the bus's own overhead.
Writes ``benchmarks/results/rpc.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from benchmarks._cluster_common import NS, close_clients, make_client, prepare, start_redis
from benchmarks.report import write_result
from letsfrag.rpc.caller import RpcClient
from letsfrag.sim import Simulator

REQUEST_GOAL = 2.0
BROADCAST_GOAL = 4.0


async def _timed(calls: int, call: Callable[[], Awaitable[Any]], warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 3), "p99_ms": round(samples[int(len(samples) * 0.99) - 1], 3),
            "calls_per_second": round(calls / (sum(samples) / 1000), 1)}


async def raw_round_trip(url: str, calls: int, responders: int = 1) -> dict[str, float]:
    """publish → subscriber(s) → publish → subscriber with plain redis-py, each client reading in its own task.

    ``responders`` > 1 is the raw equivalent of a broadcast: that many clients (one connection pair each, like
    one cluster each) answer every request and the caller waits for all of them.
    """
    caller = aioredis.Redis.from_url(url)
    replies = caller.pubsub(ignore_subscribe_messages=True)
    await replies.subscribe("raw:reply")
    clients = [aioredis.Redis.from_url(url) for _ in range(responders)]
    subscriptions = [client.pubsub(ignore_subscribe_messages=True) for client in clients]
    for pubsub in subscriptions:
        await pubsub.subscribe("raw:request")
    waiting: dict[bytes, tuple[asyncio.Future[None], list[int]]] = {}

    async def serve(client: aioredis.Redis, pubsub: Any) -> None:
        async for message in pubsub.listen():
            await client.publish("raw:reply", message["data"])

    async def receive() -> None:
        async for message in replies.listen():
            entry = waiting.get(message["data"])
            if entry is not None:
                entry[1][0] -= 1
                if entry[1][0] == 0:
                    del waiting[message["data"]]
                    entry[0].set_result(None)

    counter = itertools.count()

    async def call() -> None:
        ident = str(next(counter)).encode()
        future = asyncio.get_running_loop().create_future()
        waiting[ident] = (future, [responders])
        await caller.publish("raw:request", ident)
        await future

    tasks = [asyncio.create_task(receive())]
    tasks += [asyncio.create_task(serve(c, p)) for c, p in zip(clients, subscriptions, strict=True)]
    try:
        return await _timed(calls, call)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for pubsub in [replies, *subscriptions]:
            await pubsub.aclose()
        for client in [caller, *clients]:
            await client.aclose()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = start_redis()
    r = aioredis.Redis.from_url(server.url, decode_responses=True)
    shards = args.clusters * 2
    result: dict[str, Any] = {"clusters": args.clusters, "calls": args.calls}
    try:
        result["raw_round_trip"] = await raw_round_trip(server.url, args.calls)
        result["raw_broadcast"] = await raw_round_trip(server.url, args.calls // 5, responders=args.clusters)
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
                # a second baseline after the clusters ran: the machine may have warmed up or slowed down
                result["raw_round_trip_after"] = await raw_round_trip(server.url, args.calls)
                await r.hset(f"{NS}:layout", "cluster_count", args.clusters + 1)  # type: ignore[misc]
                started = time.perf_counter()
                partial = await rpc.broadcast("echo", "x", timeout=1.0)
                result["broadcast_one_unreachable"] = {
                    "seconds": round(time.perf_counter() - started, 3), "timeout": 1.0,
                    "statuses": {str(cid): res.status for cid, res in partial.items()}}
            await close_clients(clients, tasks)
    finally:
        await r.aclose()
        server.cleanup()
    raw = min(result["raw_round_trip"]["p50_ms"], result["raw_round_trip_after"]["p50_ms"])
    result["ratios"] = {"request_over_raw": round(result["request"]["p50_ms"] / raw, 2),
                        "broadcast_over_raw": round(result["broadcast"]["p50_ms"] / raw, 2),
                        "broadcast_over_raw_fanout": round(result["broadcast"]["p50_ms"]
                                                           / result["raw_broadcast"]["p50_ms"], 2)}
    result["goals"] = {"request_over_raw": REQUEST_GOAL, "broadcast_over_raw": BROADCAST_GOAL}
    result["goals_met"] = {"request": result["ratios"]["request_over_raw"] <= REQUEST_GOAL,
                           "broadcast": result["ratios"]["broadcast_over_raw"] <= BROADCAST_GOAL}
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The README row of a result."""
    raw = min(result["raw_round_trip"]["p50_ms"], result["raw_round_trip_after"]["p50_ms"])
    ratios = result["ratios"]
    return {
        "what": f"RPC round trip over Redis vs a raw redis-py pub/sub round trip, {result['clusters']} clusters",
        "measured": (f"request p50 {result['request']['p50_ms']:.2f} ms ({ratios['request_over_raw']:.1f}× raw "
                     f"{raw:.2f} ms); broadcast-{result['clusters']} p50 {result['broadcast']['p50_ms']:.2f} ms "
                     f"({ratios['broadcast_over_raw']:.1f}× raw; {ratios['broadcast_over_raw_fanout']:.1f}× a raw "
                     f"{result['clusters']}-responder fan-out {result['raw_broadcast']['p50_ms']:.2f} ms)"),
        "goal": f"request ≤ {REQUEST_GOAL:g}× raw; broadcast ≤ {BROADCAST_GOAL:g}× raw",
        "met": all(result["goals_met"].values()),
        "command": "python -m benchmarks.rpc",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--calls", type=int, default=500)
    outcome = asyncio.run(main(parser.parse_args()))
    path = write_result("rpc", outcome, **summary(outcome))
    for key, value in outcome.items():
        print(f"{key:>26}: {value}")
    print(f"written to {path}")
