"""The identify coordinator alone: grant rate across buckets and FIFO fairness, against a throwaway Redis.

Run ``python -m benchmarks.identify [--repeats 5 --waiters 200 --buckets 16 --window 0.15]``. Each repeat
queues ``--waiters`` shards (shard ``i`` in bucket ``i % buckets``) one after the other, spread over
``--processes`` :class:`letsfrag.cluster.identify.IdentifyCoordinator` instances with their own Redis connections (as
many cluster processes would), and records when each is granted.

* **rate**: grants per second summed over buckets (``(grants in bucket - 1) / (last - first grant)``); the
  ideal is ``buckets / (window + margin)``: one grant per bucket per window.
* **fairness**: for each waiter the FIFO expectation is ``max(arrival, previous expected grant in its bucket +
  window + margin)``; lateness is grant minus that. Reported: the largest wait against the largest expected
  wait, the largest lateness, and grants out of arrival order within a bucket (should be 0).
* **Redis cost**: commands processed by Redis per grant (the waiters' polling and the calls
  inside the Lua script included, the benchmark's own not).

``--margin`` defaults to 0 to measure the coordinator itself; the clusters use a 0.1 s safety margin on top of
Discord's 5 s window. There is no pass/fail goal: the numbers are reported. Writes
``benchmarks/results/identify.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from benchmarks.report import fmt_spread, print_rich_table, spread, write_result
from letsfrag.cluster.identify import IdentifyCoordinator
from letsfrag.contract.keys import Keys
from letsfrag.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python -m benchmarks.identify"


async def _commands(r: aioredis.Redis) -> int:
    info = await r.info("stats")
    return int(info["total_commands_processed"])


async def run_once(url: str, namespace: str, args: argparse.Namespace) -> dict[str, Any]:
    """Queue every waiter in order, wait for all grants; timings from the loop's clock."""
    loop = asyncio.get_running_loop()
    keys = Keys(namespace)
    clients = [aioredis.Redis.from_url(url, decode_responses=True) for _ in range(args.processes)]
    control = aioredis.Redis.from_url(url, decode_responses=True)
    coordinators = [IdentifyCoordinator(c, keys, max_concurrency=args.buckets, window=args.window,
                                        margin=args.margin, source="bench") for c in clients]
    arrival: dict[int, float] = {}
    granted: dict[int, float] = {}

    async def waiter(shard: int) -> None:
        await coordinators[shard % args.processes].acquire(shard, f"{shard // 8}:{shard}", timeout=120.0)
        granted[shard] = loop.time()

    try:
        commands_before = await _commands(control)
        tasks = []
        polls = 0
        for shard in range(args.waiters):
            tasks.append(asyncio.create_task(waiter(shard)))
            # the next waiter is created only once this one holds its ticket, so arrival order is shard order
            deadline = loop.time() + 10.0
            while int(await control.get(keys.identify("seq")) or 0) < shard + 1:
                polls += 1
                if loop.time() > deadline:
                    raise TimeoutError(f"waiter {shard} did not enqueue within 10 s")
                await asyncio.sleep(0.0005)
            polls += 1
            arrival[shard] = loop.time()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120.0)
        commands = await _commands(control) - commands_before - polls - 1  # not our own polls and INFO
    finally:
        for coordinator in coordinators:
            await coordinator.close()
        for client in [*clients, control]:
            await client.aclose()
    return _analyse(arrival, granted, commands, args)


