"""The live progress line of ``letsfrag run``: shards coming up, then a compact status table."""

from __future__ import annotations

import asyncio
import contextlib
import json

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from rich.console import Console
from rich.live import Live

from ..contract.keys import Keys
from ..contract.records import LayoutRecord


async def count_ready(redis: aioredis.Redis, keys: Keys) -> tuple[int, int, int, int]:
    """``(shards_ready, shard_count, clusters_ready, cluster_count)`` from the status keys."""
    raw: dict[str, str] = await redis.hgetall(keys.layout)  # type: ignore[misc,assignment]
    layout = LayoutRecord.for_display(raw)
    shard_count, cluster_count = (layout.shard_count, layout.cluster_count) if layout else (0, 0)
    pipe = redis.pipeline(transaction=False)
    for cid in (layout.cluster_ids if layout else ()):
        pipe.hget(keys.cluster_status(cid), "state")
        pipe.hget(keys.cluster_status(cid), "shard_ids")
    values = await pipe.execute()
    clusters_ready = shards_ready = 0
    for state, shard_ids in zip(values[0::2], values[1::2], strict=True):
        if state == "ready":
            clusters_ready += 1
            with contextlib.suppress(ValueError, TypeError):
                shards_ready += len(json.loads(shard_ids))
    return shards_ready, shard_count, clusters_ready, cluster_count


async def show_progress(redis: aioredis.Redis, keys: Keys, stop: asyncio.Event, console: Console | None = None) -> None:
    """Show a live line until ``stop`` is set; print once when every shard is READY."""
    console = console or Console(stderr=True)
    announced = False
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while not stop.is_set():
            try:
                shards, total, clusters, cluster_total = await count_ready(redis, keys)
                line = f"shards READY {shards}/{total or '?'} · clusters READY {clusters}/{cluster_total or '?'}"
            except (RedisError, OSError) as exc:
                line = f"waiting for Redis: {exc}"
                shards = total = 0
            live.update(line)
            if total and shards == total and not announced:
                announced = True
                console.print(f"[green]all {total} shards READY[/] ({clusters} clusters) — Ctrl-C stops everything")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
