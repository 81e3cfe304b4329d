"""The broker's Redis I/O: one snapshot read per tick, and writes fenced by the leader lock.

Every write is a Lua script that first checks ``GET {ns}:leader == broker id`` and does nothing otherwise
(returns -1, raised here as :class:`NotLeader`): a broker that lost the lock cannot write, even if it has
not noticed yet. A grant is one script (``INCR`` epoch + ``HSET`` assignment), so it is atomic.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from letsfrag.contract.handover import SUCCESSORS_FIELD, HandoverRecord, SuccessorReport, parse_successors
from letsfrag.contract.keys import Keys
from letsfrag.contract.records import GRANT_LUA, Grant, LayoutRecord, parse_epoch, parse_int, parse_running
from letsfrag.contract.reshard import SHARDING_REQUIRED_FIELD, ReshardRecord, parse_sharding_required
from letsfrag.contract.states import HostRecordState
from letsfrag.errors import LetsfragError, RecordError

__all__ = ["BrokerSnapshot", "HostRecord", "NotLeader", "RedisDataError", "Store"]

log = logging.getLogger(__name__)


class NotLeader(Exception):
    """A fenced write was refused: the leader lock does not name this broker."""


class RedisDataError(LetsfragError):
    """Redis refused a command because of what a key holds (a ``ResponseError``), not because it is away;
    ``key`` names the key."""

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        super().__init__(f"Redis refused a write to {key}: {detail}")


@dataclass(slots=True)
class HostRecord:
    """One host as read from ``{ns}:host:{id}`` and ``{ns}:lease:{id}``."""

    id: str
    capacity: int = 0
    state: str = HostRecordState.UP
    incarnation: str = ""
    running: dict[int, int] = field(default_factory=dict)
    lease: str | None = None
    registered: bool = True  # the record hash exists
    #: the ``successors`` field: this host's reports of handover successors
    successors: dict[int, SuccessorReport] = field(default_factory=dict)
    #: the record has a ``successors`` field (even ``{}``): its supervisor takes part in handovers; without it
    #: a planned move falls back to revoke-then-grant (an older supervisor)
    handovers: bool = False
    #: the ``sharding_required`` field: granted clusters Discord closed with 4011 (see :mod:`letsfrag.contract.reshard`)
    sharding_required: list[int] = field(default_factory=list)


@dataclass(slots=True)
class BrokerSnapshot:
    """Everything one broker tick reads; ``problems`` are the values that failed validation."""

    hosts: dict[str, HostRecord]
    assignment: dict[int, Grant]
    epoch: int
    layout: dict[str, str]
    identify_depth: int
    problems: list[RecordError] = field(default_factory=list)
    #: ``{ns}:epoch`` holds something that is not an epoch (it must be rewritten before the next grant)
    epoch_invalid: bool = False
    #: ``{ns}:handover``: the planned handovers in progress (readable records only; the rest are problems)
    handovers: dict[int, HandoverRecord] = field(default_factory=dict)
    #: fields of ``{ns}:handover`` that hold no readable record (the leader deletes them)
    handover_invalid: list[str] = field(default_factory=list)
    #: Redis ``TIME`` (epoch seconds) when the snapshot was read: the clock of the handover records
    time: float = 0.0
    #: ``{ns}:identify:budget`` ``total`` and ``remaining`` (``None``: no budget known)
    budget_total: int | None = None
    budget_remaining: int | None = None
    #: ``{ns}:reshard``: the reshard in progress (``None``: none, or unreadable: then ``reshard_invalid``)
    reshard: ReshardRecord | None = None
    reshard_invalid: str | None = None

    @property
    def layout_present(self) -> bool:
        """The layout key exists (gone: Redis lost its data, or someone deleted it)."""
        return bool(self.layout)

    def layout_problem(self, expected: LayoutRecord, key: str) -> str | None:
        """Why the stored layout is not ``expected`` (``None`` when it is, or when it is absent)."""
        if not self.layout:
            return None
        try:
            found = LayoutRecord.from_hash(self.layout, key=key)
        except RecordError as exc:
            return str(exc)
        changed = expected.differences(found)
        if not changed:
            return None
        return f"{key} differs from this broker's layout in " + ", ".join(
            f"{name} ({getattr(found, name)!r}, expected {getattr(expected, name)!r})" for name in changed)


def _parse_assignment(key: str, data: dict[str, str]) -> dict[int, Grant]:
    grants, problems = Grant.parse_all(data, key=key)
    for problem in problems:
        log.warning("ignoring a malformed assignment field: %s", problem)
    return grants


def _budget_int(raw: Any) -> int | None:
    """A number of the identify budget hash (``None`` when missing or not a number: no gate)."""
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _parse_host(host_id: str, key: str, data: dict[str, str], lease: str | None,
                problems: list[RecordError]) -> HostRecord:
    """One host record; a bad ``capacity`` reads as 0 and a bad ``running`` as nothing (both reported)."""
    capacity = 0
    try:
        capacity = parse_int(data.get("capacity", "0"), key=key, field="capacity", maximum=1_000_000)
    except RecordError as exc:
        problems.append(exc)
    running: dict[int, int] = {}
    try:
        running = parse_running(data.get("running"), key=key)
    except RecordError as exc:
        problems.append(exc)
    successors: dict[int, SuccessorReport] = {}
    try:
        successors = parse_successors(data.get(SUCCESSORS_FIELD), key=key)
    except RecordError as exc:
        problems.append(exc)
    oversized: list[int] = []
    try:
        oversized = parse_sharding_required(data.get(SHARDING_REQUIRED_FIELD), key=key)
    except RecordError as exc:
        problems.append(exc)
    return HostRecord(
        id=host_id,
        capacity=capacity,
        state=data.get("state", HostRecordState.UP) or HostRecordState.UP,
        incarnation=data.get("incarnation", ""),
        running=running,
        lease=lease,
        registered=bool(data),
        successors=successors,
        handovers=SUCCESSORS_FIELD in data,
        sharding_required=oversized,
    )


_GUARD = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end\n"
# the epoch key's value as a number: 0 when missing, nil when it is not a decimal integer (then it is rewritten
# from the floor, never passed to INCR or compared: a hand-written "abc" must not break every grant)
_EPOCH_OF = """
local function epoch_of(key)
  local v = redis.call('GET', key)
  if not v then return 0 end
  if string.match(v, '^%d+$') and #v <= 14 then return tonumber(v) end
  return nil