def _analyse(arrival: dict[int, float], granted: dict[int, float], commands: int,
             args: argparse.Namespace) -> dict[str, Any]:
    slot = args.window + args.margin
    by_bucket: dict[int, list[int]] = defaultdict(list)
    for shard in sorted(arrival):
        by_bucket[shard % args.buckets].append(shard)
    rate = 0.0
    lateness, gaps, expected_waits = [], [], []
    out_of_order = 0
    for shards in by_bucket.values():
        expected = -float("inf")
        for shard in shards:  # arrival order within the bucket
            expected = max(arrival[shard], expected + slot)
            lateness.append(granted[shard] - expected)
            expected_waits.append(expected - arrival[shard])
        times = [granted[s] for s in shards]
        out_of_order += sum(1 for a, b in itertools.pairwise(times) if b < a)
        ordered = sorted(times)
        gaps += [b - a for a, b in itertools.pairwise(ordered)]
        if len(ordered) > 1 and ordered[-1] > ordered[0]:
            rate += (len(ordered) - 1) / (ordered[-1] - ordered[0])
    waits = [granted[s] - arrival[s] for s in arrival]
    return {"rate": rate, "max_wait": max(waits), "max_expected_wait": max(expected_waits),
            "max_lateness": max(lateness), "median_lateness": statistics.median(lateness),
            "median_gap_overhead": statistics.median(gaps) - slot if gaps else 0.0,
            "out_of_order": out_of_order, "commands_per_grant": commands / max(1, len(granted)),
            "grants": len(granted)}


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="letsfrag-bench-identify-"))
    server = RedisServer(data_dir=work / "redis")
    server.start()
    samples = []
    try:
        for index in range(args.repeats):
            sample = await run_once(server.url, f"bench-identify-{index}", args)
            samples.append(sample)
            print(f"  repeat {index + 1}: {sample['rate']:.1f} grants/s, max lateness "
                  f"{sample['max_lateness'] * 1000:.1f} ms, {sample['out_of_order']} out of order", file=sys.stderr)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    ideal = args.buckets / (args.window + args.margin)
    rate = spread([s["rate"] for s in samples], 2)

    def ms(name: str) -> dict[str, Any]:
        return spread([s[name] * 1000 for s in samples], 1)

    return {
        "goal": {"text": "report (ideal rate = buckets / (window + margin))", "ideal_grants_per_second": ideal},
        "measured": rate, "met": None, "ideal_grants_per_second": round(ideal, 2),
        "rate_of_ideal": round(rate["median"] / ideal, 3),
        "max_wait_ms": ms("max_wait"), "max_expected_wait_ms": ms("max_expected_wait"),
        "max_lateness_ms": ms("max_lateness"), "median_lateness_ms": ms("median_lateness"),
        "median_gap_overhead_ms": ms("median_gap_overhead"),
        "out_of_order": max(s["out_of_order"] for s in samples),
        "redis_commands_per_grant": spread([s["commands_per_grant"] for s in samples], 1),
        "parameters": {"waiters": args.waiters, "buckets": args.buckets, "window": args.window,
                       "margin": args.margin, "processes": args.processes, "repeats": args.repeats,
                       "poll_interval": 0.1, "ticket_ttl": 3.0},
    }


def _print(result: dict[str, Any]) -> None:
    p = result["parameters"]
    body = [
        ["grants per second", fmt_spread(result["measured"], "/s", 1), f"{result['ideal_grants_per_second']:.1f} /s"],
        ["largest wait", fmt_spread(result["max_wait_ms"], "ms", 0),
         fmt_spread(result["max_expected_wait_ms"], "ms", 0)],
        ["largest lateness vs FIFO", fmt_spread(result["max_lateness_ms"], "ms", 1), "0 ms"],
        ["median lateness vs FIFO", fmt_spread(result["median_lateness_ms"], "ms", 1), "0 ms"],
        ["grant gap beyond the window", fmt_spread(result["median_gap_overhead_ms"], "ms", 1), "0 ms"],
        ["grants out of arrival order", str(result["out_of_order"]), "0"],
        ["Redis commands per grant (Lua calls incl.)", fmt_spread(result["redis_commands_per_grant"], "", 1), "—"],
    ]
    print_rich_table(f"identify coordinator: {p['waiters']} waiters, {p['buckets']} buckets, window "
                     f"{p['window'] * 1000:g} ms + margin {p['margin'] * 1000:g} ms, {p['processes']} coordinators "
                     "(median, min–max)", ["measure", "measured", "ideal / FIFO expectation"], body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.identify", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--buckets", type=int, default=16, help="max_concurrency")
    parser.add_argument("--window", type=float, default=0.15, help="identify window in seconds")
    parser.add_argument("--margin", type=float, default=0.0, help="safety margin added to each window (s)")
    parser.add_argument("--processes", type=int, default=8, help="coordinators, each with its own connections")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/identify.json")
    args = parser.parse_args(argv)
    if min(args.repeats, args.waiters, args.buckets, args.processes) < 1 or args.window <= 0 or args.margin < 0:
        parser.error("--repeats, --waiters, --buckets, --processes must be ≥ 1, --window > 0, --margin ≥ 0")
    result = asyncio.run(run_benchmark(args))
    _print(result)
    if not args.no_write:
        p = result["parameters"]
        path = write_result(
            "identify", result,
            what=f"IdentifyCoordinator alone: {p['waiters']} waiting shards, {p['buckets']} buckets, window "
                 f"{p['window'] * 1000:g} ms, {p['processes']} coordinators",
            measured=f"{fmt_spread(result['measured'], 'grants/s', 1)} = {result['rate_of_ideal'] * 100:.0f} % of "
                     f"ideal {result['ideal_grants_per_second']:.0f}/s; max lateness vs FIFO "
                     f"{result['max_lateness_ms']['median']:.0f} ms; {result['out_of_order']} out of order",
            goal="report (ideal = buckets / window)", met=None, command=COMMAND)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
