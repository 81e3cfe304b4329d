"""The deployment's event log: a capped Redis stream (``{ns}:events``) that also goes to the log.

Every decision and incident (host joined/lost/left, cluster granted/moved/unassigned, crash, restart, leader
change …) is one entry with time, severity, kind, a human sentence and optional context fields.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .contract.keys import Keys
from .logs import mask

log = logging.getLogger("letsfrag.events")

#: how many entries the stream keeps (approximately)
EVENTS_MAXLEN = 5000


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


_LEVELS = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.ERROR: logging.ERROR}


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the events stream."""

    ts: float
    severity: Severity
    kind: str
    message: str
    source: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    id: str = ""

    @classmethod
    def from_stream(cls, entry_id: str, data: dict[str, str]) -> Event:
        extra = {k: v for k, v in data.items() if k not in {"ts", "severity", "kind", "message", "source"}}
        try:
            severity = Severity(data.get("severity", "info"))
        except ValueError:
            severity = Severity.INFO
        try:
            ts = float(data.get("ts", 0))
        except ValueError:
            ts = 0.0
        return cls(ts, severity, data.get("kind", "?"), data.get("message", ""), data.get("source", ""), extra,
                   entry_id)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "severity": str(self.severity), "kind": self.kind,
                "message": self.message, "source": self.source, **self.fields}


async def emit(
    redis: aioredis.Redis,
    keys: Keys,
    severity: Severity,
    kind: str,
    message: str,
    *,
    source: str = "",
    **context: Any,
) -> None:
    """Append an event to the stream and log it; a Redis failure is logged, never raised."""
    message = mask(message)
    log.log(_LEVELS[severity], "%s", message, extra={"event_kind": kind})
    data = {"ts": f"{time.time():.3f}", "severity": str(severity), "kind": kind, "message": message,
            "source": source}
    data.update({k: mask(str(v)) for k, v in context.items() if v is not None})
    try:
        await redis.xadd(keys.events, data, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
    except (RedisError, OSError) as exc:
        log.debug("could not record event %s: %s", kind, exc)


async def recent(redis: aioredis.Redis, keys: Keys, count: int = 200) -> list[Event]:
    """The newest ``count`` events, newest first."""
    entries: Any = await redis.xrevrange(keys.events, count=count)
    return [Event.from_stream(str(entry_id), dict(data)) for entry_id, data in entries or []]