end
"""

_GRANT = _GUARD + _EPOCH_OF + GRANT_LUA + """
local floor = tonumber(ARGV[4])
local cur = epoch_of(KEYS[2])
if cur == nil or cur < floor then cur = floor end
local e = cur + 1
redis.call('SET', KEYS[2], e)
redis.call('HSET', KEYS[3], ARGV[2], grant_json(ARGV[3], e))
return e
"""

_ADOPT = _GUARD + _EPOCH_OF + """
if redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
local cur = epoch_of(KEYS[2])
if cur == nil or cur < tonumber(ARGV[4]) then redis.call('SET', KEYS[2], ARGV[4]) end
return 1
"""

_RAISE_EPOCH = _GUARD + _EPOCH_OF + """
local cur = epoch_of(KEYS[2])
if cur == nil or cur < tonumber(ARGV[2]) then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""

# the field cid of hash key (a grant, or a handover record: both have host and epoch) names host at epoch
# (decoded leniently: any bad value is "no")
_NAMES = GRANT_LUA + """
local function names(key, cid, host, epoch)
  return grant_names(redis.call('HGET', key, cid), host, epoch)
end
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: leader, epoch, assignment, handover; ARGV: id, cluster, target, from host, from epoch, reason, timeout,
# epoch floor. Only while the assignment names the source at its epoch and no record exists; returns the record
_BEGIN = _GUARD + _EPOCH_OF + _NAMES + """
if not names(KEYS[3], ARGV[2], ARGV[4], ARGV[5]) then return 0 end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 1 then return 0 end
local floor = tonumber(ARGV[8])
local e = epoch_of(KEYS[2])
if e == nil or e < floor then e = floor end
e = e + 1
redis.call('SET', KEYS[2], e)
local now = now_s()
local rec = cjson.encode({host = ARGV[3], epoch = e, from_host = ARGV[4], from_epoch = tonumber(ARGV[5]),
                          reason = ARGV[6], state = 'preparing', started = now, deadline = now + tonumber(ARGV[7])})
