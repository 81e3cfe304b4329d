"""The packed reads behind :func:`letsfrag.snapshot.picture.read_snapshot`.

A deployment of a thousand clusters is ~80,000 Redis reply items, and redis-py's pure-Python reply parser is the
bottleneck of a big read; these Lua scripts pack hosts, the assignment and batches of clusters into one JSON text
each. Where scripting is refused (an ACL without EVALSHA) every reader falls back to plain pipelined reads.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..contract.keys import Keys
from ..contract.records import Grant
from ..errors import RecordError


def parse_json(value: Any) -> Any:
    """``json.loads`` that answers ``None`` for empty or malformed text."""
    if not value:
        return None
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None


#: per (status key, shards key) pair, one JSON object {"s": {status hash}, "h": {shard id: raw JSON}}
#: (ARGV[1] == "full") or {"s": {...}, "r": <shards reporting "ready">}, all of them joined into ONE JSON array
#: text: a thousand clusters cost a handful of replies instead of ~80,000 (redis-py's pure-Python reply parser
#: is the bottleneck of a big read) and one ``json.loads`` per batch
_PACK_LUA = """
local full = ARGV[1] == 'full'
local out = {}
for i = 1, #KEYS, 2 do
  local st = redis.call('HGETALL', KEYS[i])
  local parts = {}
  for j = 1, #st, 2 do parts[#parts + 1] = cjson.encode(st[j]) .. ':' .. cjson.encode(st[j + 1]) end
  local sh = redis.call('HGETALL', KEYS[i + 1])
  local tail
  if full then
    local sp = {}
    for j = 1, #sh, 2 do sp[#sp + 1] = cjson.encode(sh[j]) .. ':' .. sh[j + 1] end
    tail = '"h":{' .. table.concat(sp, ',') .. '}'
  else
    local ready = 0
    for j = 2, #sh, 2 do
      if string.find(sh[j], '"status"%s*:%s*"ready"') then ready = ready + 1 end
    end
    tail = '"r":' .. ready
  end
  out[#out + 1] = '{"s":{' .. table.concat(parts, ',') .. '},' .. tail .. '}'
end
return '[' .. table.concat(out, ',') .. ']'
"""
#: per (host key, lease key) pair, [{host hash}, lease PTTL], joined into one JSON array text
_PACK_HOSTS_LUA = """
local out = {}
for i = 1, #KEYS, 2 do
  local h = redis.call('HGETALL', KEYS[i])
  local parts = {}
  for j = 1, #h, 2 do parts[#parts + 1] = cjson.encode(h[j]) .. ':' .. cjson.encode(h[j + 1]) end
  out[#out + 1] = '[{' .. table.concat(parts, ',') .. '},' .. redis.call('PTTL', KEYS[i + 1]) .. ']'
end
return '[' .. table.concat(out, ',') .. ']'
"""
#: the assignment hash as one JSON object text {cluster id: claim}; the claims (JSON themselves) go in raw,
#: so a malformed claim makes the text unparsable and the reader falls back to a plain HGETALL
_PACK_ASSIGNMENT_LUA = """
local a = redis.call('HGETALL', KEYS[1])
local parts = {}
for j = 1, #a, 2 do parts[#parts + 1] = cjson.encode(a[j]) .. ':' .. a[j + 1] end
return '{' .. table.concat(parts, ',') .. '}'
"""
#: clusters per script call: keeps each call short for Redis (other clients wait while a script runs)
PACK_BATCH = 200

Packed = tuple[dict[str, str], dict[str, Any] | int]


def _unpack_clusters(blob: Any, count: int) -> list[Packed | None]:
    """One packed batch -> (status, shards) per cluster; all None when the text is not what was expected."""
    data = parse_json(blob) if isinstance(blob, str) else None
    if not isinstance(data, list) or len(data) != count:
        return [None] * count
    out: list[Packed | None] = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("s"), dict):
            out.append(None)
        elif isinstance(item.get("h"), dict):
            out.append((item["s"], item["h"]))
        elif isinstance(item.get("r"), int):
            out.append((item["s"], item["r"]))
        else:
            out.append(None)
    return out


async def read_clusters(redis: aioredis.Redis, keys: Keys, cluster_ids: list[int], full: bool) -> list[Packed]:
    """(status hash, shards hash or READY count) per cluster: packed by a script, or plain HGETALLs."""
    if not cluster_ids:
        return []
    batches = [cluster_ids[start:start + PACK_BATCH] for start in range(0, len(cluster_ids), PACK_BATCH)]
    out: list[Packed | None] = []
    try:
        script = redis.register_script(_PACK_LUA)
        pipe = redis.pipeline(transaction=False)
        for batch in batches:
            batch_keys = []
            for cid in batch:
                batch_keys += [keys.cluster_status(cid), keys.shard_status(cid)]
            await script(keys=batch_keys, args=["full" if full else "summary"], client=pipe)
        for batch, blob in zip(batches, await pipe.execute(), strict=True):
            out += _unpack_clusters(blob, len(batch))
    except ResponseError:  # scripting disabled or denied by an ACL
        out = [None] * len(cluster_ids)
    missing = [i for i, item in enumerate(out) if item is None]
    if missing:  # a malformed shard report makes a packed batch unparsable: read those clusters plainly
        pipe = redis.pipeline(transaction=False)
        for i in missing:
            pipe.hgetall(keys.cluster_status(cluster_ids[i]))
            pipe.hgetall(keys.shard_status(cluster_ids[i]))
        plain = await pipe.execute()
        for n, i in enumerate(missing):
            out[i] = (plain[2 * n] or {}, plain[2 * n + 1] or {})
    return [item if item is not None else ({}, {}) for item in out]


async def read_hosts(redis: aioredis.Redis, keys: Keys, host_ids: list[str]) -> list[tuple[dict[str, str], int]]:
    """(host hash, lease PTTL) per host: packed into one reply by a script, or plain HGETALL + PTTL."""
    if not host_ids:
        return []
    pairs = [key for h in host_ids for key in (keys.host(h), keys.lease(h))]
    try:
        blob = await redis.register_script(_PACK_HOSTS_LUA)(keys=pairs)
    except ResponseError:
        blob = None
    data = parse_json(blob) if isinstance(blob, str) else None
    if isinstance(data, list) and len(data) == len(host_ids) and all(
            isinstance(item, list) and len(item) == 2 and isinstance(item[0], dict) and isinstance(item[1], int)
            for item in data):
        return [(item[0], item[1]) for item in data]
    pipe = redis.pipeline(transaction=False)
    for host_id in host_ids:
        pipe.hgetall(keys.host(host_id))
        pipe.pttl(keys.lease(host_id))
    plain = await pipe.execute()
    return [(plain[2 * i] or {}, plain[2 * i + 1]) for i in range(len(host_ids))]


async def read_assignment(redis: aioredis.Redis, keys: Keys) -> dict[int, Grant | None]:
    """cluster id -> its :class:`~letsfrag.contract.records.Grant` (``None``: unreadable) from the assignment hash."""
    try:
        blob = await redis.register_script(_PACK_ASSIGNMENT_LUA)(keys=[keys.assignment])
    except ResponseError:
        blob = None
    packed = parse_json(blob) if isinstance(blob, str) else None
    if isinstance(packed, dict):
        return {int(k): _grant(v) for k, v in packed.items() if str(k).isdigit()}
    raw = await redis.hgetall(keys.assignment)  # type: ignore[misc]
    return {int(k): _grant(parse_json(v)) for k, v in (raw or {}).items() if str(k).isdigit()}


def _grant(data: Any) -> Grant | None:
    try:
        return Grant.from_data(data)
    except RecordError:
        return None
