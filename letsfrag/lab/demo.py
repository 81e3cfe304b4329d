"""``letsfrag demo``: a whole deployment on this machine in one command.

Embedded Redis, the simulated Discord (with a stream of ``!ping`` traffic), a broker and N host supervisors as
separate processes running the demo bot (``examples/bot.py``, shipped in the package as ``letsfrag.samples.bot``;
a :class:`~letsfrag.lab.rehearsal.Rehearsal`); then the dashboard
or, with ``--headless``, progress lines and a final verdict. After ``--kill-after`` one host (its supervisor and
clusters) is SIGKILLed so the operator sees failover. ``--headless`` exits 0 only if every shard ended READY with
0 identify violations and 0 duplicate sessions, as counted by the simulator. Redis listens only on a unix socket
in the demo's private folder; every process the demo started stops when the demo dies, even by SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from ..errors import ConfigError, LetsfragError
from ..units import parse_duration
from .rehearsal import EXAMPLE_BOT, Rehearsal, RehearsalSettings

VICTIM = "h0"


def verdict(stats: dict[str, Any], shards: int) -> tuple[bool, list[str]]:
    """Judge the simulator's referee counters: every shard READY once, no violations, no duplicates."""
    ready = set(stats.get("shards_ready", []))
    violations = int(stats.get("identify_violations", {}).get("total", 0))
    duplicates = int(stats.get("duplicate_sessions", {}).get("count", 0))
    handling = stats.get("handling", {})
    lines = [
        f"shards READY           {len(ready)}/{shards}",
        f"identifies             {stats.get('identifies', {}).get('total', 0)}",
        f"identify violations    {violations}",
        f"duplicate sessions     {duplicates}",
        f"!ping commands         sent {handling.get('sent', 0)}, answered once {handling.get('answered_once', 0)},"
        f" twice or more {handling.get('answered_twice_or_more', 0)}",
    ]
    return ready == set(range(shards)) and violations == 0 and duplicates == 0, lines


def kill_time(duration: float, kill_after: float) -> float:
    """When to kill a host: ``kill_after``, or a third of the run when that would be too late to watch."""
    return kill_after if kill_after < duration * 0.75 else duration / 3


async def _headless(rehearsal: Rehearsal, duration: float, kill_after: float, console: Console) -> bool:
    settings = rehearsal.settings
    started = time.monotonic()
    kill_at = kill_time(duration, kill_after)
    killed = settings.hosts < 2
    while time.monotonic() - started < duration:
        await asyncio.sleep(1.0)
        elapsed = time.monotonic() - started
        stats = await asyncio.to_thread(rehearsal.sim_stats)
        console.print(
            f"[{elapsed:5.1f}s] shards READY {len(stats.get('shards_ready', []))}/{settings.shards}"
            f"  identifies {stats.get('identifies', {}).get('total', 0)}"
            f"  violations {stats.get('identify_violations', {}).get('total', 0)}"
            f"  duplicates {stats.get('duplicate_sessions', {}).get('count', 0)}"
        )
        if not killed and elapsed >= kill_at:
            count = rehearsal.kill_host(VICTIM)
            killed = True
            console.print(f"[bold red]>>> killed host {VICTIM} ({count} processes, SIGKILL): its clusters move "
                          "to the survivors after the lease expires[/]")
    deadline = time.monotonic() + 60
    ok, lines = verdict(await asyncio.to_thread(rehearsal.sim_stats), settings.shards)
    while not ok and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        ok, lines = verdict(await asyncio.to_thread(rehearsal.sim_stats), settings.shards)
    for line in lines:
        console.print(line)
    console.print("[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]")
    return ok


async def _dashboard(rehearsal: Rehearsal, duration: float, kill_after: float) -> None:
    from ..tui.app import LetsfragTop

    app = LetsfragTop(redis=rehearsal.redis_url, namespace=rehearsal.settings.namespace, secret=rehearsal.secret)

    async def timeline() -> None:
        await asyncio.sleep(kill_time(duration, kill_after))
        if rehearsal.settings.hosts > 1:
            await asyncio.to_thread(rehearsal.kill_host, VICTIM)
            app.notify(f"Killed host {VICTIM} (SIGKILL): watch its clusters move", severity="warning", timeout=15)

    task = asyncio.create_task(timeline())
    try:
        await app.run_async()
    finally:
        task.cancel()


async def run_demo(settings: RehearsalSettings, *, duration: float, kill_after: float, headless: bool,
                   console: Console | None = None) -> int:
    """Start everything, run the timeline (headless) or the dashboard, stop everything; return the exit code."""
    if not EXAMPLE_BOT.exists():
        raise LetsfragError(f"the demo bot {EXAMPLE_BOT} is missing: reinstall letsfrag")
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="letsfrag-demo-"))
    rehearsal = Rehearsal(settings, workdir)
    try:
        rehearsal.start()  # in the loop's thread, which outlives Redis (its parent-death signal is tied to it)
        console.print(f"letsfrag demo: {settings.hosts} hosts, {settings.shards} shards in {settings.clusters} "
                      f"clusters; Redis {rehearsal.redis_url}; simulator {rehearsal.sim_url}; logs in {workdir}")
        if headless:
            return 0 if await _headless(rehearsal, duration, kill_after, console) else 1
        await _dashboard(rehearsal, duration, kill_after)
        return 0
    finally:
        await asyncio.to_thread(rehearsal.close)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``letsfrag demo``."""
    problems = []
    for name in ("hosts", "shards", "shards_per_cluster"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')}: expected a whole number >= 1, found {getattr(args, name)}")
    try:
        duration, kill_after = parse_duration(args.duration), parse_duration(args.kill_after)
    except ValueError as exc:
        problems.append(f"--duration/--kill-after: {exc}")
        duration = kill_after = 0.0
    if problems:
        raise ConfigError(problems)
    settings = RehearsalSettings(hosts=args.hosts, shards=args.shards, shards_per_cluster=args.shards_per_cluster,
                                 traffic_rate=5.0, namespace="demo", redis_socket=True, redis_dies_with_parent=True)
    return asyncio.run(_until_signalled(run_demo(settings, duration=duration, kill_after=kill_after,
                                                 headless=args.headless)))


async def _until_signalled(demo: Coroutine[Any, Any, int]) -> int:
    """Run the demo; SIGTERM or SIGHUP (a closed terminal) cancel it, so its cleanup still stops everything."""
    task = asyncio.ensure_future(demo)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 130
