"""Health reporting: per-shard status, the IPC heartbeat to the supervisor and ``{ns}:status:shards:{cid}``."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import psutil
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..contract.ipc_ops import IpcOp
from ..contract.keys import Keys
from ..ipc import IpcChannel
from ..logs import mask

log = logging.getLogger(__name__)

#: per-shard states reported to the supervisor and Redis
SHARD_STATES = ("connecting", "identifying", "ready", "resuming", "disconnected")

#: the longest error text sent to the supervisor and Redis (characters; the middle of a longer one is cut)
ERROR_TEXT_MAX = 8000

#: discord.py events that change a shard's state (event name -> new state)
_EVENT_STATES = {"shard_ready": "ready", "shard_resumed": "ready", "shard_disconnect": "disconnected"}


class ShardTracker:
    """The state of each shard of this cluster, fed from discord.py events and the identify/resume hooks."""

    def __init__(self, shard_ids: Iterable[int]) -> None:
        self.states: dict[int, str] = {sid: "connecting" for sid in shard_ids}

    def set(self, shard_id: int | None, state: str) -> None:
        """Record ``state`` for a shard of this cluster (others are ignored)."""
        if shard_id in self.states:
            self.states[shard_id] = state

    def on_event(self, event: str, args: tuple[Any, ...]) -> bool:
        """Update from a dispatched event; True when it changed a shard's state."""
        state = _EVENT_STATES.get(event)
        if state is None or not args or not isinstance(args[0], int) or args[0] not in self.states:
            return False
        changed = self.states[args[0]] != state
        self.states[args[0]] = state
        return changed

    @property
    def all_ready(self) -> bool:
        """Every shard of the cluster is READY (or RESUMED)."""
        return bool(self.states) and all(s == "ready" for s in self.states.values())


def clip_middle(text: str, limit: int = ERROR_TEXT_MAX) -> str:
    """``text`` cut to at most ``limit`` characters, keeping its start and end (a traceback's both ends)."""
    if len(text) <= limit:
        return text
    template = "\n[... {} characters cut ...]\n"
    keep = max(limit - len(template.format(len(text))), 0)  # the count has at most as many digits as len(text)
    return text[:keep // 2] + template.format(len(text) - keep) + text[len(text) - (keep - keep // 2):]


def _finite(value: float | None) -> float | None:
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, 4)


def shard_reports(client: Any, tracker: ShardTracker, now_wall: float, now_mono: float) -> dict[int, dict[str, Any]]:
    """The ``{ns}:status:shards:{cid}`` values: status, latency, guilds, last_event_age, ts per shard."""
    guilds: dict[int, int] = dict.fromkeys(tracker.states, 0)
    for guild in getattr(client, "guilds", []):
        if guild.shard_id in guilds:
            guilds[guild.shard_id] += 1
    shards = getattr(client, "shards", {})
    reports: dict[int, dict[str, Any]] = {}
    for sid, state in tracker.states.items():
        info = shards.get(sid)
        latency = last_age = messages = None
        if info is not None:
            latency = _finite(info.latency)
            ws = getattr(getattr(info, "_parent", None), "ws", None)
            last = getattr(ws, "letsfrag_last_receive", None)
            if isinstance(last, float):
                last_age = round(max(0.0, now_mono - last), 3)
            count = getattr(ws, "letsfrag_messages", None)
            messages = count if isinstance(count, int) else None
        reports[sid] = {"status": state, "latency": latency, "guilds": guilds[sid], "last_event_age": last_age,
                        "messages": messages, "ts": round(now_wall, 3)}
    return reports


class HealthReporter:
    """Sends one heartbeat: IPC ``heartbeat`` to the supervisor and the shard hash to Redis."""

    def __init__(self, client: Any, redis: aioredis.Redis, keys: Keys, cluster_id: int, tracker: ShardTracker,
                 ipc: IpcChannel | None) -> None:
        self.client = client
        self.redis = redis
        self.keys = keys
        self.cluster_id = cluster_id
        self.tracker = tracker
        self.ipc = ipc
        self._process = psutil.Process()

    def _rss(self) -> int | None:
        try:
            return int(self._process.memory_info().rss)
        except (psutil.Error, OSError):
            return None

    async def beat(self, loop_lag: float, *, redis: bool = True) -> dict[str, Any]:
        """Report now; return the heartbeat sent (Redis or IPC failures are logged, not raised). ``redis`` False:
        to the supervisor only (a handover successor writes nothing the owner writes)."""
        now_wall, now_mono = time.time(), time.monotonic()
        reports = shard_reports(self.client, self.tracker, now_wall, now_mono)
        latencies = [r["latency"] for r in reports.values() if r["latency"] is not None]
        heartbeat = {
            "ts": round(now_wall, 3),
            "ready": self.tracker.all_ready,
            "shards": {str(sid): r["status"] for sid, r in reports.items()},
            "guilds": sum(r["guilds"] for r in reports.values()),
            "latency": round(sum(latencies) / len(latencies), 4) if latencies else None,
            "rss": self._rss(),
            "loop_lag": round(loop_lag, 4),
        }
        if self.ipc is not None:
            await self.ipc.send(IpcOp.HEARTBEAT, **heartbeat)
        if not redis:
            return heartbeat
        try:
            await self.redis.hset(self.keys.shard_status(self.cluster_id),  # type: ignore[misc]
                                  mapping={str(sid): json.dumps(r) for sid, r in reports.items()})
        except (RedisError, OSError) as exc:
            log.debug("could not write shard status: %s", exc)
        return heartbeat

    async def report_error(self, text: str, *, redis: bool = True) -> None:
        """An unhandled exception: IPC ``error`` and ``{ns}:errors:cluster:{cid}`` (newest first, 20 kept).

        A text longer than :data:`ERROR_TEXT_MAX` loses its middle (a huge exception message must not flood
        the IPC pipe or Redis). Secrets quoted by the traceback (token, Redis password, signing secret) are
        masked first. ``redis`` False: to the supervisor only.
        """
        text = clip_middle(mask(text))
        if self.ipc is not None:
            await self.ipc.send(IpcOp.ERROR, text=text)
        if not redis:
            return
        key = self.keys.cluster_errors(self.cluster_id)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, json.dumps({"ts": round(time.time(), 3), "text": text}))
                pipe.ltrim(key, 0, 19)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("could not record the error in Redis: %s", exc)