redis.call('HSET', KEYS[4], ARGV[2], rec)
return rec
"""

# KEYS: leader, assignment, handover; ARGV: id, cluster, target, epoch, from host, from epoch, stop timeout.
# Only while the record names the target at the epoch (preparing) and the assignment still names the source at
# its epoch: the assignment names the target at the new epoch, the record says switched; returns the record
_SWITCH = _GUARD + _NAMES + """
if not names(KEYS[3], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
local rec = cjson.decode(redis.call('HGET', KEYS[3], ARGV[2]))
if rec.state ~= 'preparing' then return 0 end
if not names(KEYS[2], ARGV[2], ARGV[5], ARGV[6]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], grant_json(ARGV[3], ARGV[4]))
local now = now_s()
rec.state = 'switched'
rec.switched = now
rec.deadline = now + tonumber(ARGV[7])
local out = cjson.encode(rec)
redis.call('HSET', KEYS[3], ARGV[2], out)
return out
"""

# KEYS: leader, handover; ARGV: id, cluster, epoch. Deletes the record only if it is still the one of that epoch
_END = _GUARD + """
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return 0 end
local ok, rec = pcall(cjson.decode, raw)
if ok and type(rec) == 'table' and tonumber(rec.epoch) ~= tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""

# KEYS: leader, epoch, handover, reshard, layout; ARGV: id, epoch floor, timeout, from generation, generation,
# new layout (JSON object), shard_count, shards_per_cluster, cluster_base, retiring ids (JSON list), then pairs
# cluster id, host. Only while no reshard runs, the live layout is the from generation and no new cluster has a
# handover record: one preparing record per new cluster (a new epoch each) and the reshard record; returns it
_RESHARD_BEGIN = _GUARD + _EPOCH_OF + _NAMES + """
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local live = tonumber(redis.call('HGET', KEYS[5], 'generation') or '1')
if live ~= tonumber(ARGV[4]) then return 0 end
for i = 11, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then return 0 end
end
local floor = tonumber(ARGV[2])
local e = epoch_of(KEYS[2])
if e == nil or e < floor then e = floor end
local now = now_s()
local deadline = now + tonumber(ARGV[3])
local clusters = {}
for i = 11, #ARGV, 2 do
  e = e + 1
  redis.call('HSET', KEYS[3], ARGV[i], cjson.encode({
    host = ARGV[i + 1], epoch = e, from_host = '', from_epoch = 0, reason = 'reshard', state = 'preparing',
    started = now, deadline = deadline, generation = tonumber(ARGV[5]), shard_count = tonumber(ARGV[7]),
    shards_per_cluster = tonumber(ARGV[8]), cluster_base = tonumber(ARGV[9])}))
  clusters[ARGV[i]] = {host = ARGV[i + 1], epoch = e}
end
redis.call('SET', KEYS[2], e)
local out = cjson.encode({generation = tonumber(ARGV[5]), from_generation = tonumber(ARGV[4]),
                          state = 'preparing', started = now, deadline = deadline, layout = cjson.decode(ARGV[6]),
                          clusters = clusters, retiring = cjson.decode(ARGV[10])})
redis.call('SET', KEYS[4], out)
return out
"""

