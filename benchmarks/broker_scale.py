"""Broker at scale: 200 hosts, 10,000 shards — the broker's CPU, first assignment and failover decision.

Run ``python -m benchmarks.broker_scale [--repeats 3]`` from the repository root. Each repeat is a fresh
deployment on a private redis-server: a fleet of lightweight fake hosts in this process
(``benchmarks/_fake_hosts.py``, the host side of docs/redis.md; 200 hosts of capacity 8) and a real broker
process (``python -m letsfrag broker``; 10,000 shards in 1,250 clusters of 8, heartbeat 2 s, lease ttl 10 s,
grace 2 s — the defaults). The broker runs in its own process so psutil measures its CPU apart from the fleet.
Per repeat:

* **first assignment**: broker spawn → all 1,250 clusters in ``{ns}:assignment`` (includes starting Python),
  and the broker's own part, its ``startup`` event → its ``ready`` event;
* **steady state**: the broker's CPU (user + system) over a window once every host runs its clusters, as % of
  one core, and per tick;
* **host lost**: one host (the one holding most clusters) stops dead; the decision time runs from the broker's
  ``host_lost`` event (the lease gone past grace, noticed) to its first ``cluster_moved`` event (every grant is
  written in one pipeline before it); also the last ``cluster_moved`` and kill → all reassigned.

Goals: steady CPU < 25 % of a core, decision < 50 ms (medians). Writes ``benchmarks/results/broker_scale.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from benchmarks._fake_hosts import FakeFleet
from benchmarks.report import fmt_spread, print_rich_table, spread, write_result
from letsfrag.contract.keys import Keys
from letsfrag.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python -m benchmarks.broker_scale"
CPU_GOAL = 25.0  # % of one core
DECISION_GOAL_MS = 50.0
SECRET_ENV = "BENCH_BROKER_SECRET"
SECRET = "broker-scale-bench-secret"


def broker_yaml(args: argparse.Namespace, redis_url: str, namespace: str) -> str:
    """The broker's config document."""
    return (
        f"redis: {redis_url}\nnamespace: {namespace}\nsecret: ${{{SECRET_ENV}}}\n"
        f"shards: {args.shards}\nshards_per_cluster: {args.per_cluster}\nmax_concurrency: {args.max_concurrency}\n"
        f"hosts:\n  expected: {args.hosts}\n  startup_grace: 30s\n"
        f"lease:\n  ttl: {args.lease_ttl}s\n  grace: {args.lease_grace}s\n"
        f"heartbeat_interval: {args.heartbeat}s\n"
    )


