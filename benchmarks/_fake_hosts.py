"""Many lightweight fake hosts in one process, speaking the host side of docs/redis.md to a real broker.

Adapted from ``tests/support/fake_hosts.py`` (``FakeHost``) for scale: a :class:`FakeFleet` of hundreds of
:class:`FakeHost` objects shares one Redis client, one bus (one pub/sub connection subscribed to every host
inbox ``{ns}:cm:{host}``) and one parsed copy of ``{ns}:assignment`` (:class:`AssignmentView`), so the
fleet stays cheap and the broker, not the fleet, is what a benchmark measures.

Each host registers (``SADD {ns}:hosts``, its ``{ns}:host:{id}`` record, its lease), then every heartbeat
renews its lease, applies the assignment (runs the clusters granted to it, stops those no longer naming it
with its epoch and says ``cluster_stopped``) and reports ``running``. An ``assign`` doorbell wakes it at once.
``kill()`` stops a host dead: no more renewals, its record keeps the stale ``running`` (a machine dying).
Not modelled: re-registering after Redis lost its data, leaving cleanly, stuck stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from letsfrag.bus import NO_REPLY, Bus
from letsfrag.contract.envelope import Envelope, MessageType
from letsfrag.contract.keys import Keys
from letsfrag.errors import BusError

__all__ = ["AssignmentView", "FakeFleet", "FakeHost", "Ledger"]


class Ledger:
    """Who runs what across the fleet: a second live host starting a running cluster is a violation."""

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}
        self.violations: list[str] = []

    def start(self, cluster: int, host: str, epoch: int) -> None:
        other = self.owner.get(cluster)
        if other is not None and other != host:
            self.violations.append(f"cluster {cluster} started on {host} (epoch {epoch}) while {other} runs it")
        self.owner[cluster] = host

    def stop(self, cluster: int, host: str) -> None:
        if self.owner.get(cluster) == host:
            del self.owner[cluster]

    def died(self, host: str) -> None:
        for cluster, owner in list(self.owner.items()):
            if owner == host:
                del self.owner[cluster]


class AssignmentView:
    """One shared, parsed ``{ns}:assignment``: re-read at most every ``max_age`` seconds, or after a doorbell.

    Concurrent readers share one ``HGETALL``; :meth:`invalidate` (an ``assign`` doorbell) makes the next read
    fetch again. ``fetches`` counts the reads (for the benchmark's notes).
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, max_age: float) -> None:
        self.redis = redis
        self.keys = keys
        self.max_age = max_age
        self.fetches = 0
        self._by_host: dict[str, dict[int, int]] = {}
        self._fetched_at = float("-inf")  # monotonic start of the last completed fetch
        self._dirty_at = float("-inf")
        self._inflight: asyncio.Future[dict[str, dict[int, int]]] | None = None

    def invalidate(self) -> None:
        """The assignment changed: the next :meth:`grants` reads it again."""
        self._dirty_at = time.monotonic()

    def _fresh(self) -> bool:
        return self._fetched_at >= self._dirty_at and time.monotonic() - self._fetched_at < self.max_age

    async def grants(self, host: str) -> dict[int, int]:
        """Cluster id -> epoch of every grant naming ``host``."""
        if not self._fresh():
            if self._inflight is None:
                self._inflight = asyncio.ensure_future(self._fetch())
                try:
                    await self._inflight
                finally:
                    self._inflight = None
            else:
                await asyncio.shield(self._inflight)
        return self._by_host.get(host, {})

    async def _fetch(self) -> dict[str, dict[int, int]]:
        started = time.monotonic()
        raw: Any = await self.redis.hgetall(self.keys.assignment)  # type: ignore[misc]
        by_host: dict[str, dict[int, int]] = {}
        for cid, value in raw.items():
            try:
                grant = json.loads(value)
                by_host.setdefault(str(grant["host"]), {})[int(cid)] = int(grant["epoch"])
            except (ValueError, KeyError, TypeError):
                continue
        self._by_host = by_host
        self._fetched_at = started
        self.fetches += 1
        return by_host


