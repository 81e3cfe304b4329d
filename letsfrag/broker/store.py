"""The broker's Redis I/O: one snapshot read per tick, and writes fenced by the leader lock.

Every write is a Lua script that first checks ``GET {ns}:leader == broker id`` and does nothing otherwise
(returns -1, raised here as :class:`NotLeader`): a broker that lost the lock cannot write, even if it has
not noticed yet. A grant is one script (``INCR`` epoch + ``HSET`` assignment), so it is atomic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from letsfrag.keys import Keys

__all__ = ["Grant", "HostRecord", "NotLeader", "Snapshot", "Store"]

log = logging.getLogger(__name__)


class NotLeader(Exception):
    """A fenced write was refused: the leader lock does not name this broker."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One field of ``{ns}:assignment``."""

    host: str
    epoch: int

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "epoch": self.epoch})


@dataclass(slots=True)
class HostRecord:
    """One host as read from ``{ns}:host:{id}`` and ``{ns}:lease:{id}``."""

    id: str
    capacity: int = 0
    state: str = "up"
    incarnation: str = ""
    running: dict[int, int] = field(default_factory=dict)
    lease: str | None = None
    registered: bool = True  # the record hash exists


@dataclass(slots=True)
class Snapshot:
    """Everything one broker tick reads."""

    hosts: dict[str, HostRecord]
    assignment: dict[int, Grant]
    epoch: int
    layout_present: bool
    identify_depth: int


def _parse_grant(cid: str, raw: str) -> tuple[int, Grant] | None:
    try:
        data = json.loads(raw)
        return int(cid), Grant(str(data["host"]), int(data["epoch"]))
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a malformed assignment field %r = %r", cid, raw[:80])
        return None


def _parse_running(raw: str | None) -> dict[int, int]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {int(k): int(v) for k, v in data.items()}
    except (ValueError, AttributeError, TypeError):
        return {}


def _parse_host(host_id: str, data: dict[str, str], lease: str | None) -> HostRecord:
    try:
        capacity = max(0, int(data.get("capacity", "0")))
    except ValueError:
        capacity = 0
    return HostRecord(
        id=host_id,
        capacity=capacity,
        state=data.get("state", "up") or "up",
        incarnation=data.get("incarnation", ""),
        running=_parse_running(data.get("running")),
        lease=lease,
        registered=bool(data),
    )


_GUARD = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end\n"

_GRANT = _GUARD + """
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[4])
if e <= floor then e = floor + 1; redis.call('SET', KEYS[2], e) end
redis.call('HSET', KEYS[3], ARGV[2], '{"host": ' .. cjson.encode(ARGV[3]) .. ', "epoch": ' .. e .. '}')
return e
"""

_ADOPT = _GUARD + """
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur < tonumber(ARGV[4]) then redis.call('SET', KEYS[2], ARGV[4]) end
return 1
"""

