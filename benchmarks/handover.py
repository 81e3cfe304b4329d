"""Handover: a rolling restart of a host with 4 clusters × 4 shards under traffic — wall time, overlap, losses.

Run ``python -m benchmarks.handover [--repeats 3]`` from the repository root. Each repeat starts a fresh
deployment (``letsfrag.lab.rehearsal``: redis-server, the simulator, ``letsfrag broker``, two ``letsfrag supervise``
running ``examples/bot.py``; 32 shards in 8 clusters of 4, so each host runs 4 clusters), waits for all READY,
sends 20 events a second at the simulator (half ``!ping``, half member joins, each answered by the bot), runs
``letsfrag restart --host h0 --rolling`` and measures:

* **wall time**: the command's start → its exit (every cluster of ``h0`` handed over, one at a time);
* **overlap per cluster**: the longest announced overlap of the cluster's shards at the simulator (two live
  sessions of a shard, the new one opened by the successor with ``?letsfrag_handover=<epoch>``): how long the
  old and the new process both held the shard;
* **identifies spent**: IDENTIFYs the simulator accepted during the restart (a handover costs one per shard);
* **lost** (events sent, never answered after a settle time) and **twice** (answered more than once).

Goal (issue 15): 0 lost, 0 twice, overlap per cluster ≤ identify time of its shards + 1 s, identifies = shards
moved, 0 identify violations, 0 duplicate (unannounced) sessions. Identify time of a cluster's shards is
``(most of its shards in one bucket - 1) × window``. Writes ``benchmarks/results/handover.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.failover import handling, identify_time, poll
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

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python -m benchmarks.handover"
HOST = "h0"
#: overlap allowance on top of the identify time (issue 15's goal)
OVERLAP_SLACK = 1.0
#: seconds between the polls of a phase
POLL = 0.05


def _settings(args: argparse.Namespace) -> RehearsalSettings:
    return RehearsalSettings(hosts=2, shards=2 * args.clusters * args.per_cluster, shards_per_cluster=args.per_cluster,
                             max_concurrency=args.max_concurrency, identify_window=args.window, lease_ttl=4.0,
                             lease_grace=1.0, heartbeat_interval=1.0, guilds_per_shard=4, capacity=args.clusters,
                             namespace="bench-handover")


def _quiet(deployment: Rehearsal, client: redis.Redis) -> bool:
    """No handover in progress and one live session per shard, every shard READY."""
    return not client.hlen(f"{deployment.settings.namespace}:handover") and deployment.all_ready()


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One deployment, one rolling restart of ``h0`` under traffic."""
    settings = _settings(args)
    deployment = Rehearsal(settings, workdir)
    client: redis.Redis | None = None
    try:
        deployment.start()
        client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
        poll(lambda: len(deployment.assignment(client)) == settings.clusters and _quiet(deployment, client),
              args.timeout, "all shards READY before the restart", interval=0.2)
        clusters = sorted(cid for cid, (host, _) in deployment.assignment(client).items() if host == HOST)
        shards = {cid: [s for s in range(cid * settings.shards_per_cluster, (cid + 1) * settings.shards_per_cluster)
                        if s < settings.shards] for cid in clusters}
        deployment.sim_post("/_sim/reset")
        deployment.sim_post(f"/_sim/traffic?rate={args.rate}&joins=0.5")
        poll(lambda: handling(deployment)["answered_once"] >= 10, 30, "traffic answered", POLL)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "letsfrag", "restart", "--host", HOST, "--rolling", "--timeout",
             f"{args.timeout:g}s", "--redis", deployment.redis_url, "--namespace", settings.namespace],
            env={**deployment.env(), "LETSFRAG_SECRET": deployment.secret}, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=args.timeout + 30, check=False)
        wall = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"letsfrag restart --rolling exited {done.returncode}: {done.stdout}{done.stderr}")
        poll(lambda: _quiet(deployment, client), args.timeout, "quiet after the restart", POLL)
        identifies = int(deployment.sim_stats()["identifies"]["total"])
        sent = handling(deployment)["sent"]
        poll(lambda: handling(deployment)["sent"] >= sent + args.rate, 30, "a second of traffic after", POLL)
        deployment.sim_post("/_sim/traffic/stop")
        poll(lambda: handling(deployment)["pending"] == 0, 30, "no pending event", POLL)
        stats = deployment.sim_stats()
        per_shard = {int(s): float(v) for s, v in stats["announced_overlaps"]["longest_per_shard"].items()}
        overlap = {cid: max((per_shard.get(s, 0.0) for s in ids), default=0.0) for cid, ids in shards.items()}
        bound = {cid: identify_time(ids, settings.max_concurrency, settings.identify_window) + OVERLAP_SLACK
                 for cid, ids in shards.items()}
        return {
            "wall": wall, "overlap": overlap, "overlap_bound": bound, "identifies": identifies,
            "shards_moved": sum(len(ids) for ids in shards.values()), "clusters": clusters,
            **traffic_outcome(stats["handling"]), "violations": int(stats["identify_violations"]["total"]),
            "duplicates": int(stats["duplicate_sessions"]["count"]),
            "over_deadline": int(stats["announced_overlaps"]["over_deadline"]),
        }
    finally:
        if client is not None:
            client.close()
        deployment.close()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    samples = repeat("handover", args, run_once, lambda sample: (
        f"wall {sample['wall']:.2f} s, overlap {', '.join(f'{v:.2f}' for v in sample['overlap'].values())} s, "
        f"identifies {sample['identifies']}, lost {sample['lost']}, twice {sample['twice']}"))
    overlaps = [v for s in samples for v in s["overlap"].values()]
    bound = max(v for s in samples for v in s["overlap_bound"].values())
    moved = samples[0]["shards_moved"]
    lost, twice = max(s["lost"] for s in samples), max(s["twice"] for s in samples)
    identifies = max(s["identifies"] for s in samples)
    violations = max(s["violations"] for s in samples)
    duplicates = max(s["duplicates"] for s in samples)
    overlap_met = all(v <= s["overlap_bound"][cid] for s in samples for cid, v in s["overlap"].items())
    met = (lost == 0 and twice == 0 and overlap_met and all(s["identifies"] == moved for s in samples)
           and violations == 0 and duplicates == 0)
    return {
        "goal": {"text": "0 lost, 0 twice, overlap per cluster ≤ identify time of its shards + 1 s, identifies = "
                         "shards moved, 0 violations, 0 duplicate sessions", "overlap_seconds": round(bound, 3)},
        "met": met, "wall": spread([s["wall"] for s in samples]), "overlap_per_cluster": spread(overlaps),
        "identifies": identifies, "shards_moved": moved, "lost": lost, "twice": twice,
        "sent": [s["sent"] for s in samples], "identify_violations": violations, "duplicate_sessions": duplicates,
        "over_deadline": max(s["over_deadline"] for s in samples),
        "per_repeat": [{"wall": round(s["wall"], 3), "overlap": {str(c): round(v, 3) for c, v in s["overlap"].items()},
                        "identifies": s["identifies"], "lost": s["lost"], "twice": s["twice"], "sent": s["sent"]}
                       for s in samples],
        "parameters": {"hosts": 2, "clusters_on_host": args.clusters, "shards_per_cluster": args.per_cluster,
                       "max_concurrency": args.max_concurrency, "identify_window": args.window,
                       "events_per_second": args.rate, "joins_share": 0.5, "repeats": args.repeats},
    }


