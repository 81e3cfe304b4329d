"""The global identify queue: one IDENTIFY per bucket per window across every process and host, in Redis.

Discord allows one IDENTIFY per bucket (``shard_id % max_concurrency``) per window (5 s) for the whole bot.
Every cluster process of every host asks :class:`IdentifyCoordinator` before it identifies a shard; the
coordinator needs only Redis (no broker). Keys (docs/redis.md, "Identify coordinator")::

    {ns}:identify:slot:{bucket}    string PX window+margin   holder "<cluster>:<shard>" while the window is taken
                                                         (restarted just before and just after the IDENTIFY)
    {ns}:identify:queue:{bucket}   zset                      waiting tickets, score = arrival order (FIFO)
    {ns}:identify:ticket:{id}      string, short PX          a live waiter; refreshed while it waits
    {ns}:identify:seq              int                       ticket counter
    {ns}:identify:budget           hash                      total, remaining, reset_at, max_concurrency, updated_at
    {ns}:identify:granted          int                       identifies granted (ever)

A waiter is granted only when its ticket is the head of its bucket's queue and the bucket's slot is free; a
head whose ticket key expired (the waiter died or froze) is skipped. Everything happens in one Lua script, so
two processes can never take the same window. The daily session-start budget is decremented per grant; once
``remaining`` falls to the reserve (10 % of ``total``) grants are spread evenly over the time left until
``reset_at`` so a crash loop cannot burn the budget (the spacing is kept in the budget hash's extra field
``paced_until``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ..contract.keys import Keys
from ..events import Severity, emit

log = logging.getLogger(__name__)

__all__ = ["IdentifyCoordinator", "IdentifyTimeout", "budget_from_gateway", "default_identify_margin"]

#: share of the daily budget kept in reserve; below it grants are paced until ``reset_at``
RESERVE_FRACTION = 0.1
#: the identify margin as a share of the window: 0.1 s of Discord's 5 s
MARGIN_FRACTION = 0.02
#: the least identify margin, for the short windows of tests and benchmarks (seconds)
MIN_MARGIN = 0.05
#: how often the budget error event may be emitted by one coordinator (seconds)
_EVENT_INTERVAL = 60.0

# KEYS: 1 queue, 2 slot, 3 budget, 4 granted
# ARGV: 1 ticket, 2 holder, 3 slot px, 4 ticket-key prefix, 5 reserve fraction
# returns {status, value, paced}: status 1 granted (value = remaining budget or -1),
# 0 wait for the slot (value = its ms left), 3 not at the head yet,
# 2 held back by the budget (value = ms), -1 ticket lost (enqueue again)
_GRANT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {-1, 0, 0} end
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if head == ARGV[1] then break end
  if redis.call('EXISTS', ARGV[4] .. head) == 1 then return {3, 0, 0} end
  redis.call('ZREM', KEYS[1], head)
end
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 then return {0, pttl, 0} end
if pttl == -1 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) return {0, tonumber(ARGV[3]), 0} end
local remaining = -1
local paced = 0
if redis.call('EXISTS', KEYS[3]) == 1 then
  local b = redis.call('HMGET', KEYS[3], 'total', 'remaining', 'reset_at', 'paced_until')
  local total = tonumber(b[1]) or 0
  remaining = tonumber(b[2]) or 0
  local reset_at = tonumber(b[3]) or 0
  local paced_until = tonumber(b[4]) or 0
  if reset_at > 0 and now >= reset_at then
    remaining = total
    reset_at = now + 86400
    redis.call('HSET', KEYS[3], 'remaining', remaining, 'reset_at', string.format('%.3f', reset_at),
               'paced_until', 0)
    paced_until = 0
  end
  if remaining <= math.ceil(total * tonumber(ARGV[5])) then
    if remaining <= 0 then return {2, math.max(1, math.floor((reset_at - now) * 1000)), 1} end
    if now < paced_until then return {2, math.max(1, math.floor((paced_until - now) * 1000)), 1} end
    local interval = math.max(0, reset_at - now) / remaining
    redis.call('HSET', KEYS[3], 'paced_until', string.format('%.3f', now + interval))
    paced = 1
  end
  remaining = redis.call('HINCRBY', KEYS[3], 'remaining', -1)
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', ARGV[4] .. ARGV[1])
redis.call('INCR', KEYS[4])
return {1, remaining, paced}
"""

