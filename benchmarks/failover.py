"""Failover: a host is SIGKILLed; how long until all its clusters are READY on the other host.

Run ``python -m benchmarks.failover [--repeats 3]`` from the repository root. Each repeat starts a fresh
deployment (``letsfrag.lab.rehearsal``: redis-server, the simulator, ``letsfrag broker``, two ``letsfrag supervise``
running ``examples/bot.py``; 32 shards, 8 per cluster), waits for all READY, then SIGKILLs host ``h0`` with
its cluster processes (a machine dying) and measures, separately:

* **detection**: kill → every cluster of ``h0`` is assigned to another host in Redis (``{ns}:assignment``);
* **re-identify**: that moment → every shard READY again at the simulator (one session each);
* **replay**: kill → the last ``session_replayed`` event (the new owners RESUMEd the dead sessions on side
  connections and handed what the dead host missed to the claims).

Traffic runs throughout (``--rate`` events/s, a ``--joins`` share of them member joins): after the failover the
simulator's handling referee says how many were **lost** (never answered: unanswered or undeliverable) and
how many were answered **twice**; both must be 0.

The bound is ``lease.ttl + lease.grace + identify time``, where identify time is
``(most moved shards in one bucket - 1) × window``; the broker may not move anything before the lease expired
plus the grace, and the moved shards cannot identify faster than their buckets allow. Goal: the total is
≤ 1.2 × that bound, with 0 identify violations, 0 duplicate sessions, 0 lost and 0 twice. Writes
``benchmarks/results/failover.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

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
GOAL_FACTOR = 1.2
COMMAND = "python -m benchmarks.failover"
VICTIM, SURVIVOR = "h0", "h1"


def _settings(args: argparse.Namespace) -> RehearsalSettings:
    return RehearsalSettings(hosts=2, shards=args.shards, shards_per_cluster=args.per_cluster,
                             max_concurrency=args.max_concurrency, identify_window=args.window,
                             lease_ttl=args.lease_ttl, lease_grace=args.lease_grace,
                             heartbeat_interval=args.heartbeat_interval, guilds_per_shard=4,
                             namespace="bench-failover")


def poll(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``predicate`` every ``interval`` seconds until true; return the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def _poll_value(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return value


def handling(deployment: Rehearsal) -> dict[str, int]:
    """The simulator referee's handling counters of ``deployment``."""
    return {k: int(v) for k, v in deployment.sim_stats()["handling"].items()}


def identify_time(shards: list[int], max_concurrency: int, window: float) -> float:
    """Seconds the moved shards need at least: ``(most shards in one bucket - 1) × window``."""
    if not shards:
        return 0.0
    per_bucket = Counter(shard % max_concurrency for shard in shards)
    return (max(per_bucket.values()) - 1) * window