# KEYS: leader, assignment, handover, reshard, layout; ARGV: id, generation, stop timeout. Only while the reshard
# of that generation is preparing and every new cluster's record still names its host and epoch: at one instant
# the new clusters are granted, the old ones' grants deleted, the records switched and the layout replaced
_RESHARD_SWITCH = _GUARD + _NAMES + """
local raw = redis.call('GET', KEYS[4])
if not raw then return 0 end
local r = cjson.decode(raw)
if r.state ~= 'preparing' or tonumber(r.generation) ~= tonumber(ARGV[2]) then return 0 end
for cid, g in pairs(r.clusters) do
  if not names(KEYS[3], cid, g.host, g.epoch) then return 0 end
end
for cid, g in pairs(r.clusters) do
  redis.call('HSET', KEYS[2], cid, grant_json(g.host, g.epoch))
  local h = cjson.decode(redis.call('HGET', KEYS[3], cid))
  h.state = 'switched'
  redis.call('HSET', KEYS[3], cid, cjson.encode(h))
end
for _, cid in ipairs(r.retiring) do redis.call('HDEL', KEYS[2], string.format('%d', cid)) end
redis.call('DEL', KEYS[5])
for k, v in pairs(r.layout) do redis.call('HSET', KEYS[5], k, v) end
local now = now_s()
r.state = 'switched'
r.switched = now
r.deadline = now + tonumber(ARGV[3])
local out = cjson.encode(r)
redis.call('SET', KEYS[4], out)
return out
"""

