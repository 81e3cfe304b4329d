"""This host's membership in Redis: wait for the layout, register, renew the lease, read grants, self-fence.

Every Redis call is bounded by a timeout so a dead Redis never stalls the decisions. The lease loop checks the
fencing deadline *before* each renewal, so a supervisor that was frozen (SIGSTOP, a long pause) fences itself
on waking instead of renewing a lease the broker may already have given up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from redis.exceptions import RedisError, ResponseError

from letsfrag import __version__
from letsfrag.bus import Bus
from letsfrag.clock import Clock
from letsfrag.contract.envelope import MessageType
from letsfrag.contract.handover import HANDOFF_BLOCKED_FIELD, SUCCESSORS_FIELD, HandoverRecord
from letsfrag.contract.records import Grant, LayoutRecord
from letsfrag.contract.states import HostRecordState
from letsfrag.errors import BusError, RecordError

__all__ = ["HostAgent", "fence_after", "parse_assignment"]

log = logging.getLogger(__name__)

WAITING_LOG_INTERVAL = 10.0
#: how often a supervisor that started before the broker looks for the layout (a cold start waits for it)
LAYOUT_POLL = 0.05
_REDIS_ERRORS = (RedisError, OSError, TimeoutError, BusError)


def parse_assignment(data: Mapping[str, str], host_id: str, *, key: str = "assignment") -> dict[int, int]:
    """``{cluster id: epoch}`` of the grants naming ``host_id``; malformed fields are skipped (and logged)."""
    grants, problems = Grant.parse_all(data, key=key)
    for problem in problems:
        log.warning("ignoring malformed assignment field: %s", problem)
    return {cid: grant.epoch for cid, grant in grants.items() if grant.host == host_id}


def fence_after(lease_ttl: float, heartbeat_interval: float) -> float:
    """Seconds without a successful renewal after which a host stops its clusters: ``ttl - max(hb, 1s)``."""
    return max(lease_ttl - max(heartbeat_interval, 1.0), 0.0)


#: ``(layout, grants, handover records naming this host)``
GrantsCallback = Callable[[LayoutRecord, dict[int, int], dict[int, HandoverRecord]], None]
BadValueCallback = Callable[[RecordError], None]


class HostAgent:
    """Registers this host, keeps its lease and record fresh, reads grants and decides when to fence."""

    def __init__(
        self,
        bus: Bus,
        host_id: str,
        capacity: int,
        clock: Clock,
        *,
        on_grants: GrantsCallback,
        on_fence: Callable[[str], None],
        record_fields: Callable[[], dict[str, str]],
        on_bad_value: BadValueCallback | None = None,
    ) -> None:
        self.bus = bus
        self.redis = bus.redis
        self.keys = bus.keys
        self.host_id = host_id
        self.capacity = capacity
        self.clock = clock
        self._on_grants = on_grants
        self._on_fence = on_fence
        self._record_fields = record_fields
        self._on_bad_value = on_bad_value
        #: the problem of the layout last read, while it is bad (reported once, not on every heartbeat)
        self.layout_problem: str | None = None
        #: this host's wall clock minus Redis ``TIME`` (seconds), measured on each renewal
        self.clock_offset: float | None = None
        #: the grants last delivered (``{cluster id: epoch}``)
        self.last_grants: dict[int, int] = {}
        self.incarnation = ""
        self.layout: LayoutRecord | None = None
        self.fenced = False
        self.registered = False
        self.started_at = clock.time()
        #: Redis refusals of the renewal already logged (each distinct one once)
        self._refusals: set[str] = set()
        self.registered_at = 0.0
        self.last_renewal: float | None = None  # monotonic, when the last successful renewal was sent
        self.renewals = 0
        self._poke = asyncio.Event()
        #: set while this host hands its clusters away (SIGTERM): each renewal also reads ``handoff_blocked``
        self.leaving = False
        #: the broker's ``handoff_blocked`` sentence (no other host has room), read while leaving
        self.handoff_blocked: str | None = None
        #: problems of ``{ns}:handover`` fields last reported (each distinct one once, while it lasts)
        self._handover_problems: set[str] = set()

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def heartbeat_interval(self) -> float:
        return self.layout.heartbeat_interval if self.layout else 2.0

    @property
    def lease_ttl(self) -> float:
        return self.layout.lease_ttl if self.layout else 10.0

    def _static_fields(self) -> dict[str, str]:
        fields = {
            "id": self.host_id,
            "hostname": socket.gethostname(),
            "pid": str(os.getpid()),
            "version": __version__,
            "capacity": str(self.capacity),
            "incarnation": self.incarnation,
            "registered_at": f"{self.registered_at:.3f}",
            "started_at": f"{self.started_at:.3f}",
        }
        if self.clock_offset is not None:
            fields["clock_offset"] = f"{self.clock_offset:.3f}"
        return fields

    def poke(self) -> None:
        """Read the assignment soon (an ``assign`` doorbell arrived)."""
        self._poke.set()

    # ------------------------------------------------------------------------------------- layout, register

    async def wait_for_layout(self) -> LayoutRecord:
        """Poll ``{ns}:layout`` until the broker wrote it (logging every 10 s while waiting)."""
        next_log = self.clock.monotonic()
        while True:
            problem = "no layout yet"
            try:
                async with asyncio.timeout(2.0):
                    data: dict[str, str] = await self.redis.hgetall(self.keys.layout)  # type: ignore[misc,assignment]
                if data:
                    try:
                        self.layout = LayoutRecord.from_hash(data, key=self.keys.layout)
                        return self.layout
                    except RecordError as exc:
                        problem = str(exc)
                        self._bad_layout(exc)
            except _REDIS_ERRORS as exc:
                problem = f"Redis at {self.bus.address} unavailable ({type(exc).__name__})"
            now = self.clock.monotonic()
            if now >= next_log:
                log.info("host %s: waiting for the broker to write %s (%s)", self.host_id, self.keys.layout, problem)
                next_log = now + WAITING_LOG_INTERVAL
            await asyncio.sleep(LAYOUT_POLL)

    async def register(self) -> None:
        """Write the host record with a new incarnation, join the host set, take the lease, say hello."""
        self.incarnation = uuid.uuid4().hex
        self.registered_at = self.clock.time()
        sent = self.clock.monotonic()
        async with asyncio.timeout(max(self.heartbeat_interval, 1.0) * 2):
            current = await self.redis.hget(self.keys.host(self.host_id), "state")  # type: ignore[misc]
            fields: dict[Any, Any] = {**self._static_fields(), **self._record_fields(),
                      "state": HostRecordState.DRAINING if current == HostRecordState.DRAINING else HostRecordState.UP,
                      "heartbeat_at": f"{self.clock.time():.3f}"}
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.keys.host(self.host_id), mapping=fields)
            pipe.sadd(self.keys.hosts, self.host_id)
            pipe.set(self.keys.lease(self.host_id), self.incarnation, px=int(self.lease_ttl * 1000))
            await pipe.execute()
        self.last_renewal = sent
        self.registered = True
        self.fenced = False
        log.info("host %s registered (incarnation %s, capacity %d)", self.host_id, self.incarnation[:8], self.capacity)
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.bus.publish(self.keys.broker_inbox, MessageType.HOST_HELLO,
                                   {"host": self.host_id, "incarnation": self.incarnation})

    # ------------------------------------------------------------------------------------------ lease loop

    def fence_deadline(self) -> float | None:
        if self.last_renewal is None:
            return None
        return self.last_renewal + fence_after(self.lease_ttl, self.heartbeat_interval)

    async def _heartbeat(self) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """Renew the lease and the record; return the layout, assignment and handover hashes read in the same
        trip (and, while leaving, note the record's ``handoff_blocked``)."""
        key = self.keys.host(self.host_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.lease(self.host_id), self.incarnation, px=int(self.lease_ttl * 1000))
        fields: dict[Any, Any] = {**self._static_fields(), **self._record_fields(),
                                  "heartbeat_at": f"{self.clock.time():.3f}"}
        pipe.hset(key, mapping=fields)
        pipe.hsetnx(key, "state", HostRecordState.UP)
        pipe.sadd(self.keys.hosts, self.host_id)
        pipe.hgetall(self.keys.layout)
        pipe.hgetall(self.keys.assignment)
        pipe.time()
        pipe.hgetall(self.keys.handover)
        if self.leaving:
            pipe.hget(key, HANDOFF_BLOCKED_FIELD)
        before = self.clock.time()
        results = await pipe.execute()
        self._measure_offset(before, self.clock.time(), results[6])
        if self.leaving:
            self.handoff_blocked = results[8] or None
        return results[4], results[5], results[7]

    def _measure_offset(self, before: float, after: float, redis_time: Any) -> None:
        """This host's clock minus Redis ``TIME`` (the midpoint of the round trip against the server's clock)."""
        try:
            seconds, micros = redis_time
            self.clock_offset = (before + after) / 2 - (int(seconds) + int(micros) / 1e6)
        except (TypeError, ValueError):
            self.clock_offset = None

    def _bad_layout(self, exc: RecordError) -> None:
        """Report a bad layout once (until it changes or is repaired); the last good layout stays in use."""
        problem = str(exc)
        if problem == self.layout_problem:
            return
        self.layout_problem = problem
        kept = "keeping the last good layout" if self.layout is not None else "waiting for a valid one"
        log.error("host %s: ignoring a bad layout: %s; %s", self.host_id, problem, kept)
        if self._on_bad_value is not None:
            self._on_bad_value(exc)

    def _handovers(self, data: Mapping[str, str]) -> dict[int, HandoverRecord]:
        """The readable handover records naming this host; each new problem of a field is reported once."""
        records, problems = HandoverRecord.parse_all(data, key=self.keys.handover)
        texts = {str(problem) for problem in problems}
        for problem in problems:
            if str(problem) not in self._handover_problems:
                log.error("host %s: ignoring a bad handover record: %s", self.host_id, problem)
                if self._on_bad_value is not None:
                    self._on_bad_value(problem)
        self._handover_problems = texts
        return {cid: record for cid, record in records.items() if record.host == self.host_id}

    def _deliver(self, layout_hash: Mapping[str, str], assignment: Mapping[str, str],
                 handover: Mapping[str, str]) -> None:
        if self.fenced or not self.registered:
            return
        if not layout_hash:
            # Redis lost its data (or was flushed): keep running and wait for the broker to restore the layout
            # and adopt our clusters from the record's ``running``; an empty assignment here is not a revoke.
            return
        try:
            self.layout = LayoutRecord.from_hash(layout_hash, key=self.keys.layout)
        except RecordError as exc:
            self._bad_layout(exc)
            if self.layout is None:
                return
        else:
            if self.layout_problem is not None:
                log.info("host %s: the layout %s is valid again", self.host_id, self.keys.layout)
                self.layout_problem = None
        grants = parse_assignment(assignment, self.host_id, key=self.keys.assignment)
        if layout_hash.get("adopting"):
            # the broker is re-adopting running clusters from the hosts' claims (Redis lost its data): a grant
            # missing from the assignment is not a revoke yet
            grants = {**{c: e for c, e in self.last_grants.items() if str(c) not in assignment}, **grants}
        self.last_grants = grants
        self._on_grants(self.layout, grants, self._handovers(handover))

    async def run(self) -> None:
        """The lease loop: renew every heartbeat interval, fence when renewals fail too long, re-register."""
        next_beat = self.clock.monotonic()
        while True:
            now = self.clock.monotonic()
            deadline = self.fence_deadline()
            if not self.fenced and deadline is not None and now >= deadline:
                self.fenced = True
                self.last_grants = {}
                since = now - (self.last_renewal or now)
                self._on_fence(f"lease not renewed for {since:.1f}s")
            if now >= next_beat:
                next_beat = now + self.heartbeat_interval
                await self._beat()
            wait = next_beat - self.clock.monotonic()
            deadline = self.fence_deadline()
            if not self.fenced and deadline is not None:
                wait = min(wait, deadline - self.clock.monotonic())
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._poke.wait()
            if self._poke.is_set():
                self._poke.clear()
                if not self.fenced:
                    with contextlib.suppress(*_REDIS_ERRORS):
                        await self._read_grants()

    async def _beat(self) -> None:
        """One renewal (or, while fenced, one attempt to register again)."""
        if self.fenced:
            try:
                await self.register()
                await self._read_grants()
            except _REDIS_ERRORS as exc:
                log.debug("host %s: re-register failed: %s", self.host_id, exc)
            return
        sent = self.clock.monotonic()
        deadline = self.fence_deadline()
        budget = self.heartbeat_interval if deadline is None else min(self.heartbeat_interval, deadline - sent)
        try:
            async with asyncio.timeout(max(budget, 0.05)):
                layout_hash, assignment, handover = await self._heartbeat()
        except _REDIS_ERRORS as exc:
            if isinstance(exc, ResponseError) and str(exc) not in self._refusals:
                # not an outage: Redis answered and said no (an ACL without a command the renewal needs, ...)
                self._refusals.add(str(exc))
                log.error("host %s: Redis refused the lease renewal: %s (check this host's Redis user against "
                          "docs/security.md)", self.host_id, exc)
            else:
                log.debug("host %s: lease renewal failed: %s", self.host_id, exc)
            return
        self.last_renewal = sent
        self.renewals += 1
        self._deliver(layout_hash, assignment, handover)

    async def _read_grants(self) -> None:
        async with asyncio.timeout(max(self.heartbeat_interval, 1.0)):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self.keys.layout)
            pipe.hgetall(self.keys.assignment)
            pipe.hgetall(self.keys.handover)
            if self.leaving:
                pipe.hget(self.keys.host(self.host_id), HANDOFF_BLOCKED_FIELD)
            results = await pipe.execute()
        if self.leaving:
            self.handoff_blocked = results[3] or None
        self._deliver(results[0], results[1], results[2])

    async def set_state(self, state: str) -> None:
        """Write the record's ``state`` (``leaving`` on shutdown); errors are logged, not raised."""
        try:
            async with asyncio.timeout(2.0):
                await self.redis.hset(self.keys.host(self.host_id), "state", state)  # type: ignore[misc]
        except _REDIS_ERRORS as exc:
            log.warning("host %s: could not set state %s: %s", self.host_id, state, exc)

    async def others_up(self) -> bool:
        """Is there another host with a lease that is neither leaving nor draining (someone who could take this
        host's clusters)?

        False also when Redis cannot be asked: a leaving host then stops its clusters without waiting."""
        try:
            async with asyncio.timeout(2.0):
                members: set[str] = await self.redis.smembers(self.keys.hosts)  # type: ignore[misc,assignment]
                hosts = [h for h in members if h != self.host_id]
                if not hosts:
                    return False
                pipe = self.redis.pipeline(transaction=False)
                for host in hosts:
                    pipe.exists(self.keys.lease(host))
                    pipe.hget(self.keys.host(host), "state")
                found = await pipe.execute()
                return any(lease and state not in (HostRecordState.LEAVING, HostRecordState.DRAINING)
                           for lease, state in zip(found[::2], found[1::2], strict=True))
        except _REDIS_ERRORS as exc:
            log.warning("host %s: cannot ask Redis for other hosts: %s", self.host_id, exc)
            return False

    async def ask_to_leave(self) -> str | None:
        """Ask the broker to hand this host's clusters to other hosts: ``state: leaving`` (the lease stays) and
        ``host_leave`` with ``hand_off: true``; each renewal then reads ``handoff_blocked``. Returns why that
        cannot work (Redis unavailable, no broker listening), None when asked."""
        if not self.registered:
            return "not registered"
        self.leaving = True
        self.handoff_blocked = None
        try:
            async with asyncio.timeout(2.0):
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(self.keys.host(self.host_id), "state", HostRecordState.LEAVING)
                pipe.hdel(self.keys.host(self.host_id), HANDOFF_BLOCKED_FIELD)
                await pipe.execute()
                brokers = await self.bus.publish(self.keys.broker_inbox, MessageType.HOST_LEAVE, {
                    "host": self.host_id, "incarnation": self.incarnation, "hand_off": True})
        except _REDIS_ERRORS as exc:
            log.warning("host %s: could not ask the broker to hand its clusters away: %s", self.host_id, exc)
            return f"Redis unavailable ({type(exc).__name__})"
        if not brokers:
            return "no broker is running"
        self.poke()
        return None

    async def leave(self) -> None:
        """Clean exit: record shows nothing running, lease removed, ``host_leave`` published."""
        if not self.registered:
            return
        try:
            async with asyncio.timeout(2.0):
                pipe = self.redis.pipeline(transaction=True)
                pipe.hset(self.keys.host(self.host_id), mapping={
                    "running": "{}", SUCCESSORS_FIELD: "{}", "state": HostRecordState.LEAVING,
                    "heartbeat_at": f"{self.clock.time():.3f}"})
                pipe.delete(self.keys.lease(self.host_id))
                await pipe.execute()
                await self.bus.publish(self.keys.broker_inbox, MessageType.HOST_LEAVE,
                                       {"host": self.host_id, "incarnation": self.incarnation})
        except _REDIS_ERRORS as exc:
            log.warning("host %s: could not announce leaving: %s", self.host_id, exc)
        self.registered = False