async def _until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> float:
    """Poll ``predicate`` (sync or async) until true; return the wall time (``time.time()``) it first held."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def _events(redis: aioredis.Redis, keys: Keys, since_ms: int = 0) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(keys.events, min=f"{since_ms}-0", max="+")
    return [dict(data) for _, data in entries]


def _first(events: list[dict[str, str]], kind: str, **match: str) -> float | None:
    for event in events:
        if event.get("kind") == kind and all(event.get(k) == v for k, v in match.items()):
            return float(event["ts"])
    return None


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class Deployment:
    """One repeat: a fleet in namespace ``ns`` and one broker process."""

    def __init__(self, args: argparse.Namespace, redis_url: str, namespace: str, workdir: Path) -> None:
        self.args = args
        self.keys = Keys(namespace)
        self.redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
        self.fleet = FakeFleet(redis_url, count=args.hosts, capacity=args.capacity, namespace=namespace,
                               lease_ttl=args.lease_ttl, heartbeat=args.heartbeat, secret=SECRET)
        self.clusters = -(-args.shards // args.per_cluster)
        self.config = workdir / f"{namespace}.yaml"
        self.config.write_text(broker_yaml(args, redis_url, namespace))
        self.log = workdir / f"{namespace}-broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def spawn_broker(self) -> psutil.Process:
        argv = [sys.executable, "-m", "letsfrag", "--log-format", "plain", "broker", str(self.config),
                "--broker-id", "bench"]
        env = {**os.environ, SECRET_ENV: SECRET}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return psutil.Process(self.process.pid)

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the broker exited with code {self.process.returncode}; its log ends:\n{tail}")

    async def assigned(self) -> int:
        self._check_alive()
        return int(await self.redis.hlen(self.keys.assignment))  # type: ignore[misc]

    async def cold_start(self) -> tuple[dict[str, Any], psutil.Process]:
        await self.fleet.start()
        spawned = time.time()
        proc = self.spawn_broker()
        timeout = self.args.timeout
        assigned = await _until(lambda: self._full(), timeout, "all clusters assigned")
        startup_cpu = _cpu(proc)
        running = await _until(lambda: self.fleet.running == self.clusters, timeout, "every cluster running", 0.05)
        events = await _events(self.redis, self.keys)
        start, ready = _first(events, "startup"), _first(events, "ready")
        if start is None or ready is None:
            raise RuntimeError("the broker wrote no startup/ready event")
        return {"spawn_to_assigned": assigned - spawned, "startup_to_ready": ready - start,
                "assigned_to_running": running - assigned, "startup_cpu_seconds": startup_cpu,
                "grant_events": sum(1 for e in events if e.get("kind") == "cluster_granted")}, proc

    async def _full(self) -> bool:
        return await self.assigned() >= self.clusters

    async def steady_cpu(self, proc: psutil.Process) -> dict[str, float]:
        await asyncio.sleep(self.args.settle)  # a measurement window, not synchronisation
        cpu0, wall0 = _cpu(proc), time.monotonic()
        await asyncio.sleep(self.args.cpu_window)
        self._check_alive()
        cpu1, wall1 = _cpu(proc), time.monotonic()
        percent = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
        ticks = (wall1 - wall0) / self.args.heartbeat
        return {"cpu_percent": percent, "cpu_ms_per_tick": 1000.0 * (cpu1 - cpu0) / ticks,
                "rss_mb": proc.memory_info().rss / 2**20}

    async def lose_host(self) -> dict[str, Any]:
        live = [h for h in self.fleet.hosts.values() if h.alive]
        victim = max(live, key=lambda h: (len(h.running), h.id))
        held = sorted(victim.running)
        since_ms = int(time.time() * 1000)
        killed = time.time()
        await victim.kill()

        async def reassigned() -> bool:
            self._check_alive()
            grants: Any = await self.redis.hgetall(self.keys.assignment)  # type: ignore[misc]
            return all(str(c) in grants and f'"host": "{victim.id}"' not in grants[str(c)] for c in held)

        timeout = self.args.lease_ttl + self.args.lease_grace + self.args.timeout
        moved_at = await _until(reassigned, timeout, f"{victim.id}'s clusters reassigned", 0.05)
        rerun = await _until(lambda: self.fleet.running == self.clusters, self.args.timeout,
                             "every cluster running again", 0.05)
        events: list[dict[str, str]] = []

        def complete() -> bool:
            return _first(events, "host_lost", host=victim.id) is not None and all(
                _first(events, "cluster_moved", cluster=str(c)) is not None for c in held)

        async def logged() -> bool:
            events[:] = await _events(self.redis, self.keys, since_ms)
            return complete()

        await _until(logged, self.args.timeout, "host_lost and cluster_moved events", 0.05)
        lost = _first(events, "host_lost", host=victim.id)
        moves = [_first(events, "cluster_moved", cluster=str(c)) for c in held]
        assert lost is not None and all(m is not None for m in moves)
        first, last = min(m for m in moves if m), max(m for m in moves if m)
        return {"victim": victim.id, "clusters": len(held), "decision_ms": 1000.0 * (first - lost),
                "decision_last_ms": 1000.0 * (last - lost), "kill_to_reassigned": moved_at - killed,
                "reassigned_to_running": rerun - moved_at}

    async def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        await self.fleet.close()
        await self.redis.aclose()


async def run_once(args: argparse.Namespace, redis_url: str, index: int, workdir: Path) -> dict[str, Any]:
    """One fresh deployment: cold start, steady-state CPU, one host lost."""
    deployment = Deployment(args, redis_url, f"bench-broker-{index}", workdir)
    try:
        cold, proc = await deployment.cold_start()
        steady = await deployment.steady_cpu(proc)
        loss = await deployment.lose_host()
        events = await _events(deployment.redis, deployment.keys)
        return {**cold, **steady, **loss, "violations": list(deployment.fleet.ledger.violations),
                "assignment_reads": deployment.fleet.view.fetches,
                "rebalance_steps": sum(1 for e in events if e.get("kind") == "rebalance_step")}
    finally:
        await deployment.close()
        with contextlib.suppress(Exception):
            async with aioredis.Redis.from_url(redis_url) as client:
                await client.flushall()


async def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="letsfrag-bench-broker-"))
    samples: list[dict[str, Any]] = []
    try:
        with RedisServer() as server:
            for index in range(args.repeats):
                sample = await run_once(args, server.url, index, workdir)
                samples.append(sample)
                print(f"  repeat {index + 1}: first assignment {sample['spawn_to_assigned']:.2f} s "
                      f"(broker {sample['startup_to_ready'] * 1000:.0f} ms), CPU {sample['cpu_percent']:.1f} %, "
                      f"decision {sample['decision_ms']:.0f} ms", file=sys.stderr)
    finally:
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    def of(name: str, scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
        return spread([s[name] * scale for s in samples], digits)

    cpu, decision = of("cpu_percent", digits=2), of("decision_ms", digits=1)
    violations = [v for s in samples for v in s["violations"]]
    clusters = -(-args.shards // args.per_cluster)
    return {
        "goal": {"cpu_percent": CPU_GOAL, "decision_ms": DECISION_GOAL_MS},
        "met": cpu["median"] < CPU_GOAL and decision["median"] < DECISION_GOAL_MS and not violations,
        "cpu_percent": cpu, "cpu_ms_per_tick": of("cpu_ms_per_tick", digits=1), "rss_mb": of("rss_mb", digits=1),
        "first_assignment_seconds": of("spawn_to_assigned"),
        "broker_startup_to_ready_ms": of("startup_to_ready", 1000, 1),
        "startup_cpu_seconds": of("startup_cpu_seconds"), "assigned_to_running_seconds": of("assigned_to_running"),
        "decision_ms": decision, "decision_last_event_ms": of("decision_last_ms", digits=1),
        "kill_to_reassigned_seconds": of("kill_to_reassigned"), "moved_clusters": [s["clusters"] for s in samples],
        "double_runs": len(violations), "violation_examples": violations[:5],
        "rebalance_steps": [s["rebalance_steps"] for s in samples],
        "parameters": {"hosts": args.hosts, "capacity": args.capacity, "shards": args.shards,
                       "shards_per_cluster": args.per_cluster, "clusters": clusters,
                       "max_concurrency": args.max_concurrency, "heartbeat_interval": args.heartbeat,
                       "lease_ttl": args.lease_ttl, "lease_grace": args.lease_grace,
                       "cpu_window": args.cpu_window, "repeats": args.repeats},
    }


def _print(result: dict[str, Any]) -> None:
    p = result["parameters"]
    body = [
        ["first assignment: broker spawn → all assigned", fmt_spread(result["first_assignment_seconds"]), "report"],
        ["  the broker's part: startup → ready event", fmt_spread(result["broker_startup_to_ready_ms"], "ms", 0),
         "report"],
        ["steady-state CPU (of one core)", fmt_spread(result["cpu_percent"], "%", 1), f"< {CPU_GOAL:g} %"],
        ["  CPU per tick", fmt_spread(result["cpu_ms_per_tick"], "ms", 1), "—"],
        ["  RSS", fmt_spread(result["rss_mb"], "MiB", 0), "—"],
        ["host lost → grants written (first cluster_moved)", fmt_spread(result["decision_ms"], "ms", 1),
         f"< {DECISION_GOAL_MS:g} ms"],
        ["  host lost → last cluster_moved event", fmt_spread(result["decision_last_event_ms"], "ms", 1), "—"],
        ["  kill → all reassigned", fmt_spread(result["kill_to_reassigned_seconds"]),
         f"ttl + grace ({p['lease_ttl'] + p['lease_grace']:g} s) ± 1 heartbeat"],
    ]
    print_rich_table(f"broker_scale: {p['hosts']} hosts, {p['shards']} shards in {p['clusters']} clusters "
                     f"(median, min–max of {p['repeats']})", ["measure", "measured", "goal"], body)
    print(f"double runs {result['double_runs']}, clusters moved per loss {result['moved_clusters']}; goals "
          f"{'met' if result['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--capacity", type=int, default=8, help="clusters per host")
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--per-cluster", type=int, default=8)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--heartbeat", type=float, default=2.0, help="heartbeat interval in seconds")
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--lease-grace", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after every cluster runs, before the "
                        "CPU window")
    parser.add_argument("--cpu-window", type=float, default=12.0, help="seconds of steady-state CPU measurement")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each phase")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (broker logs)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/broker_scale.json")
    args = parser.parse_args(argv)
    if min(args.repeats, args.hosts, args.capacity, args.shards, args.per_cluster, args.max_concurrency) < 1:
        parser.error("--repeats, --hosts, --capacity, --shards, --per-cluster and --max-concurrency must be ≥ 1")
    if args.hosts < 2:
        parser.error("--hosts must be ≥ 2 (one is lost)")
    clusters = -(-args.shards // args.per_cluster)
    if (args.hosts - 1) * args.capacity < clusters:
        parser.error(f"{args.hosts - 1} hosts of capacity {args.capacity} cannot hold {clusters} clusters after "
                     "one is lost: raise --capacity or --hosts")
    if args.heartbeat * 2 >= args.lease_ttl:
        parser.error("--heartbeat must be < --lease-ttl / 2")
    result = asyncio.run(run_benchmark(args))
    _print(result)
    if not args.no_write:
        p = result["parameters"]
        path = write_result(
            "broker_scale", result,
            what=f"broker with {p['hosts']} fake hosts, {p['shards']:,} shards / {p['clusters']:,} clusters "
                 f"(heartbeat {p['heartbeat_interval']:g} s, lease {p['lease_ttl']:g}+{p['lease_grace']:g} s): "
                 "steady CPU, first assignment, host-lost decision",
            measured=f"CPU {fmt_spread(result['cpu_percent'], '%', 1)}; first assignment "
                     f"{fmt_spread(result['first_assignment_seconds'])}; decision "
                     f"{fmt_spread(result['decision_ms'], 'ms', 1)}",
            goal=f"CPU < {CPU_GOAL:g} % of a core; decision < {DECISION_GOAL_MS:g} ms",
            met=result["met"], command=COMMAND)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