def run_once(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One deployment, one SIGKILL; timings in seconds from the kill."""
    settings = _settings(args)
    deployment = Rehearsal(settings, workdir)
    client: redis.Redis | None = None
    try:
        deployment.start()
        client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
        clusters = settings.clusters
        poll(lambda: len(deployment.assignment(client)) == clusters and deployment.all_ready(), args.timeout,
              "all shards READY before the kill", interval=0.1)
        before = deployment.assignment(client)
        victims = sorted(cid for cid, (host, _) in before.items() if host == VICTIM)
        if not victims:
            raise RuntimeError(f"host {VICTIM} runs no cluster; assignment {before}")
        moved = [s for cid in victims for s in range(cid * settings.shards_per_cluster,
                                                      min(settings.shards, (cid + 1) * settings.shards_per_cluster))]
        violations_before = int(deployment.sim_stats()["identify_violations"]["total"])
        deployment.sim_post("/_sim/reset")
        if args.rate > 0:
            deployment.sim_post(f"/_sim/traffic?rate={args.rate}&joins={args.joins}")
            poll(lambda: handling(deployment)["answered_once"] >= 10, args.timeout, "traffic answered", 0.1)
        killed_wall = time.time()
        killed = time.monotonic()
        deployment.kill_host(VICTIM)

        def reassigned() -> bool:
            now = deployment.assignment(client)
            return all(cid in now and now[cid][0] != VICTIM for cid in victims)

        detected = poll(reassigned, args.timeout, f"{VICTIM}'s clusters reassigned")
        ready = poll(deployment.all_ready, args.timeout, "all shards READY after the failover", interval=0.05)
        after = deployment.assignment(client)
        stats = deployment.sim_stats()

        def replays() -> list[Any]:
            return [e for e in deployment.events() if e.ts >= killed_wall and e.kind in (
                "session_replayed", "replay_refused", "replay_failed")]
        poll(lambda: len(replays()) >= len(moved), args.timeout, "the dead sessions replayed", interval=0.1)
        replayed = [e for e in replays() if e.kind == "session_replayed"]
        replay_done = max(e.ts for e in replayed) - killed_wall if replayed else float("nan")
        if args.rate > 0:
            sent = handling(deployment)["sent"]
            poll(lambda: handling(deployment)["sent"] >= sent + 20, args.timeout, "traffic after the takeover", 0.1)
            deployment.sim_post("/_sim/traffic/stop")
        counts = _poll_value(lambda: (h := handling(deployment))["pending"] == 0 and h, args.timeout,
                             "no pending event at the simulator")
        bound_identify = identify_time(moved, settings.max_concurrency, settings.identify_window)
        return {
            "detection": detected - killed, "reidentify": ready - detected, "total": ready - killed,
            "bound": settings.lease_ttl + settings.lease_grace + bound_identify, "identify_time": bound_identify,
            "moved_clusters": victims, "moved_shards": len(moved),
            "epochs_grew": all(after[c][1] > before[c][1] for c in victims),
            "violations": violations_before + int(deployment.sim_stats()["identify_violations"]["total"]),
            "duplicates": int(stats["duplicate_sessions"]["count"]),
            "replay": replay_done, "replayed_sessions": len(replayed),
            **traffic_outcome(counts),
        }
    finally:
        if client is not None:
            client.close()
        deployment.close()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    samples = repeat("failover", args, run_once, lambda sample: (
        f"detection {sample['detection']:.2f} s, re-identify {sample['reidentify']:.2f} s, total "
        f"{sample['total']:.2f} s, replay {sample['replay']:.2f} s; {sample['sent']} events, lost {sample['lost']}, "
        f"twice {sample['twice']}"))
    bound = max(s["bound"] for s in samples)
    total = spread([s["total"] for s in samples])
    violations = max(s["violations"] for s in samples)
    duplicates = max(s["duplicates"] for s in samples)
    lost = sum(s["lost"] for s in samples)
    twice = sum(s["twice"] for s in samples)
    goal = round(GOAL_FACTOR * bound, 3)
    return {
        "goal": {"text": f"kill → all READY ≤ {GOAL_FACTOR} × (lease.ttl + lease.grace + identify time), "
                         "0 violations, 0 duplicate sessions, 0 events lost, 0 handled twice", "seconds": goal},
        "measured": total,
        "met": total["median"] <= goal and violations == 0 and duplicates == 0 and lost == 0 and twice == 0,
        "bound_seconds": round(bound, 3),
        "detection": spread([s["detection"] for s in samples]),
        "reidentify": spread([s["reidentify"] for s in samples]),
        "identify_time_seconds": round(max(s["identify_time"] for s in samples), 3),
        "moved_shards": samples[0]["moved_shards"], "identify_violations": violations,
        "duplicate_sessions": duplicates, "epochs_grew": all(s["epochs_grew"] for s in samples),
        "replay": spread([s["replay"] for s in samples]),
        "replayed_sessions": min(s["replayed_sessions"] for s in samples),
        "events_sent": sum(s["sent"] for s in samples), "lost": lost, "twice": twice,
        "parameters": {"hosts": 2, "shards": args.shards, "shards_per_cluster": args.per_cluster,
                       "max_concurrency": args.max_concurrency, "identify_window": args.window,
                       "lease_ttl": args.lease_ttl, "lease_grace": args.lease_grace,
                       "heartbeat_interval": args.heartbeat_interval, "repeats": args.repeats,
                       "rate": args.rate, "joins": args.joins},
    }


def _print(result: dict[str, Any]) -> None:
    p = result["parameters"]
    body = [
        ["lease.ttl + lease.grace", f"{p['lease_ttl'] + p['lease_grace']:.2f} s", fmt_spread(result["detection"])],
        ["identify time", f"{result['identify_time_seconds']:.2f} s", fmt_spread(result["reidentify"])],
        ["total", f"{result['bound_seconds']:.2f} s", fmt_spread(result["measured"])],
        ["replay done", "", fmt_spread(result["replay"])],
    ]
    print_rich_table(f"failover: SIGKILL one of 2 hosts, {result['moved_shards']} of {p['shards']} shards move "
                     "(median, min–max)", ["phase", "bound", "measured"], body)
    print(f"identify violations {result['identify_violations']}, duplicate sessions {result['duplicate_sessions']}, "
          f"epochs grew: {result['epochs_grew']}")
    print(f"traffic {p['rate']:g}/s ({p['joins']:.0%} joins): {result['events_sent']} events, lost {result['lost']}, "
          f"handled twice {result['twice']}")
    print(f"goal {result['goal']['text']} (≤ {result['goal']['seconds']:.2f} s): "
          f"{'met' if result['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--lease-ttl", type=float, default=4.0)
    parser.add_argument("--lease-grace", type=float, default=1.0)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--joins", type=float, default=0.3, help="share of the events that are member joins")
    traffic_arguments(parser, per_cluster=8, max_concurrency=16, timeout=90.0,
                      rate_help="events per second during the failover (0: none)")
    args = parser.parse_args(argv)
    if min(args.repeats, args.shards, args.per_cluster, args.max_concurrency) < 1:
        parser.error("--repeats, --shards, --per-cluster and --max-concurrency must be ≥ 1")
    if args.shards <= args.per_cluster:
        parser.error("--shards must exceed --per-cluster so that both hosts run a cluster")
    result = run_benchmark(args)
    _print(result)
    if not args.no_write:
        p = result["parameters"]
        path = write_result(
            "failover", result,
            what=f"SIGKILL 1 of 2 hosts → its clusters READY elsewhere ({p['shards']} shards, lease "
                 f"{p['lease_ttl']:g}+{p['lease_grace']:g} s, window {p['identify_window']:g} s)",
            measured=f"{fmt_spread(result['measured'])} (detection {fmt_spread(result['detection'])}, re-identify "
                     f"{fmt_spread(result['reidentify'])}); bound {result['bound_seconds']:.1f} s; at "
                     f"{p['rate']:g} events/s: {result['lost']} lost, {result['twice']} twice of "
                     f"{result['events_sent']} (replay done {fmt_spread(result['replay'])})",
            goal=f"≤ {GOAL_FACTOR} × bound ({result['goal']['seconds']:.2f} s), 0 violations, 0 lost, 0 twice",
            met=result["met"], command=COMMAND)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