# KEYS: leader, handover, reshard, then keys to delete; ARGV: id, generation. Ends the reshard of that generation
# (done or rolled back): its clusters' handover records (only reshard records of that generation), the given keys
# and the reshard record are deleted
_RESHARD_END = _GUARD + """
local raw = redis.call('GET', KEYS[3])
if not raw then return 0 end
local r = cjson.decode(raw)
if tonumber(r.generation) ~= tonumber(ARGV[2]) then return 0 end
for cid, _ in pairs(r.clusters) do
  local h = redis.call('HGET', KEYS[2], cid)
  if h then
    local ok, v = pcall(cjson.decode, h)
    if ok and type(v) == 'table' and tonumber(v.generation) == tonumber(ARGV[2]) then
      redis.call('HDEL', KEYS[2], cid)
    end
  end
end
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('DEL', KEYS[3])
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
        self._begin = redis.register_script(_BEGIN)
        self._switch = redis.register_script(_SWITCH)
        self._end = redis.register_script(_END)
        self._reshard_begin = redis.register_script(_RESHARD_BEGIN)
        self._reshard_switch = redis.register_script(_RESHARD_SWITCH)
        self._reshard_end = redis.register_script(_RESHARD_END)
        #: fenced writes attempted (for tests: a standby must attempt none)
        self.writes = 0

    # reading ------------------------------------------------------------------------------------------

    async def snapshot(self, buckets: int) -> BrokerSnapshot:
        """Hosts (records + leases), the assignment, the epoch and the identify queue depth."""
        try:
            return await self._snapshot(buckets)
        except ResponseError as exc:  # e.g. WRONGTYPE: redis-py's message names the command and its key
            raise RedisDataError("a key the tick reads", str(exc)) from exc

    async def _snapshot(self, buckets: int) -> BrokerSnapshot:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(k.hosts)
            pipe.hgetall(k.assignment)
            pipe.get(k.epoch)
            pipe.hgetall(k.layout)
            pipe.hgetall(k.handover)
            pipe.time()
            pipe.hmget(k.identify("budget"), ["total", "remaining"])
            pipe.get(k.reshard)
            for bucket in range(buckets):
                pipe.zcard(k.identify(f"queue:{bucket}"))
            first: list[Any] = await pipe.execute()
        host_ids = sorted(first[0])
        async with self.redis.pipeline(transaction=False) as pipe:
            for host_id in host_ids:
                pipe.hgetall(k.host(host_id))
                pipe.get(k.lease(host_id))
            second: list[Any] = await pipe.execute()
        problems: list[RecordError] = []
        hosts = {
            host_id: _parse_host(host_id, k.host(host_id), second[2 * i] or {}, second[2 * i + 1], problems)
            for i, host_id in enumerate(host_ids)
        }
        assignment = _parse_assignment(k.assignment, first[1] or {})
        epoch, epoch_invalid = 0, False
        try:
            epoch = parse_epoch(first[2], key=k.epoch)
        except RecordError as exc:
            problems.append(exc)
            epoch_invalid = True
        raw_handovers: dict[str, str] = first[4] or {}
        handovers, bad = HandoverRecord.parse_all(raw_handovers, key=k.handover)
        problems += bad
        good = {str(c) for c in handovers}
        bad_fields = sorted(f for f in raw_handovers if f not in good)
        seconds, micros = first[5]
        total, remaining = (_budget_int(v) for v in first[6] or (None, None))
        reshard, reshard_invalid = None, None
        if first[7] is not None:
            try:
                reshard = ReshardRecord.from_json(first[7], key=k.reshard)
            except RecordError as exc:
                reshard_invalid = str(exc)
        return BrokerSnapshot(hosts, assignment, epoch, dict(first[3] or {}), sum(int(n) for n in first[8:]),
                        problems, epoch_invalid, handovers=handovers, handover_invalid=bad_fields,
                        time=int(seconds) + int(micros) / 1e6,
                        budget_total=total, budget_remaining=remaining, reshard=reshard,
                        reshard_invalid=reshard_invalid)

    # fenced writes ------------------------------------------------------------------------------------

    async def _script(self, script: Any, keys: list[str], args: list[Any], **kwargs: Any) -> Any:
        """Run a fenced script; a ``ResponseError`` (what a key holds, not a lost connection) becomes a
        :class:`RedisDataError` naming the keys it touches."""
        try:
            return await script(keys=keys, args=args, **kwargs)
        except ResponseError as exc:
            raise RedisDataError(", ".join(keys[1:]), str(exc)) from exc

    def _check(self, result: Any) -> Any:
        if result == -1:
            raise NotLeader(f"the leader lock {self.keys.leader} does not name {self.broker_id}")
        return result

    async def grant(self, cluster_id: int, host: str, min_epoch: int = 0) -> int:
        """INCR epoch (kept above ``min_epoch``) and assign ``cluster_id`` to ``host``; return the epoch."""
        self.writes += 1
        k = self.keys
        result = await self._script(self._grant, [k.leader, k.epoch, k.assignment],
                                    [self.broker_id, cluster_id, host, min_epoch])
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
            try:
                results: list[Any] = await pipe.execute()
            except ResponseError as exc:
                raise RedisDataError(f"{k.epoch}, {k.assignment}", str(exc)) from exc
        return [int(self._check(r)) for r in results]

    async def adopt(self, cluster_id: int, grant: Grant) -> bool:
        """Write ``grant`` if the cluster is unassigned and raise the epoch to it; False if it was assigned."""
        self.writes += 1
        k = self.keys
        result = await self._script(self._adopt, [k.leader, k.epoch, k.assignment],
                                    [self.broker_id, cluster_id, grant.to_json(), grant.epoch])
        return bool(self._check(result))

    async def raise_epoch(self, floor: int) -> None:
        """Make ``{ns}:epoch`` at least ``floor`` (it only grows; a value that is no epoch becomes ``floor``)."""
        self.writes += 1
        await self._script(self._raise, [self.keys.leader, self.keys.epoch], [self.broker_id, floor])

    async def fenced(self, command: str, key: str, *args: Any) -> Any:
        """One of ``HSET``/``HDEL``/``SREM``/``DEL`` on ``key``, only while this broker holds the lock."""
        self.writes += 1
        result = await self._script(self._fenced, [self.keys.leader, key], [self.broker_id, command, *args])
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

    # handovers ----------------------------------------------------------------------------------------

    def _record(self, cluster: int, raw: Any) -> HandoverRecord | None:
        if raw in (0, None):
            return None
        return HandoverRecord.from_json(cluster, raw, key=self.keys.handover)

    async def begin_handover(self, cluster: int, target: str, source: Grant, reason: str, timeout: float,
                             min_epoch: int = 0) -> HandoverRecord | None:
        """Write a ``preparing`` record for ``cluster`` with a new epoch (kept above ``min_epoch``) from
        ``source`` to ``target``, due in ``timeout`` seconds (Redis ``TIME``); ``None`` when the assignment no
        longer names ``source`` or a record exists already."""
        self.writes += 1
        k = self.keys
        result = await self._script(self._begin, [k.leader, k.epoch, k.assignment, k.handover],
                                    [self.broker_id, cluster, target, source.host, source.epoch, reason, timeout,
                                     min_epoch])
        return self._record(cluster, self._check(result))

    async def switch_handover(self, record: HandoverRecord, stop_timeout: float) -> HandoverRecord | None:
        """Assign ``record.cluster`` to its target at the record's epoch and mark the record ``switched`` (the
        source has ``stop_timeout`` seconds to confirm the stop); ``None`` when the record or the assignment
        changed (nothing written)."""
        self.writes += 1
        k = self.keys
        result = await self._script(self._switch, [k.leader, k.assignment, k.handover],
                                    [self.broker_id, record.cluster, record.host, record.epoch, record.from_host,
                                     record.from_epoch, stop_timeout])
        return self._record(record.cluster, self._check(result))

    async def end_handover(self, record: HandoverRecord) -> bool:
        """Delete the record (done or rolled back) if it is still the one of ``record.epoch``."""
        self.writes += 1
        k = self.keys
        result = await self._script(self._end, [k.leader, k.handover], [self.broker_id, record.cluster, record.epoch])
        return bool(self._check(result))

    # reshards ----------------------------------------------------------------------------------------

    def _reshard(self, raw: Any) -> ReshardRecord | None:
        if raw in (0, None):
            return None
        return ReshardRecord.from_json(raw, key=self.keys.reshard)

    async def begin_reshard(self, live: LayoutRecord, new: LayoutRecord, targets: Mapping[int, str], timeout: float,
                            min_epoch: int = 0) -> ReshardRecord | None:
        """Prepare generation ``new.generation`` beside ``live``: a ``preparing`` handover record with a new epoch
        for each new cluster on its target host, and the reshard record due in ``timeout`` seconds (Redis
        ``TIME``); ``None`` when a reshard runs already, the live layout is another generation or a new cluster
        has a handover record."""
        self.writes += 1
        k = self.keys
        args: list[Any] = [self.broker_id, min_epoch, timeout, live.generation, new.generation,
                           json.dumps(new.to_hash()), new.shard_count, new.shards_per_cluster, new.cluster_base,
                           json.dumps(list(live.cluster_ids))]
        for cid, host in sorted(targets.items()):
            args += [cid, host]
        result = await self._script(self._reshard_begin, [k.leader, k.epoch, k.handover, k.reshard, k.layout], args)
        return self._reshard(self._check(result))

    async def switch_reshard(self, record: ReshardRecord, stop_timeout: float) -> ReshardRecord | None:
        """Switch every cluster of ``record``'s generation at one instant (grants, old grants deleted, records
        switched, layout replaced); ``None`` when the record or a new cluster's handover changed (nothing
        written)."""
        self.writes += 1
        k = self.keys
        result = await self._script(self._reshard_switch, [k.leader, k.assignment, k.handover, k.reshard, k.layout],
                                    [self.broker_id, record.generation, stop_timeout])
        return self._reshard(self._check(result))

    async def end_reshard(self, record: ReshardRecord, delete: Sequence[str] = ()) -> bool:
        """End ``record``'s reshard (done or rolled back): delete its clusters' handover records, the keys
        ``delete`` and the reshard record; False when the record is another generation's or gone."""
        self.writes += 1
        k = self.keys
        result = await self._script(self._reshard_end, [k.leader, k.handover, k.reshard, *delete],
                                    [self.broker_id, record.generation])
        return bool(self._check(result))

    async def shard_guilds(self, cluster_ids: Iterable[int]) -> dict[int, int]:
        """The guild count of each shard, as the clusters ``cluster_ids`` last reported it in
        ``{ns}:status:shards:{id}`` (a shard without a readable count is left out)."""
        ids = list(cluster_ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.keys.shard_status(cid))
            raw: list[Any] = await pipe.execute()
        out: dict[int, int] = {}
        for reports in raw:
            for shard, text in (reports or {}).items():
                try:
                    guilds = json.loads(text).get("guilds")
                    if isinstance(guilds, int) and not isinstance(guilds, bool) and guilds >= 0:
                        out[int(shard)] = guilds
                except (ValueError, TypeError, AttributeError):
                    continue
        return out
