"""A protocol-level fake host for broker tests (no processes, no Discord), following docs/redis.md.

It registers (``SADD {ns}:hosts``, the ``{ns}:host:{id}`` record, the lease), renews its lease every
heartbeat, reads ``{ns}:assignment``, "runs" the clusters granted to it (newer epoch wins), stops the ones no
longer naming it with its epoch (and says ``cluster_stopped``), and reports ``running``. When Redis lost its
data (its registration is gone) it re-registers with its ``running`` claims and, for two lease ttls, does not
take missing assignment fields for revokes, so the broker can adopt them. ``kill()`` stops it
dead (no more renewals, its record keeps the stale ``running``); ``leave()`` stops its clusters first, then
marks itself ``leaving``, deletes its lease and sends ``host_leave``.

A shared :class:`Ledger` records, in-process and instantly, which live host runs each cluster: a second live
host starting a cluster that another still runs is a violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from redis.exceptions import RedisError

from letsfrag.bus import NO_REPLY, Bus
from letsfrag.errors import BusError
from letsfrag.keys import Keys
from letsfrag.protocol import Envelope, MessageType


class Ledger:
    """Who runs what, across every fake host of a test."""

    def __init__(self) -> None:
        self.owner: dict[int, str] = {}
        self.violations: list[str] = []
        self.history: list[tuple[str, int, str, int]] = []  # (action, cluster, host, epoch)

    def start(self, cluster: int, host: str, epoch: int) -> None:
        other = self.owner.get(cluster)
        if other is not None and other != host:
            self.violations.append(f"cluster {cluster} started on {host} (epoch {epoch}) while {other} runs it")
        self.owner[cluster] = host
        self.history.append(("start", cluster, host, epoch))

    def stop(self, cluster: int, host: str, epoch: int) -> None:
        if self.owner.get(cluster) == host:
            del self.owner[cluster]
        self.history.append(("stop", cluster, host, epoch))

    def died(self, host: str) -> None:
        for cluster, owner in list(self.owner.items()):
            if owner == host:
                del self.owner[cluster]
                self.history.append(("died", cluster, host, 0))


class FakeHost:
    """One fake supervisor."""

    def __init__(self, redis_url: str, host_id: str, *, capacity: int = 4, namespace: str = "letsfrag",
                 lease_ttl: float = 1.0, heartbeat: float = 0.2, secret: str | None = None,
                 ledger: Ledger | None = None, confirm_stops: bool = True) -> None:
        self.id = host_id
        self.capacity = capacity
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self.ledger = ledger or Ledger()
        self.confirm_stops = confirm_stops
        self.incarnation = uuid.uuid4().hex
        self.keys = Keys(namespace)
        self.bus = Bus(redis_url, node_id=f"host:{host_id}", namespace=namespace, secret=secret)
        self.redis = self.bus.redis
        self.running: dict[int, int] = {}
        self.state = "up"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.beats = 0
        self._keep_until = 0.0

    async def start(self) -> FakeHost:
        await self.bus.subscribe(self.keys.host_inbox(self.id), self._on_inbox)
        await self.bus.start()
        await self._register()
        self._task = asyncio.create_task(self._loop(), name=f"fake-host-{self.id}")
        return self

    async def _on_inbox(self, env: Envelope) -> Any:
        self._wake.set()
        return NO_REPLY

    async def _register(self) -> None:
        now = f"{time.time():.3f}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self.keys.hosts, self.id)
            pipe.hset(self.keys.host(self.id), mapping={
                "id": self.id, "hostname": "fake", "pid": 0, "version": "test", "capacity": self.capacity,
                "incarnation": self.incarnation, "registered_at": now, "heartbeat_at": now, "state": self.state,
                "running": json.dumps({str(c): e for c, e in self.running.items()}),
            })
            pipe.set(self.keys.lease(self.id), self.incarnation, px=int(self.lease_ttl * 1000))
            await pipe.execute()
        with contextlib.suppress(BusError):
            await self.bus.publish(self.keys.broker_inbox, MessageType.HOST_HELLO, {"host": self.id})

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            with contextlib.suppress(RedisError, OSError, BusError):
                await self.beat()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):  # not wait_for: it can swallow a cancel on 3.11
                    await self._wake.wait()

    async def beat(self) -> None:
        """One heartbeat: re-register if Redis forgot us, renew the lease, apply the assignment, report."""
        registered = await self.redis.sismember(self.keys.hosts, self.id)
        if not registered or await self.redis.hget(self.keys.host(self.id), "incarnation") != self.incarnation:
            # Redis lost our registration (and probably the assignment): keep running for a while so the
            # broker can adopt our claims, instead of taking missing fields for revokes
            self._keep_until = time.monotonic() + 2 * self.lease_ttl
            await self._register()
        await self.redis.set(self.keys.lease(self.id), self.incarnation, px=int(self.lease_ttl * 1000))
        stopped = await self._apply(await self.redis.hgetall(self.keys.assignment))
        await self.redis.hset(self.keys.host(self.id), mapping={
            "heartbeat_at": f"{time.time():.3f}", "running": json.dumps({str(c): e for c, e in self.running.items()}),
        })
        for cluster, epoch in stopped:
            if self.confirm_stops:
                with contextlib.suppress(BusError):
                    await self.bus.publish(self.keys.broker_inbox, MessageType.CLUSTER_STOPPED,
                                           {"host": self.id, "cluster": cluster, "epoch": epoch})
        self.beats += 1

    async def _apply(self, raw: dict[str, str]) -> list[tuple[int, int]]:
        grants = {int(c): json.loads(v) for c, v in raw.items()}
        stopped: list[tuple[int, int]] = []
        for cluster, epoch in sorted(self.running.items()):
            grant = grants.get(cluster)
            if grant is None and time.monotonic() < self._keep_until:
                continue  # waiting to be adopted after Redis lost its data
            if grant is None or grant["host"] != self.id or grant["epoch"] != epoch:
                if grant is not None and grant["host"] == self.id and grant["epoch"] > epoch:
                    self.running[cluster] = grant["epoch"]  # a newer grant of the same cluster: keep it running
                    continue
                if not self.confirm_stops:
                    continue  # a stuck host: never stops what it runs
                del self.running[cluster]
                self.ledger.stop(cluster, self.id, epoch)
                stopped.append((cluster, epoch))
        for cluster, grant in sorted(grants.items()):
            if grant["host"] == self.id and cluster not in self.running and len(self.running) < self.capacity:
                self.running[cluster] = grant["epoch"]
                self.ledger.start(cluster, self.id, grant["epoch"])
        return stopped

    async def _halt(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def kill(self) -> None:
        """Die: no more renewals; its record keeps the stale ``running``."""
        await self._halt()
        self.ledger.died(self.id)
        await self.bus.close()

    async def leave(self) -> None:
        """Leave cleanly: stop every cluster, mark ``leaving``, drop the lease, say ``host_leave``."""
        await self._halt()
        for cluster, epoch in sorted(self.running.items()):
            self.ledger.stop(cluster, self.id, epoch)
        self.running.clear()
        await self.redis.hset(self.keys.host(self.id), mapping={"state": "leaving", "running": "{}"})
        await self.redis.delete(self.keys.lease(self.id))
        await self.bus.publish(self.keys.broker_inbox, MessageType.HOST_LEAVE,
                               {"host": self.id, "incarnation": self.incarnation})
        await self.bus.close()

    async def close(self) -> None:
        """Test teardown."""
        await self._halt()
        await self.bus.close()
