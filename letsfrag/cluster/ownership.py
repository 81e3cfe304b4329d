"""Reading ownership from Redis: the assignment field, the host lease, the layout and the cluster's handover
record, in one round trip."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..clock import Clock
from ..contract.keys import Keys
from .guard import LAYOUT_FIELDS, Ownership, bound_undecided, decide_ownership

#: how many lease TTLs an undecided ownership (Redis lost its data; a layout being repaired) may last
UNDECIDED_TTLS = 3.0


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
        shard_ids: tuple[int, ...] | None = None,
        successor: bool = False,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.cluster_id = cluster_id
        self.host_id = host_id
        self.epoch = epoch
        self.incarnation = incarnation
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.shard_ids = shard_ids
        #: judged as a handover successor (started with ``LETSFRAG_HANDOVER=1``, see :mod:`.guard`) until a check
        #: finds it the exclusive owner; from then on it is an owner like any other, so a later handover or reshard
        #: finds it *handed over* (serving until stopped) rather than a successor whose record is gone (fenced)
        self.successor = successor
        #: monotonic start of the current undecided wait (``None`` while decided)
        self.undecided_since: float | None = None
        #: checks answered so far
        self.checks = 0

    async def check(self) -> OwnershipCheck:
        """Read the assignment, the lease, the layout's shard range and the handover record atomically (MULTI);
        raises ``RedisError``/``OSError`` offline. An undecided verdict lasting ``3 × lease_ttl`` becomes a fence."""
        sent_at = self.clock.monotonic()
        lease = self.keys.lease(self.host_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(self.keys.assignment, str(self.cluster_id))
            pipe.get(lease)
            pipe.pttl(lease)
            pipe.hmget(self.keys.layout, list(LAYOUT_FIELDS))
            pipe.hget(self.keys.handover, str(self.cluster_id))
            assignment, lease_value, pttl, layout_values, handover = await pipe.execute()
        verdict = decide_ownership(
            assignment,
            lease_value,
            int(pttl),
            cluster_id=self.cluster_id,
            host_id=self.host_id,
            epoch=self.epoch,
            incarnation=self.incarnation,
            default_ttl=self.lease_ttl,
            layout=dict(zip(LAYOUT_FIELDS, layout_values, strict=True)),
            shard_ids=self.shard_ids,
            layout_key=self.keys.layout,
            assignment_key=self.keys.assignment,
            handover=handover,
            successor=self.successor,
            handover_key=self.keys.handover,
        )
        self.checks += 1
        if self.successor and verdict.owner and verdict.exclusive:
            self.successor = False  # promoted and no record names it any more: a normal owner from now on
        verdict, self.undecided_since = bound_undecided(verdict, self.undecided_since, self.clock.monotonic(),
                                                        UNDECIDED_TTLS * self.lease_ttl)
        return OwnershipCheck(verdict, sent_at)
