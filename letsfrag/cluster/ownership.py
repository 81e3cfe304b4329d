"""Reading ownership from Redis: the assignment field and the host lease, in one round trip."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..clock import Clock
from ..keys import Keys
from .guard import Ownership, decide_ownership


@dataclass(frozen=True, slots=True)
class OwnershipCheck:
    """One check: the verdict and the monotonic time the request was sent (the guard's anchor)."""

    ownership: Ownership
    sent_at: float


class OwnershipChecker:
    """Checks whether this process (cluster, host, epoch, incarnation) still owns its shards."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        cluster_id: int,
        host_id: str,
        epoch: int,
        incarnation: str,
        lease_ttl: float,
        clock: Clock,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cluster_id = cluster_id
        self.host_id = host_id
        self.epoch = epoch
        self.incarnation = incarnation
        self.lease_ttl = lease_ttl
        self.clock = clock

    async def check(self) -> OwnershipCheck:
        """Read the assignment and the lease atomically (MULTI); raises ``RedisError``/``OSError`` offline."""
        sent_at = self.clock.monotonic()
        lease = self.keys.lease(self.host_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(self.keys.assignment, str(self.cluster_id))
            pipe.get(lease)
            pipe.pttl(lease)
            assignment, lease_value, pttl = await pipe.execute()
        verdict = decide_ownership(
            assignment,
            lease_value,
            int(pttl),
            cluster_id=self.cluster_id,
            host_id=self.host_id,
            epoch=self.epoch,
            incarnation=self.incarnation,
            default_ttl=self.lease_ttl,
        )
        return OwnershipCheck(verdict, sent_at)