def _print(result: dict[str, Any]) -> None:
    p = result["parameters"]
    body = [
        ["wall time (command start → exit)", "report", fmt_spread(result["wall"])],
        ["overlap per cluster", f"≤ {result['goal']['overlap_seconds']:.2f} s",
         fmt_spread(result["overlap_per_cluster"])],
        ["identifies spent", f"= {result['shards_moved']}", str(result["identifies"])],
        ["lost", "0", str(result["lost"])],
        ["answered twice", "0", str(result["twice"])],
    ]
    print_rich_table(f"handover: rolling restart of a host with {p['clusters_on_host']} clusters × "
                     f"{p['shards_per_cluster']} shards, {p['events_per_second']:g} events/s (median, min–max)",
                     ["measure", "goal", "measured"], body)
    print(f"identify violations {result['identify_violations']}, duplicate sessions {result['duplicate_sessions']}; "
          f"goal {'met' if result['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=4, help="clusters on the restarted host (default 4)")
    traffic_arguments(parser, per_cluster=4, max_concurrency=2, timeout=120.0, result_file="handover.json")
    args = parser.parse_args(argv)
    if min(args.repeats, args.clusters, args.per_cluster, args.max_concurrency) < 1 or args.rate <= 0:
        parser.error("--repeats, --clusters, --per-cluster, --max-concurrency and --rate must be positive")
    try:
        result = run_benchmark(args)
    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print(result)
    if not args.no_write:
        p = result["parameters"]
        path = write_result(
            "handover", result,
            what=f"rolling restart of a host with {p['clusters_on_host']} clusters × {p['shards_per_cluster']} shards "
                 f"under {p['events_per_second']:g} events/s (pings and member joins)",
            measured=f"wall {fmt_spread(result['wall'])}; overlap per cluster "
                     f"{fmt_spread(result['overlap_per_cluster'])}; {result['identifies']} identifies for "
                     f"{result['shards_moved']} shards; lost {result['lost']}, twice {result['twice']}",
            goal=f"0 lost, 0 twice, overlap ≤ {result['goal']['overlap_seconds']:.1f} s, identifies = shards moved",
            met=result["met"], command=COMMAND, results=args.results)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
