"""The broker leader lock ``{ns}:leader``: ``SET NX PX leader_ttl``, renewed with a compare-and-set script.

Exactly one broker holds the lock; standbys try to take it on every tick. Renewal only extends a lock that
still names this broker; when the key vanished (it expired during a stall, or Redis restarted without its
data) renewal takes it again and reports a *new term*, so the broker re-reads the world before deciding.
"""

from __future__ import annotations

from enum import Enum

import redis.asyncio as aioredis

from letsfrag.contract.keys import Keys

__all__ = ["LeaderLock", "Term"]

_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return 2 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Term(Enum):
    """Outcome of one :meth:`LeaderLock.hold` call."""

    KEPT = "kept"  # we were leader and still are
    NEW = "new"  # we (re)acquired the lock: a new term begins
    NONE = "none"  # someone else holds it


class LeaderLock:
    """The lock for one broker id; ``ttl`` in seconds."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, broker_id: str, ttl: float) -> None:
        self.redis = redis
        self.key = keys.leader
        self.broker_id = broker_id
        self.ttl_ms = max(1, int(ttl * 1000))
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def hold(self, leading: bool) -> Term:
        """Acquire (standby) or renew (leader) the lock; raises Redis errors to the caller."""
        if leading:
            result = int(await self._renew(keys=[self.key], args=[self.broker_id, self.ttl_ms]))
            return {1: Term.KEPT, 2: Term.NEW}.get(result, Term.NONE)
        acquired = await self.redis.set(self.key, self.broker_id, nx=True, px=self.ttl_ms)
        return Term.NEW if acquired else Term.NONE

    async def holder(self) -> str | None:
        """The id in the lock, if any."""
        value = await self.redis.get(self.key)
        return None if value is None else str(value)

    async def release(self) -> bool:
        """Delete the lock if it is ours (a clean shutdown lets a standby take over at once)."""
        return bool(await self._release(keys=[self.key], args=[self.broker_id]))
