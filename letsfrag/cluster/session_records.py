"""Session records: what another process needs to RESUME a shard's gateway session, kept in Redis.

``{ns}:sessions:{cid}`` is a hash, shard id -> the JSON of a :class:`SessionRecord`
(``{"session_id", "resume_gateway_url", "seq", "epoch"}`` — never the token). The owning cluster writes it at
every heartbeat (``LETSFRAG_HEARTBEAT_INTERVAL``, well inside Discord's heartbeat interval), whenever a shard
becomes READY or RESUMED, and once more on a graceful stop; the hash expires :data:`SESSION_RECORD_TTL` after
the last write, longer than Discord keeps a session resumable. ``epoch`` tells whose sessions they were. The
next process of the cluster (a new owner after a takeover, or a restart) reads them before it writes its own:
they are the sessions it can replay (:mod:`.replay`).

A graceful stop closes the connections with 1000, which ends the sessions at Discord: *before* that close the
process marks its records ``"closed": true`` (:meth:`SessionStore.end`) and adds a ``closed:<session_id>`` field
(for a successor that already overwrote the record), so nobody tries to RESUME them (it would get op 9). A
crashed, killed, fenced or orphaned process leaves resumable ones (it closes with a non-1000 code, or not at all).

Two rules are enforced in Redis, in one script per write (:data:`SAVE_SCRIPT`), not by the writer's good faith:

- a record is never replaced by one of an **older epoch** (a woken or stopping old process cannot overwrite its
  successor's records), and a record marked closed is not reopened by a late write of the same session;
- with an ``owner`` (host, epoch) the records are written only while ``{ns}:assignment`` grants the cluster to
  that host and epoch: a process whose cluster moved writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ..contract.keys import Keys
from ..contract.records import GRANT_LUA

log = logging.getLogger(__name__)

#: seconds a cluster's session records outlive their last write (longer than Discord's resume window)
SESSION_RECORD_TTL = 600.0
#: prefix of the hash fields that mark a session ended by a graceful stop (``closed:<session_id>`` -> ``1``)
CLOSED_PREFIX = "closed:"

#: KEYS: sessions hash, assignment hash; ARGV: cluster id, host ('' = no owner check), epoch, ttl ms, then pairs
#: (shard field, record JSON). Returns the number written, or -1 when the assignment does not name host/epoch.
SAVE_SCRIPT = GRANT_LUA + """
local epoch = tonumber(ARGV[3])
if ARGV[2] ~= '' and not grant_names(redis.call('HGET', KEYS[2], ARGV[1]), ARGV[2], epoch) then
  return -1
end
local written = 0
for i = 5, #ARGV, 2 do
  local keep = false
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local ok, rec = pcall(cjson.decode, old)
    if ok and type(rec) == 'table' then
      local new = cjson.decode(ARGV[i + 1])
      local old_epoch = tonumber(rec['epoch'])
      if old_epoch and old_epoch > epoch then keep = true end
      if rec['closed'] == true and rec['session_id'] == new['session_id'] then keep = true end
    end
  end
  if not keep then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    written = written + 1
  end
end
if written > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return written
"""

#: KEYS: sessions hash; ARGV: ttl ms, then triples (shard field, session id, closed record JSON): the session is
#: marked ended (``closed:<id>``) and its record rewritten closed if the field still holds that session.
END_SCRIPT = """
for i = 2, #ARGV, 3 do
  redis.call('HSET', KEYS[1], 'closed:' .. ARGV[i + 1], '1')
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local ok, rec = pcall(cjson.decode, old)
    if ok and type(rec) == 'table' and rec['session_id'] == ARGV[i + 1] then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One shard's gateway session as stored in ``{ns}:sessions:{cid}`` (the format, both ways)."""

    shard_id: int
    session_id: str
    resume_gateway_url: str
    seq: int
    epoch: int
    #: ended by a graceful stop (closed with 1000): Discord no longer resumes it
    closed: bool = False

    def to_json(self) -> str:
        """The hash value (the shard id is the field); ``"closed": true`` only when closed."""
        data: dict[str, Any] = {"session_id": self.session_id, "resume_gateway_url": self.resume_gateway_url,
                                "seq": self.seq, "epoch": self.epoch}
        if self.closed:
            data["closed"] = True
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, shard_id: int, raw: str | bytes) -> SessionRecord:
        """Parse one hash value; ``ValueError`` names the shard and what is wrong."""
        try:
            data = json.loads(raw)
        except ValueError:
            raise ValueError(f"session record of shard {shard_id} is not JSON: {str(raw)[:80]!r}") from None
        if not isinstance(data, dict):
            raise ValueError(f"session record of shard {shard_id} is not a JSON object")
        session_id, url, seq, epoch = (data.get(k) for k in ("session_id", "resume_gateway_url", "seq", "epoch"))
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session record of shard {shard_id}: session_id must be a non-empty string")
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ValueError(f"session record of shard {shard_id}: resume_gateway_url must be a ws:// or wss:// "
                             f"URL, found {url!r}")
        for name, value in (("seq", seq), ("epoch", epoch)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"session record of shard {shard_id}: {name} must be an integer ≥ 0, "
                                 f"found {value!r}")
        closed = data.get("closed", False)
        if not isinstance(closed, bool):
            raise ValueError(f"session record of shard {shard_id}: closed must be true or false, found {closed!r}")
        assert isinstance(seq, int) and isinstance(epoch, int)
        return cls(shard_id, session_id, url, seq, epoch, closed)


