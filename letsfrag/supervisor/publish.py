"""Writes what the supervisor knows into Redis (docs/redis.md, "Status"), off the decision loop.

The manager only *marks* things (a status changed, a restart to record, an event); one flusher task writes
them in pipelined batches. While Redis is away, statuses stay marked and are written when it returns;
list entries are kept up to a bound, events are logged locally and dropped from the stream.

Every string that goes to Redis passes :func:`letsfrag.logs.mask` first: crash output and exception text may
quote the token, a Redis password or the signing secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from redis.exceptions import RedisError

from letsfrag.bus import Bus
from letsfrag.contract.envelope import MessageType
from letsfrag.errors import BusError
from letsfrag.events import EVENTS_MAXLEN, Severity
from letsfrag.logs import mask, mask_value
from letsfrag.supervisor.state import ClusterView

__all__ = ["ERRORS_KEEP", "METRICS_KEEP", "RESTARTS_KEEP", "Publisher", "status_fields"]

log = logging.getLogger(__name__)
events_log = logging.getLogger("letsfrag.events")
_LEVELS = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.ERROR: logging.ERROR}

RESTARTS_KEEP = 50
METRICS_KEEP = 120
ERRORS_KEEP = 20
MAX_PENDING = 5000
_ERRORS = (RedisError, OSError, TimeoutError, BusError)


def _num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def status_fields(view: ClusterView, host_id: str, now: float) -> dict[str, str]:
    """The ``{ns}:status:cluster:{cid}`` hash of one cluster (every value a string, unknown = ``""``)."""
    return {
        "cluster_id": str(view.cluster_id),
        "host": host_id,
        "epoch": _num(view.epoch),
        "state": str(view.state),
        "pid": _num(view.pid),
        "shard_ids": json.dumps(list(view.shard_ids)),
        "shard_range": view.shard_range,
        "restarts": str(view.restarts),
        "started_at": _num(view.started_at),
        "ready_at": _num(view.ready_at),
        "cpu_percent": f"{view.cpu_percent:.1f}",
        "rss": str(view.rss),
        "pss": str(view.pss),
        "uss": str(view.uss),
        "threads": str(view.threads),
        "last_heartbeat": _num(view.last_heartbeat),
        "exit_code": _num(view.exit_code),
        "exit_signal": _num(view.exit_signal),
        "reason": mask(view.reason),
        "last_error": mask(view.last_error),
        "next_restart_at": _num(view.next_restart_at),
        "guilds": _num(view.guilds),
        "latency": _num(view.latency, 4),
        "log_errors": str(view.log_errors),
        "updated_at": f"{now:.3f}",
    }



class Publisher:
    """Batches status writes, list entries, events and messages into pipelined flushes."""

    def __init__(self, bus: Bus, host_id: str, view_of: Callable[[int], ClusterView | None],
                 now: Callable[[], float]) -> None:
        self.bus = bus
        self.keys = bus.keys
        self.host_id = host_id
        self._view_of = view_of
        self._now = now
        self._dirty: set[int] = set()
        self._lists: deque[tuple[str, str, int]] = deque(maxlen=MAX_PENDING)
        self._host: dict[str, str] = {}
        self._messages: deque[tuple[MessageType, dict[str, Any]]] = deque(maxlen=1000)
        self._events: deque[dict[str, str]] = deque(maxlen=1000)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.flushes = 0

    # marking (called from the decision loop; never blocks) -----------------------------------------------

    def status(self, cluster_id: int) -> None:
        self._dirty.add(cluster_id)
        self._kick()

    def restart(self, cluster_id: int, entry: dict[str, Any]) -> None:
        """An entry for the cluster's restart history (newest first)."""
        self._lists.append((self.keys.cluster_restarts(cluster_id), json.dumps(mask_value(entry)), RESTARTS_KEEP))
        self._kick()

    def metric(self, cluster_id: int, entry: dict[str, Any]) -> None:
        self._lists.append((self.keys.cluster_metrics(cluster_id), json.dumps(entry), METRICS_KEEP))
        self._kick()

    def error(self, cluster_id: int, text: str) -> None:
        """Crash output or an exception of the cluster for ``{ns}:errors:cluster:{cid}`` (secrets masked)."""
        entry = json.dumps({"ts": round(self._now(), 3), "text": mask(text)})
        self._lists.append((self.keys.cluster_errors(cluster_id), entry, ERRORS_KEEP))
        self._kick()

    def host_fields(self, fields: dict[str, str]) -> None:
        """Fields of this host's record to write (``running`` after a revoke completes)."""
        self._host.update(mask_value(fields))
        self._kick()

    def message(self, type: MessageType, payload: dict[str, Any]) -> None:
        """A message for the broker inbox, sent after the pending key writes (e.g. ``cluster_stopped``)."""
        self._messages.append((type, mask_value(payload)))
        self._kick()

    def event(self, severity: Severity, kind: str, message: str, **context: Any) -> None:
        """Log an event now and append it to ``{ns}:events`` (kept until Redis takes it, like statuses)."""
        message = mask(message)
        events_log.log(_LEVELS[severity], "%s", message, extra={"event_kind": kind})
        data = {"ts": f"{self._now():.3f}", "severity": str(severity), "kind": kind, "message": message,
                "source": f"host:{self.host_id}", "host": self.host_id}
        data.update({k: mask(str(v)) for k, v in context.items() if v is not None})
        self._events.append(data)
        self._kick()

    def _kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    # flushing ------------------------------------------------------------------------------------------

    async def run(self, retry: float = 0.5) -> None:
        """Flush whenever something is marked; retry after ``retry`` seconds while Redis is away."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except _ERRORS as exc:
                log.debug("status flush failed (%s); retrying", exc)
                self._wake.set()
                await asyncio.sleep(retry)
                continue
            if not self._wake.is_set():
                self._idle.set()

    async def flush(self) -> None:
        """Write everything marked so far (raises on a Redis error; unwritten items stay marked)."""
        dirty, self._dirty = self._dirty, set()
        lists = list(self._lists)
        events = list(self._events)
        host, self._host = self._host, {}
        now = self._now()
        pipe = self.bus.redis.pipeline(transaction=False)
        for cluster_id in sorted(dirty):
            view = self._view_of(cluster_id)
            if view is not None:
                fields = status_fields(view, self.host_id, now)
                pipe.hset(self.keys.cluster_status(cluster_id), mapping=cast(Any, fields))
        for key, value, keep in lists:
            pipe.lpush(key, value)
            pipe.ltrim(key, 0, keep - 1)
        if host:
            pipe.hset(self.keys.host(self.host_id), mapping=cast(Any, host))
        for data in events:
            pipe.xadd(self.keys.events, cast(Any, data), maxlen=EVENTS_MAXLEN, approximate=True)
        try:
            if len(pipe):
                async with asyncio.timeout(5.0):
                    await pipe.execute()
        except BaseException:
            self._dirty |= dirty
            self._host = {**host, **self._host}
            raise
        for _ in lists:
            self._lists.popleft()
        for _ in events:
            self._events.popleft()
        self.flushes += 1
        await self._send_messages()
        if dirty or lists or events:
            with contextlib.suppress(Exception):
                await self.bus.publish(self.keys.doorbell, MessageType.DOORBELL, {"host": self.host_id})

    async def _send_messages(self) -> None:
        while self._messages:
            type, payload = self._messages[0]
            await self.bus.publish(self.keys.broker_inbox, type, payload)  # BusError: retried on the next flush
            self._messages.popleft()

    async def drain(self, timeout: float = 2.0) -> bool:
        """Wait until everything marked so far is written (or ``timeout``); True when idle."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
