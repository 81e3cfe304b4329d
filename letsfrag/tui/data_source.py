"""Where the dashboard's data comes from: snapshots and cluster details read from Redis, no Textual.

Keeps the event history itself (each read asks only for events newer than the last one seen) and tracks the
connection: when the last read succeeded, since when Redis is unreachable, and the last error.
"""

from __future__ import annotations

from redis.exceptions import RedisError

from ..clock import Clock, SystemClock
from ..config import RedisSettings
from ..connection import create_redis, display_url
from ..contract.keys import Keys
from ..events import Event
from ..snapshot.picture import ClusterDetail, Snapshot, count_errors, read_cluster_detail, read_snapshot

__all__ = ["DataSource"]


class DataSource:
    """Reads for the dashboard; every method raises ``RedisError``/``OSError`` when Redis is unreachable."""

    def __init__(self, redis: RedisSettings | str, namespace: str = "letsfrag", *, clock: Clock | None = None,
                 history: int = 200) -> None:
        self.settings = redis
        self.keys = Keys(namespace)
        self.clock = clock or SystemClock()
        self.address = display_url(redis)
        self.history = history
        self.redis = create_redis(redis)
        self.events: list[Event] = []
        self.last_ok: float | None = None
        self.down_since: float | None = None
        self.error: str | None = None
        self.snapshot: Snapshot | None = None
        self._reload_events = True

    @property
    def connected(self) -> bool:
        return self.error is None

    def data_age(self) -> float | None:
        """Seconds since the last successful read (None before the first)."""
        return None if self.last_ok is None else max(0.0, self.clock.time() - self.last_ok)

    def down_for(self) -> float | None:
        return None if self.down_since is None else max(0.0, self.clock.time() - self.down_since)

    async def read(self) -> Snapshot:
        """A fresh snapshot whose events are the kept history (newest first) and errors counted over it."""
        now = self.clock.time()
        after = self.events[0].id if self.events and not self._reload_events else None
        try:
            snapshot = await read_snapshot(self.redis, self.keys, now=now, events=self.history, events_after=after)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise
        self.events = (snapshot.events if self._reload_events else snapshot.events + self.events)[: self.history]
        self._reload_events = False
        snapshot.events = self.events
        snapshot.errors_10m = count_errors(self.events, now)
        self.last_ok, self.down_since, self.error = now, None, None
        self.snapshot = snapshot
        return snapshot

    async def detail(self, cluster_id: int) -> ClusterDetail:
        """One cluster in depth (shards, errors, restarts, metrics)."""
        try:
            return await read_cluster_detail(self.redis, self.keys, cluster_id, now=self.clock.time())
        except (RedisError, OSError) as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = self.clock.time()
        self.error = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:120]
        # the stream may be a different one after Redis comes back (restart without persistence): reload it
        self._reload_events = True

    async def close(self) -> None:
        await self.redis.aclose()
