"""The cost of claim before handle: the latency a claim adds to a handled event, against a raw redis-py round trip.

Run ``python -m benchmarks.claims [--events 2000 --burst 20]``. A private redis-server; the cluster's own parts
(:class:`~letsfrag.claims.ClaimSequencer` feeding parses, :class:`~letsfrag.claims.Claimer` running the claim
script, :data:`~letsfrag.claims.CLAIM_SCRIPT`: ``GET``, then ``SET PX`` when absent) on one redis-py client, as in a
cluster process. Measured per event, from the moment the parse
is submitted (what discord.py's parser call does) to the moment it runs:

- ``single``: one claimable event at a time on an idle shard;
- ``burst``: ``--burst`` claimable events arriving together on one shard (their claims are in flight together;
  each waits for its own and for those before it, to keep the order);
- ``unclaimed``: a parse of an event that is not claimed (the cost every other event pays: none to speak of).

The baseline, sampled interleaved with ``single``: the same ``SET key v NX PX`` awaited with plain redis-py.
Goal: ``single`` p50 ≤ the raw round trip p50 (one round trip). The claim is one round trip; what comes on top
is two event-loop handoffs (the task that sends the claim, the wakeup of the shard's queue), about 20 µs.
Writes ``benchmarks/results/claims.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from typing import Any

import redis.asyncio as aioredis

from benchmarks._cluster_common import KEYS, start_redis
from benchmarks.report import write_result
from letsfrag.claims import Claimer, ClaimSequencer

GOAL_FACTOR = 1.0


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)], 3), "samples": len(ordered)}


async def measure(url: str, events: int, burst: int) -> dict[str, Any]:
    r = aioredis.Redis.from_url(url)
    claimer = Claimer(r, KEYS, "0/1")
    ids = itertools.count()
    loop = asyncio.get_running_loop()
    finished: dict[int, float] = {}

    def parse(n: int, future: asyncio.Future[None]) -> Any:
        def run() -> None:
            finished[n] = time.perf_counter()
            future.set_result(None)
        return run

    sequencer = ClaimSequencer(claimer.claim, lambda thunk: thunk())

    async def one(claimed: bool) -> float:
        n, future = next(ids), loop.create_future()
        started = time.perf_counter()
        sequencer.submit(0, f"MESSAGE_CREATE:{n}" if claimed else None, parse(n, future))
        await future
        return (finished.pop(n) - started) * 1000

    async def raw() -> float:
        n = next(ids)
        started = time.perf_counter()
        await r.set(KEYS.claim(f"RAW:{n}"), "0/1", nx=True, px=600_000)
        return (time.perf_counter() - started) * 1000

    async def burst_round() -> list[float]:
        numbers = [next(ids) for _ in range(burst)]
        futures = [loop.create_future() for _ in numbers]
        started = time.perf_counter()
        for n, future in zip(numbers, futures, strict=True):
            sequencer.submit(0, f"MESSAGE_CREATE:{n}", parse(n, future))
        await asyncio.gather(*futures)
        return [(finished.pop(n) - started) * 1000 for n in numbers]

    try:
        for _ in range(200):  # warm up the connection, the event loop and the code paths
            await raw()
            await one(True)
        single, baseline, unclaimed, bursts = [], [], [], []
        for _ in range(events):
            baseline.append(await raw())
            single.append(await one(True))
            unclaimed.append(await one(False))
        for _ in range(max(1, events // burst)):
            bursts.extend(await burst_round())
        assert sequencer.won == 200 + events + max(1, events // burst) * burst and sequencer.lost == 0
        result: dict[str, Any] = {
            "events": events, "burst": burst,
            "raw_set_round_trip": _percentiles(baseline),
            "single": _percentiles(single),
            "unclaimed": _percentiles(unclaimed),
            "burst_per_event": _percentiles(bursts),
        }
    finally:
        await sequencer.close()
        await r.flushdb()
        await r.aclose()
    raw_p50 = result["raw_set_round_trip"]["p50_ms"]
    result["single_over_raw_p50"] = round(result["single"]["p50_ms"] / raw_p50, 2)
    result["goal"] = {"single_p50_over_raw_p50": GOAL_FACTOR}
    result["goal_met"] = result["single_over_raw_p50"] <= GOAL_FACTOR
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The README row of a result."""
    single, raw, burst = result["single"], result["raw_set_round_trip"], result["burst_per_event"]
    return {
        "what": "latency a claim adds to a handled event (parse submitted → parse runs) vs a raw redis-py SET NX",
        "measured": (f"p50 {single['p50_ms']:.3f} ms / p99 {single['p99_ms']:.3f} ms "
                     f"({result['single_over_raw_p50']:.2f}× raw p50 {raw['p50_ms']:.3f} ms, p99 "
                     f"{raw['p99_ms']:.3f} ms); burst of {result['burst']}: p50 {burst['p50_ms']:.3f} ms / p99 "
                     f"{burst['p99_ms']:.3f} ms per event; unclaimed events {result['unclaimed']['p50_ms']:.3f} ms"),
        "goal": "p50 ≤ one round trip (raw p50)",
        "met": bool(result["goal_met"]),
        "command": "python -m benchmarks.claims",
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    server = start_redis()
    try:
        return await measure(server.url, args.events, args.burst)
    finally:
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=20)
    outcome = asyncio.run(main(parser.parse_args()))
    path = write_result("claims", outcome, **summary(outcome))
    for key, value in outcome.items():
        print(f"{key:>22}: {value}")
    print(f"written to {path}")