_RAISE_EPOCH = _GUARD + """
local cur = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""

# a fenced single command on KEYS[2]; ARGV[2] is a whitelisted command name
_FENCED = _GUARD + """
local cmd = ARGV[2]
if cmd ~= 'HSET' and cmd ~= 'HDEL' and cmd ~= 'SREM' and cmd ~= 'DEL' then return redis.error_reply('bad') end
if cmd == 'DEL' then return redis.call('DEL', KEYS[2]) end
return redis.call(cmd, KEYS[2], unpack(ARGV, 3))
"""


class Store:
    """Reads and fenced writes of one broker (``broker_id``) in one namespace."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, broker_id: str) -> None:
        self.redis = redis
        self.keys = keys
        self.broker_id = broker_id
        self._grant = redis.register_script(_GRANT)
        self._adopt = redis.register_script(_ADOPT)
        self._raise = redis.register_script(_RAISE_EPOCH)
        self._fenced = redis.register_script(_FENCED)
        #: fenced writes attempted (for tests: a standby must attempt none)
        self.writes = 0

    # reading ------------------------------------------------------------------------------------------

    async def snapshot(self, buckets: int) -> Snapshot:
        """Hosts (records + leases), the assignment, the epoch and the identify queue depth."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(k.hosts)
            pipe.hgetall(k.assignment)
            pipe.get(k.epoch)
            pipe.exists(k.layout)
            for bucket in range(buckets):
                pipe.zcard(k.identify(f"queue:{bucket}"))
            first: list[Any] = await pipe.execute()
        host_ids = sorted(first[0])
        async with self.redis.pipeline(transaction=False) as pipe:
            for host_id in host_ids:
                pipe.hgetall(k.host(host_id))
                pipe.get(k.lease(host_id))
            second: list[Any] = await pipe.execute()
        hosts = {
            host_id: _parse_host(host_id, second[2 * i] or {}, second[2 * i + 1])
            for i, host_id in enumerate(host_ids)
        }
        assignment = dict(g for cid, raw in (first[1] or {}).items() if (g := _parse_grant(cid, raw)) is not None)
        try:
            epoch = int(first[2] or 0)
        except ValueError:
            epoch = 0
        return Snapshot(hosts, assignment, epoch, bool(first[3]), sum(int(n) for n in first[4:]))

    # fenced writes ------------------------------------------------------------------------------------

    def _check(self, result: Any) -> Any:
        if result == -1:
            raise NotLeader(f"the leader lock {self.keys.leader} does not name {self.broker_id}")
        return result

    async def grant(self, cluster_id: int, host: str, min_epoch: int = 0) -> int:
        """INCR epoch (kept above ``min_epoch``) and assign ``cluster_id`` to ``host``; return the epoch."""
        self.writes += 1
        k = self.keys
        result = await self._grant(keys=[k.leader, k.epoch, k.assignment],
                                   args=[self.broker_id, cluster_id, host, min_epoch])
        return int(self._check(result))

    async def grant_many(self, grants: Sequence[tuple[int, str]], min_epoch: int = 0) -> list[int]:
        """Several grants in one round trip (each one atomic and fenced); return their epochs."""
        if not grants:
            return []
        self.writes += len(grants)
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            for cluster_id, host in grants:
                await self._grant(keys=[k.leader, k.epoch, k.assignment],
                                  args=[self.broker_id, cluster_id, host, min_epoch], client=pipe)
            results: list[Any] = await pipe.execute()
        return [int(self._check(r)) for r in results]

    async def adopt(self, cluster_id: int, grant: Grant) -> bool:
        """Write ``grant`` if the cluster is unassigned and raise the epoch to it; False if it was assigned."""
        self.writes += 1
        k = self.keys
        result = await self._adopt(keys=[k.leader, k.epoch, k.assignment],
                                   args=[self.broker_id, cluster_id, grant.to_json(), grant.epoch])
        return bool(self._check(result))

    async def raise_epoch(self, floor: int) -> None:
        """Make ``{ns}:epoch`` at least ``floor`` (it only grows)."""
        self.writes += 1
        await self._raise(keys=[self.keys.leader, self.keys.epoch], args=[self.broker_id, floor])

    async def fenced(self, command: str, key: str, *args: Any) -> Any:
        """One of ``HSET``/``HDEL``/``SREM``/``DEL`` on ``key``, only while this broker holds the lock."""
        self.writes += 1
        result = await self._fenced(keys=[self.keys.leader, key], args=[self.broker_id, command, *args])
        return self._check(result)

    async def revoke(self, cluster_ids: Iterable[int]) -> None:
        """Remove the assignment of ``cluster_ids``."""
        ids = list(cluster_ids)
        if ids:
            await self.fenced("HDEL", self.keys.assignment, *ids)

    async def hset(self, key: str, mapping: dict[str, Any]) -> None:
        """A fenced ``HSET key field value ...``."""
        flat: list[Any] = []
        for name, value in mapping.items():
            flat += [name, value]
        await self.fenced("HSET", key, *flat)