# KEYS: 1 slot; ARGV: 1 holder, 2 slot px. The window restarts now if the slot is still this holder's.
_CONFIRM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: 1 budget; ARGV: total, remaining, reset_at, max_concurrency, updated_at
_WRITE_BUDGET = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'remaining', ARGV[2], 'reset_at', ARGV[3],
           'max_concurrency', ARGV[4], 'updated_at', ARGV[5])
return 1
"""


def default_identify_margin(window: float) -> float:
    """The slot's margin beyond the window: 2 % of it (0.1 s of Discord's 5 s), at least 50 ms."""
    return max(MIN_MARGIN, MARGIN_FRACTION * window)


class IdentifyTimeout(asyncio.TimeoutError):
    """No identify slot within the timeout (a ``TimeoutError``, so discord.py retries with backoff)."""


@dataclass(slots=True)
class _Kept:
    """A ticket kept alive after a timeout so the next attempt of the same holder keeps its place."""

    ticket: str
    bucket: int
    task: asyncio.Task[None]


def budget_from_gateway(limits: dict[str, Any], now: float | None = None) -> dict[str, float | int]:
    """The budget hash fields from ``GET /gateway/bot``'s ``session_start_limit``."""
    now = time.time() if now is None else now
    return {
        "total": int(limits.get("total", 1000)),
        "remaining": int(limits.get("remaining", limits.get("total", 1000))),
        "reset_at": round(now + float(limits.get("reset_after", 86_400_000)) / 1000.0, 3),
        "max_concurrency": int(limits.get("max_concurrency", 1)),
    }


