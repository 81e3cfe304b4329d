"""Memory per idle cluster process: PSS and USS with ``bot.launcher: fork`` and with ``exec``, in one run.

Run ``python -m benchmarks.memory [--clusters 16 --settle 8]``. For each launcher a local deployment
(``letsfrag.lab.rehearsal``: redis-server, the simulator, ``letsfrag broker``, one ``letsfrag supervise``) runs the
example bot (``examples/bot.py`` as ``bot.module``) in ``--clusters`` clusters of 4 shards and 32 guilds each;
once every shard is READY and ``--settle`` seconds passed, psutil's ``memory_full_info()`` is read for every
cluster process: RSS (shared pages counted whole), PSS (shared pages divided among the sharers) and USS (pages
only that process holds). With ``fork`` the launcher's own PSS is reported too, and added, divided by the
cluster count, to the per-cluster figure the goal is measured on.
Goal: PSS per cluster ≤ 20 MiB with ``fork``. Writes ``benchmarks/results/memory.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.report import print_rich_table, work_root, write_result
from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings

MIB = 1024 * 1024
GOAL_MIB = 20.0
COMMAND = "python -m benchmarks.memory"


def _mib(value: float) -> float:
    return round(value / MIB, 1)


def _measure(pids: list[int]) -> list[dict[str, int]]:
    found = []
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        found.append({"rss": info.rss, "pss": info.pss, "uss": info.uss})
    return found


def run_one(args: argparse.Namespace, workdir: Path, launcher: str) -> dict[str, Any]:
    settings = RehearsalSettings(hosts=1, shards=args.clusters * 4, shards_per_cluster=4, guilds_per_shard=8,
                                 max_concurrency=16, identify_window=1.0, namespace="bench-memory",
                                 launcher=launcher)
    deployment = Rehearsal(settings, workdir)
    try:
        deployment.start()
        deadline = time.monotonic() + args.timeout
        while not deployment.all_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all shards READY after {args.timeout:.0f}s (logs in {workdir})")
            time.sleep(0.2)
        time.sleep(args.settle)
        clusters = _measure(deployment.cluster_pids())
        launchers = _measure(deployment.launcher_pids())
        if len(clusters) != args.clusters:
            raise RuntimeError(f"found {len(clusters)} cluster processes, expected {args.clusters}")
        launcher_pss = sum(m["pss"] for m in launchers)
        result: dict[str, Any] = {"clusters": len(clusters)}
        for key in ("rss", "pss", "uss"):
            values = [m[key] for m in clusters]
            result[f"{key}_mib"] = {"median": _mib(statistics.median(values)), "min": _mib(min(values)),
                                    "max": _mib(max(values)), "total": _mib(sum(values))}
        result["launcher_pss_mib"] = _mib(launcher_pss)
        result["pss_per_cluster_with_launcher_mib"] = _mib(
            (sum(m["pss"] for m in clusters) + launcher_pss) / len(clusters))
        return result
    finally:
        deployment.close()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    with work_root("memory", keep=args.keep) as root:
        variants = {launcher: run_one(args, root / launcher, launcher) for launcher in ("fork", "exec")}
        for launcher, variant in variants.items():
            print(f"  {launcher}: PSS {variant['pss_mib']['median']} MiB per cluster", file=sys.stderr)
    fork = variants["fork"]["pss_per_cluster_with_launcher_mib"]
    return {"goal": {"text": f"PSS per cluster ≤ {GOAL_MIB:g} MiB with fork", "mib": GOAL_MIB},
            "measured_mib": fork, "met": fork <= GOAL_MIB, "variants": variants,
            "parameters": {"clusters": args.clusters, "shards_per_cluster": 4, "guilds_per_cluster": 32,
                           "settle_seconds": args.settle, "load_average": list(psutil.getloadavg())}}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The README row (``write_result`` keyword arguments) of a result."""
    fork, exec_ = result["variants"]["fork"], result["variants"]["exec"]
    p = result["parameters"]
    return {
        "what": f"memory per idle cluster, {p['clusters']} clusters of {p['shards_per_cluster']} shards / "
                f"{p['guilds_per_cluster']} guilds: PSS (USS) with bot.launcher fork vs exec",
        "measured": f"fork {fork['pss_per_cluster_with_launcher_mib']:.1f} MiB PSS incl. the launcher's share "
                    f"(USS {fork['uss_mib']['median']:.1f}, RSS {fork['rss_mib']['median']:.1f}); exec "
                    f"{exec_['pss_mib']['median']:.1f} MiB PSS (USS {exec_['uss_mib']['median']:.1f})",
        "goal": f"≤ {GOAL_MIB:g} MiB PSS with fork", "met": result["met"], "command": COMMAND,
    }


def _print(result: dict[str, Any]) -> None:
    body = []
    for name, v in result["variants"].items():
        body.append([name, f"{v['rss_mib']['median']:.1f}", f"{v['pss_mib']['median']:.1f}",
                     f"{v['uss_mib']['median']:.1f}", f"{v['launcher_pss_mib']:.1f}",
                     f"{v['pss_per_cluster_with_launcher_mib']:.1f}"])
    print_rich_table(f"memory per idle cluster (MiB, median of {result['parameters']['clusters']})",
                     ["launcher", "RSS", "PSS", "USS", "launcher PSS", "PSS incl. launcher share"], body)
    print(f"goal {result['goal']['text']}: {'met' if result['met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds idle after all READY before measuring")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs)")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/memory.json")
    args = parser.parse_args(argv)
    if args.clusters < 1:
        parser.error("--clusters must be ≥ 1")
    result = run_benchmark(args)
    _print(result)
    if not args.no_write:
        path = write_result("memory", result, **summary(result))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