def live_sessions(client: Any, shard_ids: Iterable[int], epoch: int) -> list[SessionRecord]:
    """The records of the shards of ``client`` (a discord.py ``AutoShardedClient``) that have a session now."""
    shards = getattr(client, "shards", {})
    records = []
    for sid in shard_ids:
        info = shards.get(sid)
        ws = getattr(getattr(info, "_parent", None), "ws", None)
        session_id, seq = getattr(ws, "session_id", None), getattr(ws, "sequence", None)
        if not isinstance(session_id, str) or not isinstance(seq, int):
            continue
        records.append(SessionRecord(sid, session_id, str(getattr(ws, "gateway", "")), seq, epoch))
    return records


class SessionStore:
    """Reads and writes ``{ns}:sessions:{cid}``.

    ``owner`` (host id, epoch): :meth:`save` writes only while the assignment grants the cluster to it."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, cluster_id: int, ttl: float = SESSION_RECORD_TTL, *,
                 owner: tuple[str, int] | None = None) -> None:
        self.redis = redis
        self.key = keys.session_records(cluster_id)
        self.assignment_key = keys.assignment
        self.cluster_id = cluster_id
        self.owner = owner
        self.ttl_ms = int(ttl * 1000)

    async def save(self, records: Iterable[SessionRecord]) -> int:
        """Write the records (and renew the expiry) in one script; return how many were written: a record of an
        older epoch than the stored one is not, nor anything when ``owner`` no longer holds the cluster (-1)."""
        records = list(records)
        if not records:
            return 0
        epochs = {record.epoch for record in records}
        host, epoch = self.owner if self.owner is not None else ("", max(epochs))
        if len(epochs) > 1 or epoch not in epochs:
            raise ValueError(f"{self.key}: records of epochs {sorted(epochs)} saved as epoch {epoch}")
        args: list[str | int] = [str(self.cluster_id), host, epoch, self.ttl_ms]
        for record in records:
            args += [str(record.shard_id), record.to_json()]
        result = await self.redis.eval(SAVE_SCRIPT, 2, self.key, self.assignment_key, *args)  # type: ignore[misc]
        return int(result)

    async def end(self, records: Iterable[SessionRecord]) -> int:
        """Mark the sessions ended (a graceful stop, before closing them with 1000): ``closed:<id>`` fields, and
        each record rewritten closed where it still holds that session (never a successor's). Returns how many."""
        args: list[str | int] = [self.ttl_ms]
        count = 0
        for record in records:
            closed = dataclasses.replace(record, closed=True)
            args += [str(record.shard_id), record.session_id, closed.to_json()]
            count += 1
        if count:
            await self.redis.eval(END_SCRIPT, 1, self.key, *args)  # type: ignore[misc]
        return count

    async def load(self) -> dict[int, SessionRecord]:
        """Every readable record by shard id (closed when its session was marked ended); an unreadable one is
        logged (naming the key) and skipped."""
        raw: Mapping[Any, Any] = await self.redis.hgetall(self.key)  # type: ignore[misc]
        ended = {str(field)[len(CLOSED_PREFIX):] for field in raw if str(field).startswith(CLOSED_PREFIX)}
        records: dict[int, SessionRecord] = {}
        for field, value in raw.items():
            if str(field).startswith(CLOSED_PREFIX):
                continue
            try:
                shard_id = int(field)
                record = SessionRecord.from_json(shard_id, value)
            except ValueError as exc:
                log.warning("%s: %s", self.key, exc)
                continue
            records[shard_id] = dataclasses.replace(record, closed=True) if record.session_id in ended else record
        return records

    async def ended(self, session_ids: Iterable[str]) -> set[str]:
        """Which of these sessions a graceful stop has marked ended since they were read."""
        ids = list(session_ids)
        if not ids:
            return set()
        found = await self.redis.hmget(self.key, [CLOSED_PREFIX + sid for sid in ids])  # type: ignore[misc]
        return {sid for sid, value in zip(ids, found, strict=True) if value is not None}


def resumable(records: Mapping[int, SessionRecord], shard_ids: Iterable[int], epoch: int) -> list[SessionRecord]:
    """The records a new process of the cluster (epoch ``epoch``) may replay: its shards', not closed, not of a
    newer epoch (a newer record means this process is already stale), in shard order."""
    wanted = set(shard_ids)
    return [record for sid, record in sorted(records.items())
            if sid in wanted and not record.closed and record.epoch <= epoch]


async def close_resumably(client: Any, code: int = 4000) -> int:
    """Close every gateway connection of ``client`` (a discord.py ``AutoShardedClient``) with ``code`` — not 1000,
    which would end the sessions at Discord — so the next process of the cluster can RESUME (replay) them; each
    shard's worker is cancelled first so discord.py does not reconnect. Returns how many were closed."""
    closed = 0
    for info in list(getattr(client, "shards", {}).values()):
        parent = getattr(info, "_parent", None)
        ws = getattr(parent, "ws", None)
        if parent is None or ws is None:
            continue
        cancel = getattr(parent, "_cancel_task", None)
        if callable(cancel):
            cancel()
        try:
            await ws.close(code=code)
            closed += 1
        except Exception as exc:  # a connection already gone is as good as closed
            log.debug("closing shard %s's connection with %s: %r", getattr(info, "id", "?"), code, exc)
    return closed
