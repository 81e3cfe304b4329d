"""Reshard: 16 → 32 shards on 2 hosts under traffic — total time against the identify limit, overlap, losses.

Run ``python -m benchmarks.reshard [--repeats 3]`` from the repository root. Each repeat starts a fresh
deployment (``letsfrag.lab.rehearsal``: redis-server, the simulator, ``letsfrag broker``, two ``letsfrag supervise``
running ``examples/bot.py``; 16 shards in 4 clusters of 4, ``max_concurrency`` 4, identify window 1 s), waits for
all READY, sends 20 events a second at the simulator (half ``!ping``, half member joins, each answered by the
bot), runs ``letsfrag reshard --shards 32`` and measures:

* **total**: the command's start → its exit (generation 2 prepared, switched, generation 1 retired);
* **limit**: ``ceil(32 / max_concurrency) × window``, the physical limit of the new sessions' IDENTIFYs;
* **prepare**: the broker's ``reshard_started`` → ``reshard_switched`` (the new processes start, identify through
  the global queue and fill their caches, gated);
* **overlap**: ``reshard_started`` → ``reshard_done``: how long both generations' processes ran side by side
  (prepare, then the graceful stop of generation 1 and the removal of its keys);
* **lost** (events sent, never answered after a settle time) and **twice** (answered more than once), identify
  violations.

Goal (issue 16): total ≤ 1.5 × the limit, 0 lost, 0 twice. Writes ``benchmarks/results/reshard.json``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.failover import handling, poll
from benchmarks.report import (
    fmt_spread,
    print_rich_table,
    repeat,
    spread,
    traffic_arguments,
    traffic_outcome,
    write_result,
)
from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings

COMMAND = "python -m benchmarks.reshard"
#: the goal: total time at most this many times the identify limit
GOAL_FACTOR = 1.5
#: seconds between the polls of a phase
POLL = 0.05


def _settings(args: argparse.Namespace) -> RehearsalSettings:
    clusters, new_clusters = (math.ceil(n / args.per_cluster) for n in (args.shards, args.to))
    # each host holds half the old clusters and receives half the new ones during the overlap
    capacity = math.ceil(clusters / 2) + math.ceil(new_clusters / 2)
    return RehearsalSettings(hosts=2, shards=args.shards, shards_per_cluster=args.per_cluster,
                             max_concurrency=args.max_concurrency, identify_window=args.window, lease_ttl=4.0,
                             lease_grace=1.0, heartbeat_interval=1.0, guilds_per_shard=4, capacity=capacity,
                             rebalance="manual", namespace="bench-reshard")


def _event_times(deployment: Rehearsal, since: float) -> dict[str, float]:
    """The wall time of each reshard event after ``since``."""
    return {e.kind: e.ts for e in deployment.events() if e.kind.startswith("reshard_") and e.ts >= since}


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One deployment, one reshard under traffic."""
    settings = _settings(args)
    deployment = Rehearsal(settings, workdir)
    client: redis.Redis | None = None
    try:
        deployment.start()
        client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
        poll(lambda: len(deployment.assignment(client)) == settings.clusters and deployment.all_ready(),
             args.timeout, "all shards READY before the reshard", interval=0.2)
        deployment.sim_post("/_sim/reset")
        deployment.sim_post(f"/_sim/traffic?rate={args.rate}&joins=0.5")
        poll(lambda: handling(deployment)["answered_once"] >= 10, 30, "traffic answered", POLL)
        wall_start, started = time.time(), time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "letsfrag", "reshard", "--shards", str(args.to), "--timeout",
             f"{args.timeout:g}s", "--redis", deployment.redis_url, "--namespace", settings.namespace],
            env={**deployment.env(), "LETSFRAG_SECRET": deployment.secret}, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=args.timeout + 150, check=False)
        total = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"letsfrag reshard exited {done.returncode}: {done.stdout}{done.stderr}")
        sent = handling(deployment)["sent"]
        poll(lambda: handling(deployment)["sent"] >= sent + args.rate, 30, "a second of traffic after", POLL)
        deployment.sim_post("/_sim/traffic/stop")
        poll(lambda: handling(deployment)["pending"] == 0, 30, "no pending event", POLL)
        stats = deployment.sim_stats()
        sessions = stats.get("shard_counts", {})
        times = _event_times(deployment, wall_start - 1.0)
        for kind in ("reshard_started", "reshard_switched", "reshard_done"):
            if kind not in times:
                raise RuntimeError(f"no {kind} event: {sorted(times)}")
        return {
            "total": total, "prepare": times["reshard_switched"] - times["reshard_started"],
            "overlap": times["reshard_done"] - times["reshard_started"],
            **traffic_outcome(stats["handling"]), "violations": int(stats["identify_violations"]["total"]),
            "duplicates": int(stats["duplicate_sessions"]["count"]),
            "final_sessions": {count: int(entry["sessions"]) for count, entry in sessions.items()},
        }
    finally:
        if client is not None:
            client.close()
        deployment.close()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    samples = repeat("reshard", args, run_once, lambda sample: (
        f"total {sample['total']:.2f} s, prepare {sample['prepare']:.2f} s, overlap {sample['overlap']:.2f} s, "
        f"lost {sample['lost']}, twice {sample['twice']}"))
    limit = math.ceil(args.to / args.max_concurrency) * args.window
    lost, twice = max(s["lost"] for s in samples), max(s["twice"] for s in samples)
    violations = max(s["violations"] for s in samples)
    duplicates = max(s["duplicates"] for s in samples)
    alone = all(s["final_sessions"] == {str(args.to): args.to} for s in samples)
    total = spread([s["total"] for s in samples])
    met = (lost == 0 and twice == 0 and violations == 0 and duplicates == 0 and alone
           and total["median"] <= GOAL_FACTOR * limit)
    return {
        "goal": {"text": f"total ≤ {GOAL_FACTOR:g} × the identify limit, 0 lost, 0 twice", "limit_seconds": limit,
                 "total_seconds": round(GOAL_FACTOR * limit, 3)},
        "met": met, "total": total, "ratio_to_limit": round(total["median"] / limit, 3),
        "prepare": spread([s["prepare"] for s in samples]), "overlap": spread([s["overlap"] for s in samples]),
        "lost": lost, "twice": twice, "sent": [s["sent"] for s in samples], "identify_violations": violations,
        "duplicate_sessions": duplicates, "one_session_per_new_shard": alone,
        "per_repeat": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()} for s in samples],
        "parameters": {"hosts": 2, "shards": args.shards, "to": args.to, "shards_per_cluster": args.per_cluster,
                       "max_concurrency": args.max_concurrency, "identify_window": args.window,
                       "events_per_second": args.rate, "joins_share": 0.5, "repeats": args.repeats},
    }