class FakeHost:
    """One fake supervisor of a :class:`FakeFleet`."""

    def __init__(self, fleet: FakeFleet, host_id: str, capacity: int) -> None:
        self.fleet = fleet
        self.id = host_id
        self.capacity = capacity
        self.incarnation = uuid.uuid4().hex
        self.running: dict[int, int] = {}
        self.beats = 0
        self.alive = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Beat now (an ``assign`` doorbell)."""
        self._wake.set()

    async def register(self) -> None:
        """``SADD {ns}:hosts``, the host record and the lease, then ``host_hello`` to the broker."""
        f, now = self.fleet, f"{time.time():.3f}"
        async with f.slots, f.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(f.keys.hosts, self.id)
            pipe.hset(f.keys.host(self.id), mapping={
                "id": self.id, "hostname": "fake", "pid": 0, "version": "bench", "capacity": self.capacity,
                "incarnation": self.incarnation, "registered_at": now, "heartbeat_at": now, "state": "up",
                "running": json.dumps({str(c): e for c, e in self.running.items()}),
            })
            pipe.set(f.keys.lease(self.id), self.incarnation, px=int(f.lease_ttl * 1000))
            await pipe.execute()
        async with f.slots:
            with contextlib.suppress(BusError):
                await f.bus.publish(f.keys.broker_inbox, MessageType.HOST_HELLO, {"host": self.id})

    def start(self, delay: float) -> None:
        """Start heartbeating after ``delay`` seconds (spread the fleet's beats over the interval)."""
        self._task = asyncio.create_task(self._loop(delay), name=f"fake-host-{self.id}")

    async def _loop(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
        while True:
            self._wake.clear()
            with contextlib.suppress(RedisError, OSError, BusError):
                async with self.fleet.slots:
                    await self.beat()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.fleet.heartbeat):  # not wait_for: it can swallow a cancel
                    await self._wake.wait()

    async def beat(self) -> None:
        """One heartbeat: renew the lease, apply the assignment, report ``running``, confirm stops."""
        f = self.fleet
        await f.redis.set(f.keys.lease(self.id), self.incarnation, px=int(f.lease_ttl * 1000))
        stopped = self._apply(await f.view.grants(self.id))
        await f.redis.hset(f.keys.host(self.id), mapping={
            "heartbeat_at": f"{time.time():.3f}", "running": json.dumps({str(c): e for c, e in self.running.items()}),
        })
        for cluster, epoch in stopped:
            with contextlib.suppress(BusError):
                await f.bus.publish(f.keys.broker_inbox, MessageType.CLUSTER_STOPPED,
                                    {"host": self.id, "cluster": cluster, "epoch": epoch})
        self.beats += 1

    def _apply(self, mine: dict[int, int]) -> list[tuple[int, int]]:
        stopped: list[tuple[int, int]] = []
        for cluster, epoch in sorted(self.running.items()):
            granted = mine.get(cluster)
            if granted is not None and granted >= epoch:
                self.running[cluster] = granted  # the same grant, or a newer grant of it: keep running
                continue
            del self.running[cluster]
            self.fleet.ledger.stop(cluster, self.id)
            stopped.append((cluster, epoch))
        for cluster, epoch in sorted(mine.items()):
            if cluster not in self.running and len(self.running) < self.capacity:
                self.running[cluster] = epoch
                self.fleet.ledger.start(cluster, self.id, epoch)
        return stopped

    async def kill(self) -> None:
        """Die: no more renewals; the record keeps the stale ``running``."""
        self.alive = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.fleet.ledger.died(self.id)


class FakeFleet:
    """``count`` fake hosts (``h0`` … ``h{count-1}``) in one namespace; use ``async with``.

    ``assignment_max_age``: how stale the shared assignment copy may be when a host beats (a real supervisor
    reads it every heartbeat; sharing it keeps hundreds of hosts cheap); ``max_parallel``: hosts talking to
    Redis at once; ``seed`` spreads the first beats.
    """

    def __init__(self, redis_url: str, *, count: int, capacity: int, namespace: str, lease_ttl: float,
                 heartbeat: float, secret: str | None = None, assignment_max_age: float = 0.25,
                 max_parallel: int = 32, seed: int = 0) -> None:
        self.keys = Keys(namespace)
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self.bus = Bus(redis_url, node_id=f"fleet-{namespace}", namespace=namespace, secret=secret)
        self.redis = self.bus.redis
        self.view = AssignmentView(self.redis, self.keys, assignment_max_age)
        self.ledger = Ledger()
        #: bounds the hosts' concurrent Redis work (the shared client's connection pool is bounded)
        self.slots = asyncio.Semaphore(max_parallel)
        self.hosts = {f"h{i}": FakeHost(self, f"h{i}", capacity) for i in range(count)}
        self._random = random.Random(seed)

    async def start(self) -> FakeFleet:
        """Subscribe every inbox, register every host, start the heartbeats (spread over one interval)."""
        for host in self.hosts.values():
            await self.bus.subscribe(self.keys.host_inbox(host.id), self._inbox_handler(host))
        await self.bus.start()
        await asyncio.gather(*(host.register() for host in self.hosts.values()))
        for host in self.hosts.values():
            host.start(self._random.uniform(0, self.heartbeat))
        return self

    def _inbox_handler(self, host: FakeHost) -> Any:
        async def handle(env: Envelope) -> Any:
            if env.type is MessageType.ASSIGN:
                self.view.invalidate()
            host.wake()
            return NO_REPLY
        return handle

    @property
    def running(self) -> int:
        """Clusters running on live hosts."""
        return sum(len(h.running) for h in self.hosts.values() if h.alive)

    async def close(self) -> None:
        """Stop every host (as if killed) and disconnect."""
        for host in self.hosts.values():
            if host.alive:
                await host.kill()
        await self.bus.close()

    async def __aenter__(self) -> FakeFleet:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
