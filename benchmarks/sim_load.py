"""Simulator load: 64 shards and 2,000 guilds over 4 plain discord.py processes; the simulator's CPU.

Run ``python -m benchmarks.sim_load`` from the project root. The simulator runs as its own process
(``python -m letsfrag.sim``) so psutil measures it alone; each client process is an unmodified
``discord.AutoShardedClient`` with a no-op ``before_identify_hook`` that answers ``!ping <n>`` with
``pong <n>``. Phases: cold start to 64 READY, idle (heartbeats only), then ``!ping`` traffic.
Writes ``benchmarks/results/sim_load.json``; the goal is < 25 % of one core at steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from letsfrag.lab.rehearsal import stop_processes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sim_load.json"
CPU_GOAL_PERCENT = 25.0


# --- client process ---------------------------------------------------------------------------------------
async def _client_main(args: argparse.Namespace) -> None:
    import discord
    import yarl

    discord.http.Route.BASE = args.api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(args.gateway)

    class Client(discord.AutoShardedClient):
        async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
            pass

        async def on_message(self, message: discord.Message) -> None:
            if message.content.startswith("!ping "):
                await message.channel.send("pong " + message.content.split()[1])

    first, _, last = args.shard_ids.partition("-")
    intents = discord.Intents.default()
    intents.message_content = True
    client = Client(
        shard_ids=list(range(int(first), int(last or first) + 1)),
        shard_count=args.shard_count,
        intents=intents,
        guild_ready_timeout=0.2,
        chunk_guilds_at_startup=False,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(client.start("benchmark-token"))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await client.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, timeout=5)


# --- driver -----------------------------------------------------------------------------------------------
def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _post(url: str) -> Any:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until ``predicate()``; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def _measure(process: psutil.Process, seconds: float) -> tuple[float, float]:
    """CPU % of one core over ``seconds``, and RSS in MiB at the end."""
    process.cpu_percent(None)
    time.sleep(seconds)
    return process.cpu_percent(None), process.memory_info().rss / 2**20


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim_cmd = [
        sys.executable, "-m", "letsfrag.sim", "--port", "0", "--shards", str(args.shards),
        "--guilds", str(args.guilds), "--max-concurrency", str(args.shards), "--identify-window", "5s",
        "--heartbeat-interval", args.heartbeat_interval,
    ]
    sim = subprocess.Popen(sim_cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    clients: list[subprocess.Popen[bytes]] = []
    try:
        assert sim.stdout is not None
        line = sim.stdout.readline().strip()
        base = line.rsplit(" ", 1)[-1]
        if not base.startswith("http://"):
            raise RuntimeError(f"the simulator did not start: {line!r}")
        stats_url = base + "/_sim/stats"
        sim_proc = psutil.Process(sim.pid)
        sim_proc.cpu_percent(None)
        per_process = args.shards // args.processes
        started = time.monotonic()
        for p in range(args.processes):
            shards = f"{p * per_process}-{(p + 1) * per_process - 1}"
            clients.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.sim_load", "--client", "--api", base + "/api/v10",
                 "--gateway", base + "/", "--shard-ids", shards, "--shard-count", str(args.shards)],
                cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
            ))
        _wait(lambda: len(_get(stats_url)["shards_ready"]) == args.shards, 120, f"{args.shards} shards READY")
        ready_seconds = time.monotonic() - started
        startup_cpu = sim_proc.cpu_percent(None)
        idle_cpu, idle_rss = _measure(sim_proc, args.measure)
        _post(f"{base}/_sim/reset")
        _post(f"{base}/_sim/traffic?rate={args.traffic_rate}&seconds={args.measure}")
        traffic_cpu, traffic_rss = _measure(sim_proc, args.measure)
        expected = round(args.traffic_rate * args.measure)
        with contextlib.suppress(TimeoutError):
            _wait(lambda: _get(stats_url)["handling"]["answered_once"] >= expected, 15, "answers")
        stats = _get(stats_url)
    finally:
        stop_processes([*clients, sim])
    steady = max(idle_cpu, traffic_cpu)
    return {
        "shards": args.shards,
        "guilds": args.guilds,
        "client_processes": args.processes,
        "heartbeat_interval": args.heartbeat_interval,
        "seconds_to_all_ready": round(ready_seconds, 2),
        "sim_cpu_percent_startup": round(startup_cpu, 1),
        "sim_cpu_percent_idle": round(idle_cpu, 1),
        "sim_cpu_percent_traffic": round(traffic_cpu, 1),
        "traffic_rate_per_second": args.traffic_rate,
        "sim_rss_mib": round(max(idle_rss, traffic_rss), 1),
        "handling": stats["handling"],
        "identify_violations": stats["identify_violations"]["total"],
        "duplicate_sessions": stats["duplicate_sessions"]["count"],
        "cpu_goal_percent": CPU_GOAL_PERCENT,
        "goal_met": steady < CPU_GOAL_PERCENT,
        "cpu_count": psutil.cpu_count(),
    }


def print_table(result: dict[str, Any]) -> None:
    handling = result["handling"]
    rows = [
        ("shards / guilds / client processes",
         f"{result['shards']} / {result['guilds']} / {result['client_processes']}"),
        ("time to all shards READY", f"{result['seconds_to_all_ready']:.2f} s"),
        ("sim CPU during cold start", f"{result['sim_cpu_percent_startup']:.1f} %"),
        ("sim CPU idle (heartbeats only)", f"{result['sim_cpu_percent_idle']:.1f} %"),
        (f"sim CPU with {result['traffic_rate_per_second']:g} !ping/s", f"{result['sim_cpu_percent_traffic']:.1f} %"),
        ("sim RSS", f"{result['sim_rss_mib']:.1f} MiB"),
        ("pings sent / answered once / twice+", f"{handling['sent']} / {handling['answered_once']} / "
                                                 f"{handling['answered_twice_or_more']}"),
        ("identify violations / duplicate sessions", f"{result['identify_violations']} / "
                                                      f"{result['duplicate_sessions']}"),
        (f"goal: steady CPU < {CPU_GOAL_PERCENT:g} % of a core", "met" if result["goal_met"] else "NOT met"),
    ]
    width = max(len(name) for name, _ in rows)
    print("simulator load")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_load", description=__doc__)
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--guilds", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--measure", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--traffic-rate", type=float, default=50.0, help="!ping messages per second")
    parser.add_argument("--heartbeat-interval", default="41.25s")
    parser.add_argument("--output", type=Path, default=RESULTS)
    # client mode (started by the driver)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--gateway", help=argparse.SUPPRESS)
    parser.add_argument("--shard-count", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--shard-ids", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        asyncio.run(_client_main(args))
        return 0
    if args.shards % args.processes:
        parser.error("--shards must be a multiple of --processes")
    result = run_benchmark(args)
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