def _print(result: dict[str, Any]) -> None:
    p, goal = result["parameters"], result["goal"]
    body = [
        ["total (command start → exit)", f"≤ {goal['total_seconds']:.1f} s ({GOAL_FACTOR:g} × limit "
         f"{goal['limit_seconds']:g} s)", fmt_spread(result["total"])],
        ["prepare (started → switched)", "report", fmt_spread(result["prepare"])],
        ["overlap (started → old retired)", "report", fmt_spread(result["overlap"])],
        ["lost", "0", str(result["lost"])],
        ["answered twice", "0", str(result["twice"])],
    ]
    print_rich_table(f"reshard: {p['shards']} → {p['to']} shards on 2 hosts, max_concurrency {p['max_concurrency']}, "
                     f"window {p['identify_window']:g} s, {p['events_per_second']:g} events/s (median, min–max)",
                     ["measure", "goal", "measured"], body)
    print(f"identify violations {result['identify_violations']}, duplicate sessions {result['duplicate_sessions']}, "
          f"one session per new shard: {result['one_session_per_new_shard']}; "
          f"goal {'met' if result['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16, help="shards before the reshard (default 16)")
    parser.add_argument("--to", type=int, default=32, help="shards after it (default 32)")
    traffic_arguments(parser, per_cluster=4, max_concurrency=4, timeout=120.0,
                      timeout_help="seconds the new generation has to be ready", result_file="reshard.json")
    args = parser.parse_args(argv)
    if min(args.repeats, args.shards, args.to, args.per_cluster, args.max_concurrency) < 1 or args.rate <= 0:
        parser.error("--repeats, --shards, --to, --per-cluster, --max-concurrency and --rate must be positive")
    try:
        result = run_benchmark(args)
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print(result)
    if not args.no_write:
        p, goal = result["parameters"], result["goal"]
        path = write_result(
            "reshard", result,
            what=f"reshard {p['shards']} → {p['to']} shards on 2 hosts (clusters of {p['shards_per_cluster']}, "
                 f"max_concurrency {p['max_concurrency']}, window {p['identify_window']:g} s) under "
                 f"{p['events_per_second']:g} events/s (pings and member joins)",
            measured=f"total {fmt_spread(result['total'])} ({result['ratio_to_limit']:.2f} × the limit "
                     f"{goal['limit_seconds']:g} s); prepare {fmt_spread(result['prepare'])}; overlap "
                     f"{fmt_spread(result['overlap'])}; lost {result['lost']}, twice {result['twice']}",
            goal=f"total ≤ {goal['total_seconds']:g} s ({GOAL_FACTOR:g} × ceil({p['to']}/{p['max_concurrency']}) × "
                 f"{p['identify_window']:g} s), 0 lost, 0 twice",
            met=result["met"], command=COMMAND, results=args.results)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
