"""Dashboard cost at scale: 50 hosts, 1,000 clusters, 16,000 shards.

Measures the CPU time (this process) of one snapshot read and one table refresh of ``letsfrag-top`` (goal:
< 50 ms together), over repeats where the clock advances 1 s so every age cell changes (the worst case), and
the app's RSS. Prints a table and writes ``benchmarks/results/tui.json``. Run: ``python -m benchmarks.tui``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.seed import NOW, seed  # noqa: E402

from letsfrag.clock import FakeClock  # noqa: E402
from letsfrag.connection import create_redis  # noqa: E402
from letsfrag.redis_server import RedisServer  # noqa: E402
from letsfrag.tui.app import LetsfragTop  # noqa: E402
from letsfrag.tui.widgets.tables import ClustersTable  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "tui.json"
GOAL_MS = 50.0


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples), 2), "min_ms": round(min(samples), 2),
            "max_ms": round(max(samples), 2)}


async def measure(hosts: int, clusters: int, per: int, repeats: int) -> dict[str, Any]:
    with RedisServer() as server:
        redis = create_redis(server.url)
        started = time.perf_counter()
        await seed(redis, hosts=hosts, clusters=clusters, shards_per_cluster=per, failed=(4, 77), unassigned=(999,),
                   events=200)
        seed_s = time.perf_counter() - started
        await redis.aclose()
        clock = FakeClock(wall=NOW)
        app = LetsfragTop(server.url, clock=clock, refresh=3600, address="bench")
        reads: list[float] = []
        refreshes: list[float] = []
        async with app.run_test(size=(200, 60)) as pilot:
            while app.reads < 1:
                await pilot.pause(0.05)
            await pilot.pause()
            assert len(app.main_screen.query_one("#clusters", ClustersTable).row_keys) == clusters
            for _ in range(repeats):
                clock.advance(1.0)
                t0 = time.process_time()
                await app.source.read()
                t1 = time.process_time()
                app.main_screen.refresh_view(force=True)
                await pilot.pause()
                t2 = time.process_time()
                reads.append((t1 - t0) * 1000)
                refreshes.append((t2 - t1) * 1000)
            rss = psutil.Process().memory_info().rss
    totals = [a + b for a, b in zip(reads, refreshes, strict=True)]
    return {
        "deployment": {"hosts": hosts, "clusters": clusters, "shards": clusters * per},
        "repeats": repeats, "seed_seconds": round(seed_s, 2),
        "snapshot_read": _stats(reads), "table_refresh": _stats(refreshes), "total": _stats(totals),
        "goal_ms": GOAL_MS, "meets_goal": statistics.median(totals) < GOAL_MS,
        "app_rss_mib": round(rss / 2**20, 1),
    }


def render(result: dict[str, Any]) -> str:
    d = result["deployment"]
    lines = [f"letsfrag-top at {d['hosts']} hosts / {d['clusters']} clusters / {d['shards']} shards "
             f"({result['repeats']} repeats, CPU time of this process)",
             f"{'step':<16}{'median':>10}{'min':>10}{'max':>10}"]
    for name in ("snapshot_read", "table_refresh", "total"):
        s = result[name]
        lines.append(f"{name:<16}{s['median_ms']:>8.1f}ms{s['min_ms']:>8.1f}ms{s['max_ms']:>8.1f}ms")
    verdict = "meets" if result["meets_goal"] else "MISSES"
    lines.append(f"goal < {result['goal_ms']:.0f} ms per refresh: {verdict};  app RSS {result['app_rss_mib']} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--shards-per-cluster", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.hosts, args.clusters, args.shards_per_cluster, args.repeats))
    print(render(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def run(args: argparse.Namespace | None = None) -> int:
    """Entry for ``letsfrag bench tui``."""
    return main([])


if __name__ == "__main__":
    sys.exit(main())
