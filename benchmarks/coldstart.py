"""Cold start of a whole deployment versus the physical limit and the usual alternatives, side by side.

Run ``python -m benchmarks.coldstart [--repeats 3 --baseline-repeats 1]`` from the repository root.

* **letsfrag**: redis-server and the simulator run first; the clock starts when ``letsfrag broker`` and two
  ``letsfrag supervise`` processes are started (``letsfrag.lab.rehearsal``, running ``examples/bot.py`` as
  ``bot.module`` forked from the pre-loaded launcher, ``bot.launcher: fork``) and stops when the simulator counts
  every shard READY. 64 shards, 8 per cluster, max_concurrency 16, window 1 s.
* **letsfrag, bot.launcher: exec**: the same with a fresh interpreter per cluster process.
* **physical limit**: ``(ceil(shards / max_concurrency) - 1) × window``: no deployment can be faster.
* **discord.py default pacing**: the same layout as plain ``discord.AutoShardedClient`` processes (one per
  cluster, all started at once) with discord.py's own ``before_identify_hook`` (5 s between shards, blind to
  ``max_concurrency`` and to the other processes), which is what the JS libraries effectively do.
* **spawn delay**: the seed's way, plain processes started one window per shard apart (``spawnDelay``), each
  pacing only its own buckets.

The simulator only counts identify violations (IDENTIFYs too early for their bucket); each row reports them.
Goal: letsfrag ≤ 1.25 × the limit with 0 violations. Writes ``benchmarks/results/coldstart.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

from benchmarks.report import fmt_spread, print_rich_table, spread, work_root, write_result
from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings, stop_processes

ROOT = Path(__file__).resolve().parent.parent
GOAL_FACTOR = 1.25
COMMAND = "python -m benchmarks.coldstart"
#: the same deployment with ``bot.launcher: exec`` (a fresh interpreter per cluster), measured beside it
EXEC_VARIANT = "letsfrag, bot.launcher: exec"


# --- plain discord.py client process (the baselines) ---------------------------------------------------------
async def _client_main(args: argparse.Namespace) -> None:
    import discord
    import yarl

    discord.http.Route.BASE = args.api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway)
    pacing, mc, window = args.pacing, args.max_concurrency, args.window
    last: dict[int, float] = {}

    class Client(discord.AutoShardedClient):
        async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
            if pacing == "default" or shard_id is None:
                await super().before_identify_hook(shard_id, initial=initial)
                return
            # per-process bucket pacing (what discord.js does inside one process): one IDENTIFY per bucket
            # per window, blind to every other process
            bucket = shard_id % mc
            wait = last.get(bucket, -math.inf) + window - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last[bucket] = time.monotonic()

    first, _, end = args.shard_ids.partition("-")
    intents = discord.Intents.default()
    intents.members = False
    client = Client(shard_ids=list(range(int(first), int(end or first) + 1)), shard_count=args.shard_count,
                    intents=intents, guild_ready_timeout=0.2, chunk_guilds_at_startup=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(client.start(args.token))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await client.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, timeout=5)


# --- measuring ---------------------------------------------------------------------------------------------
def _settings(args: argparse.Namespace, launcher: str = "fork") -> RehearsalSettings:
    return RehearsalSettings(hosts=args.hosts, shards=args.shards, shards_per_cluster=args.per_cluster,
                             max_concurrency=args.max_concurrency, identify_window=args.window,
                             guilds_per_shard=args.guilds_per_shard, namespace="bench-coldstart",
                             launcher=launcher)


#: the deployment's processes by role, for the CPU columns
ROLES = ("broker", "supervisors", "launchers", "clusters")


def cpu_by_role(deployment: Rehearsal) -> dict[str, float]:
    """CPU seconds (user + system) each role of a deployment has used so far: the broker, the supervisors, their
    pre-fork launchers and the cluster processes (children of the supervisors, forked or exec'd)."""
    launchers = set(deployment.launcher_pids())
    used = dict.fromkeys(ROLES, 0.0)
    roots = [("broker", process) for process in deployment.brokers.values()]
    roots += [("supervisors", process) for process in deployment.hosts.values()]
    for role, root in roots:
        for index, process in enumerate(deployment.tree(root)):
            kind = role if index == 0 or role == "broker" else "launchers" if process.pid in launchers else "clusters"
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                used[kind] += times.user + times.system
    return {role: round(seconds, 3) for role, seconds in used.items()}


def _wait_all_ready(deployment: Rehearsal, started: float, timeout: float,
                    on_poll: Callable[[float], None] | None = None,
                    on_stats: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Poll the simulator until every shard is READY; return timings (from ``started``) and referee counts.

    ``on_poll(now)`` runs before every poll (starting delayed processes, watching Redis), ``on_stats(stats)``
    after it with the simulator's counters.
    """
    shards = deployment.settings.shards
    first_ready: float | None = None
    deadline = started + timeout
    while True:
        if on_poll is not None:
            on_poll(time.monotonic())
        stats = deployment.sim_stats()
        if on_stats is not None:
            on_stats(stats)
        now = time.monotonic()
        ready = len(stats.get("shards_ready", []))
        if ready and first_ready is None:
            first_ready = now
        if ready >= shards:
            break
        if now > deadline:
            raise TimeoutError(f"only {ready} of {shards} shards READY after {timeout:.0f}s "
                               f"(logs in {deployment.workdir})")
        time.sleep(0.05)
    assert first_ready is not None
    # the simulator stamps every IDENTIFY on the same monotonic clock as ours (CLOCK_MONOTONIC is system-wide)
    identified = [float(t) for t in stats.get("identified_at", {}).values()]
    return {"seconds": now - started, "first_ready": first_ready - started, "spread": now - first_ready,
            "first_identify": (min(identified) if identified else first_ready) - started,
            "violations": int(stats["identify_violations"]["total"]), "identifies": int(stats["identifies"]["total"]),
            "duplicates": int(stats["duplicate_sessions"]["count"])}


def run_letsfrag(args: argparse.Namespace, workdir: Path, launcher: str = "fork") -> dict[str, Any]:
    """One cold start of broker + supervisors (``bot.launcher``); the clock starts when the broker is spawned."""
    deployment = Rehearsal(_settings(args, launcher), workdir)
    client: redis.Redis | None = None
    try:
        deployment.start_redis()
        deployment.start_sim()
        client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
        key, clusters = f"{deployment.settings.namespace}:assignment", deployment.settings.clusters
        granted: list[float] = []
        cpu_first: list[dict[str, float]] = []

        def watch(now: float) -> None:
            if not granted and client is not None and client.hlen(key) >= clusters:
                granted.append(now - started)

        def first_identify(stats: dict[str, Any]) -> None:  # the first poll that sees an IDENTIFY
            if not cpu_first and stats.get("identified_at"):
                cpu_first.append(cpu_by_role(deployment))

        started = time.monotonic()
        deployment.start_broker("b0")
        for index in range(args.hosts):
            deployment.start_host(f"h{index}")
        sample = _wait_all_ready(deployment, started, args.timeout, watch, first_identify)
        sample["cpu_all_ready"] = cpu_by_role(deployment)
        sample["cpu_first_identify"] = cpu_first[0] if cpu_first else sample["cpu_all_ready"]
        sample["all_granted"] = granted[0] if granted else sample["first_ready"]
        return sample
    finally:
        if client is not None:
            client.close()
        deployment.close()


def run_plain(args: argparse.Namespace, workdir: Path, pacing: str, spawn_delay: float) -> dict[str, Any]:
    """Plain discord.py processes, one per cluster, started ``spawn_delay`` apart."""
    deployment = Rehearsal(_settings(args), workdir)
    clients: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        deployment.start_sim()
        base = deployment.sim_url
        started = time.monotonic()

        def spawn_due(now: float) -> None:
            while len(clients) < deployment.settings.clusters and now >= started + len(clients) * spawn_delay:
                spawn(len(clients))

        def spawn(cid: int) -> None:
            first = cid * args.per_cluster
            last = min(args.shards, first + args.per_cluster) - 1
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.coldstart", "--client", "--api", f"{base}/api/v10",
                 "--gateway", base.replace("http://", "ws://") + "/", "--shard-ids", f"{first}-{last}",
                 "--shard-count", str(args.shards), "--pacing", pacing, "--max-concurrency",
                 str(args.max_concurrency), "--window", str(args.window), "--token", deployment.token],
                cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=deployment.log_file(f"client-{cid}"), start_new_session=True))

        return _wait_all_ready(deployment, started, args.timeout, spawn_due)
    finally:
        stop_processes(clients)
        deployment.close()


def _variant(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seconds_to_all_ready": spread([s["seconds"] for s in samples]),
            "seconds_to_first_ready": spread([s["first_ready"] for s in samples]),
            "first_to_last_ready": spread([s["spread"] for s in samples]),
            "seconds_to_first_identify": spread([s["first_identify"] for s in samples]),
            **({"seconds_to_all_granted": spread([s["all_granted"] for s in samples])}
               if all("all_granted" in s for s in samples) else {}),
            **{f"cpu_{moment}": {role: statistics.median(s[f"cpu_{moment}"][role] for s in samples) for role in ROLES}
               for moment in ("first_identify", "all_ready") if all(f"cpu_{moment}" in s for s in samples)},
            "identify_violations": max(s["violations"] for s in samples),
            "identifies": max(s["identifies"] for s in samples),
            "duplicate_sessions": max(s["duplicates"] for s in samples), "repeats": len(samples)}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    limit = (math.ceil(args.shards / args.max_concurrency) - 1) * args.window
    spawn_delay = args.per_cluster * args.window
    plans: list[tuple[str, Any]] = [("letsfrag", lambda w: run_letsfrag(args, w))] * args.repeats
    plans += [(EXEC_VARIANT, lambda w: run_letsfrag(args, w, "exec"))] * args.repeats
    if not args.skip_baselines:
        plans += [("discord.py default pacing", lambda w: run_plain(args, w, "default", 0.0))] * args.baseline_repeats
        plans += [("spawn delay (1 window per shard)",
                   lambda w: run_plain(args, w, "process", spawn_delay))] * args.baseline_repeats
    samples: dict[str, list[dict[str, Any]]] = {}
    with work_root("coldstart", keep=args.keep) as root:
        for index, (name, run) in enumerate(plans):
            sample = run(root / f"run-{index}")
            samples.setdefault(name, []).append(sample)
            granted = f", all granted {sample['all_granted']:.2f} s" if "all_granted" in sample else ""
            if "cpu_first_identify" in sample:
                granted += f", CPU before the first IDENTIFY {_fmt_cpu(sample['cpu_first_identify'])}"
            print(f"  {name}: {sample['seconds']:.2f} s{granted}, first IDENTIFY {sample['first_identify']:.2f} s, "
                  f"first → last READY {sample['spread']:.2f} s, {sample['violations']} violations (load "
                  f"{os.getloadavg()[0]:.2f})", file=sys.stderr)
    variants = {name: _variant(found) for name, found in samples.items()}
    ours = variants["letsfrag"]
    goal = round(GOAL_FACTOR * limit, 3)
    met = ours["seconds_to_all_ready"]["median"] <= goal and ours["identify_violations"] == 0
    return {
        "goal": {"text": f"≤ {GOAL_FACTOR} × the physical limit with 0 identify violations", "seconds": goal},
        "measured": ours["seconds_to_all_ready"], "met": met, "physical_limit_seconds": round(limit, 3),
        "variants": variants,
        "parameters": {"shards": args.shards, "shards_per_cluster": args.per_cluster, "hosts": args.hosts,
                       "max_concurrency": args.max_concurrency, "identify_window": args.window,
                       "guilds_per_shard": args.guilds_per_shard, "spawn_delay_seconds": spawn_delay,
                       "discord_py_default_identify_sleep": 5.0, "repeats": args.repeats,
                       "baseline_repeats": 0 if args.skip_baselines else args.baseline_repeats},
    }


def _print(result: dict[str, Any]) -> None:
    limit = result["physical_limit_seconds"]
    body = [["physical limit", f"{limit:.2f} s", "", "", "", "—"]]
    for name, variant in result["variants"].items():
        median = variant["seconds_to_all_ready"]["median"]
        first = fmt_spread(variant["seconds_to_first_ready"])
        if "seconds_to_all_granted" in variant:
            first += f"\n(all granted {fmt_spread(variant['seconds_to_all_granted'])})"
        if "seconds_to_first_identify" in variant:
            first += f"\n(first IDENTIFY {fmt_spread(variant['seconds_to_first_identify'])})"
        body.append([name, fmt_spread(variant["seconds_to_all_ready"]), first,
                     fmt_spread(variant["first_to_last_ready"]), f"{median / limit:.2f} ×" if limit else "—",
                     str(variant["identify_violations"])])
    p = result["parameters"]
    print_rich_table(f"cold start: {p['shards']} shards, {p['shards_per_cluster']} per cluster, max_concurrency "
                     f"{p['max_concurrency']}, window {p['identify_window']:g} s (median, min–max)",
                     ["variant", "start → all READY", "start → first READY", "first → last READY", "vs limit",
                      "violations"], body)
    for name, variant in result["variants"].items():
        if "cpu_first_identify" in variant:
            print(f"{name}: CPU (user + system, median) before the first IDENTIFY "
                  f"{_fmt_cpu(variant['cpu_first_identify'])}; until all READY {_fmt_cpu(variant['cpu_all_ready'])}")
    verdict = "met" if result["met"] else "NOT met"
    print(f"goal {result['goal']['text']} (≤ {result['goal']['seconds']:.2f} s): {verdict}")


def _fmt_cpu(used: dict[str, float]) -> str:
    return f"{sum(used.values()):.2f} s (" + ", ".join(f"{role} {used[role]:.2f}" for role in ROLES) + ")"


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The README row (``write_result`` keyword arguments) of a result."""
    ours = result["variants"]["letsfrag"]
    others = "; ".join(f"{name} {v['seconds_to_all_ready']['median']:.1f} s, {v['identify_violations']} violations"
                       for name, v in result["variants"].items() if name != "letsfrag")
    p = result["parameters"]
    return {
        "what": f"broker + {p['hosts']} supervisors start → {p['shards']} shards READY ({p['shards_per_cluster']} "
                f"per cluster, max_concurrency {p['max_concurrency']}, window {p['identify_window']:g} s)",
        "measured": f"{fmt_spread(ours['seconds_to_all_ready'])}, {ours['identify_violations']} violations "
                    f"(identify phase {ours['first_to_last_ready']['median']:.2f} s); limit "
                    f"{result['physical_limit_seconds']:.1f} s" + (f"; {others}" if others else ""),
        "goal": f"≤ {GOAL_FACTOR} × limit ({result['goal']['seconds']:.2f} s), 0 violations",
        "met": result["met"], "command": COMMAND,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coldstart", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="letsfrag cold starts (default 3)")
    parser.add_argument("--baseline-repeats", type=int, default=1,
                        help="runs of each plain discord.py baseline (default 1; they take ~40 s and ~60 s)")
    parser.add_argument("--skip-baselines", action="store_true", help="measure letsfrag only")
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--per-cluster", type=int, default=8)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--window", type=float, default=1.0, help="identify window in seconds")
    parser.add_argument("--guilds-per-shard", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds to wait for all READY per run")
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/coldstart.json")
    # client mode (started by the driver for the baselines)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--shard-ids", default="0", help=argparse.SUPPRESS)
    parser.add_argument("--shard-count", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--pacing", choices=["default", "process"], default="default", help=argparse.SUPPRESS)
    parser.add_argument("--token", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        asyncio.run(_client_main(args))
        return 0
    if min(args.repeats, args.baseline_repeats, args.shards, args.per_cluster, args.max_concurrency) < 1:
        parser.error("--repeats, --baseline-repeats, --shards, --per-cluster and --max-concurrency must be ≥ 1")
    result = run_benchmark(args)
    _print(result)
    if not args.no_write:
        path = write_result("coldstart", result, **summary(result))
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
