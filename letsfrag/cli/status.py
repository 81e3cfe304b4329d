"""``letsfrag status [--json] [--watch]``: the deployment as tables or as a stable JSON document.

Exit codes: 0 every shard is READY, 1 anything is degraded (or nothing is deployed), 2 Redis is unreachable
or the arguments are wrong. The JSON schema is documented in ``docs/status.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from redis.exceptions import RedisError
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ..connection import check_redis_credentials, create_redis, display_url
from ..contract.keys import Keys
from ..errors import ConfigError
from ..logs import escape_control, json_text
from ..snapshot.picture import Snapshot, read_snapshot
from ..snapshot.render import CLUSTER_COLUMNS, HOST_COLUMNS, cluster_cells, host_cells, summary_text
from .connect import connection_from_args

__all__ = ["exit_code", "render", "run"]

#: seconds between refreshes with --watch
WATCH_INTERVAL = 1.0
#: columns used when stdout is not a terminal
PIPE_WIDTH = 180


def exit_code(snapshot: Snapshot) -> int:
    """0 when every shard is READY, else 1."""
    return 0 if snapshot.healthy else 1


def render(snapshot: Snapshot, address: str) -> Group:
    """Header line, hosts table and clusters table (problem clusters first when the deployment is large)."""
    hosts = Table(title="Hosts", title_justify="left", expand=False, pad_edge=False)
    for _, label in HOST_COLUMNS:
        hosts.add_column(label, no_wrap=True)
    for host in snapshot.hosts:
        hosts.add_row(*host_cells(host))
    clusters = Table(title="Clusters", title_justify="left", expand=False, pad_edge=False)
    for key, label in CLUSTER_COLUMNS:
        clusters.add_column(label, no_wrap=key != "error", overflow="ellipsis")
    for cluster in snapshot.clusters:
        clusters.add_row(*cluster_cells(cluster))
    verdict = Text("all shards ready", style="bold green") if snapshot.healthy else \
        Text("degraded", style="bold yellow") if snapshot.layout else Text("no layout in Redis", style="bold red")
    warnings = [Text(f"warning: {line}", style="yellow") for line in snapshot.warnings]
    return Group(summary_text(snapshot, address), verdict, *warnings, hosts, clusters)


async def _read(redis: Any, keys: Keys) -> Snapshot:
    return await read_snapshot(redis, keys, events=200)


async def run(args: argparse.Namespace) -> int:
    """Entry point of ``letsfrag status``."""
    try:
        settings, namespace, _ = connection_from_args(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    address = display_url(settings)
    keys = Keys(namespace)
    redis = create_redis(settings)
    # piped output (scripts, CI logs) gets a wide fixed width instead of rich's 80 columns
    console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
    try:
        if getattr(args, "watch", False):
            return await _watch(redis, keys, address, console, bool(getattr(args, "json", False)))
        await check_redis_credentials(settings)
        try:
            snapshot = await _read(redis, keys)
        except (RedisError, OSError) as exc:
            print(f"error: cannot reach Redis at {address}: {exc}", file=sys.stderr)
            return 2
        if getattr(args, "json", False):
            print(json_text(snapshot.to_json(), indent=2))
        else:
            console.print(render(snapshot, address))
        return exit_code(snapshot)
    finally:
        await redis.aclose()


async def _watch(redis: Any, keys: Keys, address: str, console: Console, as_json: bool) -> int:
    """Refresh every second until Ctrl-C; the exit code is the verdict of the last successful read."""
    from rich.live import Live

    code = 2
    with Live(Text("connecting…"), console=console, auto_refresh=False, screen=False) as live:
        try:
            while True:
                try:
                    snapshot = await _read(redis, keys)
                except (RedisError, OSError) as exc:
                    code = 2
                    live.update(Text(escape_control(f"cannot reach Redis at {address}: {exc} (retrying)"),
                                     style="bold red"),
                                refresh=True)
                else:
                    code = exit_code(snapshot)
                    body: Any = Text(json_text(snapshot.to_json())) if as_json else render(snapshot, address)
                    live.update(body, refresh=True)
                await asyncio.sleep(WATCH_INTERVAL)
        except (KeyboardInterrupt, asyncio.CancelledError):
            return code
