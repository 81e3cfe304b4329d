"""A protocol-level fake host for broker tests (no processes, no Discord), following docs/redis.md.

It registers (``SADD {ns}:hosts``, the ``{ns}:host:{id}`` record, the lease), renews its lease every
heartbeat, reads ``{ns}:assignment``, "runs" the clusters granted to it (newer epoch wins), stops the ones no
longer naming it with its epoch (and says ``cluster_stopped``), and reports ``running``. When Redis lost its
data (its registration is gone) it re-registers with its ``running`` claims and, for two lease ttls, does not
take missing assignment fields for revokes, so the broker can adopt them. ``kill()`` stops it
dead (no more renewals, its record keeps the stale ``running``); ``leave()`` stops its clusters first, then
marks itself ``leaving``, deletes its lease and sends ``host_leave``.

With ``handovers=True`` it plays the supervisor side of a planned handover (letsfrag.contract.handover): it registers a
``successors`` field, "spawns" a successor for each ``preparing`` record of ``{ns}:handover`` naming it, reports
it ``starting`` then (after ``ready_after`` beats) ``ready`` — or ``failed`` / never, as ``successor`` says —
and rings the broker; when the assignment names it at the successor's epoch it promotes the successor (a
restart in place stops the old run and confirms ``cluster_stopped`` with the old epoch). ``leave_by_handover()``
says ``host_leave`` while its lease is valid and keeps running until it holds nothing or ``handoff_blocked``.

A shared :class:`Ledger` records, in-process and instantly, which live host runs each cluster: a second live
host starting a cluster that another still runs is a violation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any, cast

from redis.exceptions import RedisError

from letsfrag.bus import NO_REPLY, Bus
from letsfrag.contract.envelope import Envelope, MessageType
from letsfrag.contract.keys import Keys
from letsfrag.errors import BusError
from letsfrag.loops import cancel_and_wait


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

    def promote(self, cluster: int, host: str, epoch: int) -> None:
        """A handover's successor became the owner: the announced overlap is no violation."""
        self.owner[cluster] = host
        self.history.append(("promote", cluster, host, epoch))

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
                 ledger: Ledger | None = None, confirm_stops: bool = True, handovers: bool = False,
                 successor: str = "ready", ready_after: int = 2) -> None:
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
        self.handovers = handovers
        self.successor = successor  # "ready", "fail" or "never"
        self.ready_after = ready_after
        #: cluster -> [epoch, beats since spawned, state] of the successors it "runs"
        self.successors: dict[int, list[Any]] = {}
        self.promoted: list[tuple[int, int]] = []  # (cluster, epoch) of successors promoted

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
                **({"successors": self._successors_json()} if self.handovers else {}),
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
        assignment = cast("dict[str, str]", await self.redis.hgetall(self.keys.assignment))
        handovers = cast("dict[str, str]", await self.redis.hgetall(self.keys.handover)) if self.handovers else {}
        ring = await self._successors(handovers, assignment) if self.handovers else False
        stopped = await self._apply(assignment)
        await self.redis.hset(self.keys.host(self.id), mapping={
            "heartbeat_at": f"{time.time():.3f}", "running": json.dumps({str(c): e for c, e in self.running.items()}),
            **({"successors": self._successors_json()} if self.handovers else {}),
        })
        if ring:
            with contextlib.suppress(BusError):
                await self.bus.publish(self.keys.broker_inbox, MessageType.HOST_HELLO, {"host": self.id})
        for cluster, epoch in stopped:
            if self.confirm_stops:
                with contextlib.suppress(BusError):
                    await self.bus.publish(self.keys.broker_inbox, MessageType.CLUSTER_STOPPED,
                                           {"host": self.id, "cluster": cluster, "epoch": epoch})
        self.beats += 1

    def _successors_json(self) -> str:
        return json.dumps({str(c): {"epoch": e, "state": st, "pid": 1000 + c, "reason": "exit code 1" if
                                    st == "failed" else ""} for c, (e, _, st) in sorted(self.successors.items())})

    async def _successors(self, records: dict[str, str], assignment: dict[str, str]) -> bool:
        """Spawn, advance and drop successors from the handover records; True when a report changed."""
        changed = False
        wanted: dict[int, int] = {}
        for cid, raw in records.items():
            try:
                record = json.loads(raw)
                int(cid)
            except ValueError:
                continue  # unreadable: a supervisor ignores it (the broker deletes it)
            if record["host"] == self.id and record["state"] == "preparing":
                wanted[int(cid)] = record["epoch"]
        for cluster, epoch in wanted.items():
            entry = self.successors.get(cluster)
            if entry is None or entry[0] != epoch:
                self.successors[cluster] = [epoch, 0, "starting"]
                self.ledger.history.append(("spawn", cluster, self.id, epoch))
                changed = True
                continue
            entry[1] += 1
            if entry[2] == "starting" and entry[1] >= self.ready_after and self.successor != "never":
                entry[2] = "ready" if self.successor == "ready" else "failed"
                changed = True
        for cluster, (epoch, _, _) in list(self.successors.items()):
            if cluster in wanted:
                continue
            grant = json.loads(assignment[str(cluster)]) if str(cluster) in assignment else None
            if grant is not None and grant["host"] == self.id and grant["epoch"] == epoch:
                old = self.running.get(cluster)
                self.running[cluster] = epoch  # promoted: the successor is the owner now
                self.ledger.promote(cluster, self.id, epoch)
                self.promoted.append((cluster, epoch))
                if old is not None and old != epoch:
                    self.ledger.history.append(("stop", cluster, self.id, old))
                    with contextlib.suppress(BusError):
                        await self.bus.publish(self.keys.broker_inbox, MessageType.CLUSTER_STOPPED,
                                               {"host": self.id, "cluster": cluster, "epoch": old})
            else:
                self.ledger.history.append(("successor_stopped", cluster, self.id, epoch))  # rolled back
            del self.successors[cluster]
            changed = True
        return changed

    async def leave_by_handover(self) -> None:
        """SIGTERM of a supervisor that hands over: ``host_leave`` with the lease still valid."""
        await self.bus.publish(self.keys.broker_inbox, MessageType.HOST_LEAVE,
                               {"host": self.id, "incarnation": self.incarnation})

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
        await cancel_and_wait(self._task)
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