class IdentifyCoordinator:
    """Grants IDENTIFY windows through Redis, shared by every process and host (see module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        max_concurrency: int,
        window: float,
        margin: float | None = None,
        ticket_ttl: float = 3.0,
        poll_interval: float = 0.1,
        keep_place: float = 20.0,
        source: str = "",
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, found {max_concurrency}")
        if margin is None:
            margin = default_identify_margin(window)
        if window < 0 or margin < 0:
            raise ValueError(f"window and margin cannot be negative, found {window} and {margin}")
        self.redis = redis
        self.keys = keys
        self.max_concurrency = max_concurrency
        self.window = window
        self.margin = margin
        self.ticket_ttl = ticket_ttl
        self.poll_interval = poll_interval
        self.keep_place = keep_place
        self.source = source
        self._grant: Any = redis.register_script(_GRANT)
        self._write_budget: Any = redis.register_script(_WRITE_BUDGET)
        self._confirm: Any = redis.register_script(_CONFIRM)
        self._kept: dict[str, _Kept] = {}
        self._last_budget_event = -_EVENT_INTERVAL

    def bucket(self, shard_id: int) -> int:
        """Discord's identify bucket of ``shard_id``."""
        return shard_id % self.max_concurrency

    def _ticket_key(self, ticket: str) -> str:
        return self.keys.identify(f"ticket:{ticket}")

    async def _enqueue(self, bucket: int) -> str:
        seq = int(await self.redis.incr(self.keys.identify("seq")))
        ticket = str(seq)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._ticket_key(ticket), "1", px=int(self.ticket_ttl * 1000))
            pipe.zadd(self.keys.identify(f"queue:{bucket}"), {ticket: seq})
            await pipe.execute()
        return ticket

    async def _withdraw(self, ticket: str, bucket: int) -> None:
        with contextlib.suppress(Exception):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.identify(f"queue:{bucket}"), ticket)
                pipe.delete(self._ticket_key(ticket))
                await pipe.execute()

    async def acquire(self, shard_id: int, holder: str, timeout: float) -> float:
        """Wait for this shard's bucket window; return the seconds waited.

        Raises :class:`IdentifyTimeout` after ``timeout`` seconds. The ticket then stays queued for
        ``keep_place`` seconds, so the next ``acquire`` with the same ``holder`` continues from its place.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout
        bucket = self.bucket(shard_id)
        kept = self._kept.pop(holder, None)
        if kept is not None and kept.bucket == bucket:
            kept.task.cancel()
            ticket = kept.ticket
        else:
            if kept is not None:
                kept.task.cancel()
                await self._withdraw(kept.ticket, kept.bucket)
            ticket = await self._enqueue(bucket)
        slot_px = int((self.window + self.margin) * 1000)
        queue_key = self.keys.identify(f"queue:{bucket}")
        slot_key = self.keys.identify(f"slot:{bucket}")
        try:
            while True:
                status, value, paced = await self._grant(
                    keys=[queue_key, slot_key, self.keys.identify("budget"), self.keys.identify("granted")],
                    args=[ticket, holder, slot_px, self.keys.identify("ticket:"), RESERVE_FRACTION],
                )
                status, value = int(status), int(value)
                if status == 1:
                    if int(paced):
                        await self._budget_event(value)
                    return loop.time() - started
                if status == -1:
                    ticket = await self._enqueue(bucket)
                    continue
                if status == 2:
                    await self._budget_event(None, wait=value / 1000)
                now = loop.time()
                if now >= deadline:
                    self._keep(holder, ticket, bucket)
                    raise IdentifyTimeout(
                        f"no identify slot for shard {shard_id} (bucket {bucket}) within {timeout:g}s")
                pause = value / 1000 if status in (0, 2) else self.poll_interval
                pause = min(max(pause, 0.005), self.ticket_ttl / 3, deadline - now)
                await self.redis.set(self._ticket_key(ticket), "1", px=int(self.ticket_ttl * 1000))
                await asyncio.sleep(pause)
        except (asyncio.CancelledError, Exception) as exc:
            if not isinstance(exc, IdentifyTimeout):
                await asyncio.shield(self._withdraw(ticket, bucket))
            raise

    async def confirm(self, shard_id: int, holder: str) -> bool:
        """Just before the IDENTIFY of ``shard_id`` leaves, and again just after: restart the bucket's window from
        now if the slot granted to ``holder`` is still its own, and say so (False: the slot expired — acquire again).

        A grant is taken before the gateway connection is opened; on a busy machine that connection can take
        longer than the margin, and the next grant of the bucket would follow this IDENTIFY too closely. The
        confirmation after the send makes the window count from the moment the IDENTIFY left, however long the
        event loop took to send it, so the margin covers only its way to Discord.
        """
        slot_px = int((self.window + self.margin) * 1000)
        return bool(int(await self._confirm(keys=[self.keys.identify(f"slot:{self.bucket(shard_id)}")],
                                            args=[holder, slot_px])))

    def _keep(self, holder: str, ticket: str, bucket: int) -> None:
        task = asyncio.ensure_future(self._keep_alive(holder, ticket, bucket))
        self._kept[holder] = _Kept(ticket, bucket, task)

    async def _keep_alive(self, holder: str, ticket: str, bucket: int) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self.keep_place
        try:
            while loop.time() < until:
                await self.redis.set(self._ticket_key(ticket), "1", px=int(self.ticket_ttl * 1000))
                await asyncio.sleep(self.ticket_ttl / 3)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            log.debug("could not keep identify ticket %s alive: %s", ticket, exc)
        kept = self._kept.get(holder)
        if kept is not None and kept.ticket == ticket:
            del self._kept[holder]
        await self._withdraw(ticket, bucket)

    async def close(self) -> None:
        """Withdraw every kept ticket."""
        for holder, kept in list(self._kept.items()):
            kept.task.cancel()
            await self._withdraw(kept.ticket, kept.bucket)
            self._kept.pop(holder, None)

    async def depth(self) -> int:
        """How many waiters are queued over all buckets."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in range(self.max_concurrency):
                pipe.zcard(self.keys.identify(f"queue:{bucket}"))
            counts = await pipe.execute()
        return sum(int(c) for c in counts)

    async def ensure_budget(self, limits: dict[str, Any]) -> bool:
        """Write the budget hash from ``session_start_limit`` unless it exists; True when written."""
        budget = budget_from_gateway(limits)
        return bool(await self._write_budget(
            keys=[self.keys.identify("budget")],
            args=[budget["total"], budget["remaining"], f"{budget['reset_at']:.3f}", budget["max_concurrency"],
                  f"{time.time():.3f}"],
        ))

    async def has_budget(self) -> bool:
        """Whether the budget hash exists."""
        return bool(await self.redis.exists(self.keys.identify("budget")))

    async def _budget_event(self, remaining: int | None, wait: float | None = None) -> None:
        now = time.monotonic()
        if now - self._last_budget_event < _EVENT_INTERVAL:
            return
        self._last_budget_event = now
        if remaining is None:
            message = f"identify budget exhausted or paced: next IDENTIFY allowed in {wait or 0:.0f}s"
        else:
            message = (f"identify budget low ({remaining} session starts left): spreading IDENTIFYs until "
                       "the daily reset")
        await emit(self.redis, self.keys, Severity.ERROR, "identify_budget", message, source=self.source)
