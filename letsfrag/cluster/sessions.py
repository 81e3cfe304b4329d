"""Session records: what another process needs to RESUME a shard's gateway session, kept in Redis.

``{ns}:sessions:{cid}`` is a hash, shard id -> the JSON of a :class:`SessionRecord`
(``{"session_id", "resume_gateway_url", "seq", "epoch"}`` — never the token). The owning cluster writes it at
every heartbeat (``LETSFRAG_HEARTBEAT_INTERVAL``, well inside Discord's heartbeat interval), whenever a shard
becomes READY or RESUMED, and once more on a graceful stop; the hash expires :data:`SESSION_RECORD_TTL` after
the last write, longer than Discord keeps a session resumable. ``epoch`` tells whose sessions they were. The
next process of the cluster (a new owner after a takeover, or a restart) reads them before it writes its own:
they are the sessions it can replay (:mod:`.replay`).

A graceful stop closes the connections with 1000, which ends the sessions at Discord: the last record then
documents where they stopped but cannot be resumed; a crashed or killed process leaves resumable ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ..keys import Keys

log = logging.getLogger(__name__)

#: seconds a cluster's session records outlive their last write (longer than Discord's resume window)
SESSION_RECORD_TTL = 600.0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One shard's gateway session as stored in ``{ns}:sessions:{cid}`` (the format, both ways)."""

    shard_id: int
    session_id: str
    resume_gateway_url: str
    seq: int
    epoch: int

    def to_json(self) -> str:
        """The hash value (the shard id is the field)."""
        return json.dumps({"session_id": self.session_id, "resume_gateway_url": self.resume_gateway_url,
                           "seq": self.seq, "epoch": self.epoch}, separators=(",", ":"))

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
        assert isinstance(seq, int) and isinstance(epoch, int)
        return cls(shard_id, session_id, url, seq, epoch)


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
    """Reads and writes ``{ns}:sessions:{cid}``."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, cluster_id: int, ttl: float = SESSION_RECORD_TTL) -> None:
        self.redis = redis
        self.key = keys.session_records(cluster_id)
        self.ttl_ms = int(ttl * 1000)

    async def save(self, records: Iterable[SessionRecord]) -> int:
        """Write the records (and renew the expiry) in one transaction; return how many."""
        mapping = {str(record.shard_id): record.to_json() for record in records}
        if not mapping:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping=mapping)  # type: ignore[arg-type]
            pipe.pexpire(self.key, self.ttl_ms)
            await pipe.execute()
        return len(mapping)

    async def load(self) -> dict[int, SessionRecord]:
        """Every readable record by shard id; an unreadable one is logged (naming the key) and skipped."""
        raw: Mapping[Any, Any] = await self.redis.hgetall(self.key)  # type: ignore[misc]
        records: dict[int, SessionRecord] = {}
        for field, value in raw.items():
            try:
                shard_id = int(field)
                records[shard_id] = SessionRecord.from_json(shard_id, value)
            except ValueError as exc:
                log.warning("%s: %s", self.key, exc)
        return records
