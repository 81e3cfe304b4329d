"""Claim before handle: every event bots act on is handled by one session only, however many received it.

Before a cluster runs the parser (and so the user handlers) of a *claimable* event it claims the event in Redis::

    SET {ns}:claim:<event>:<identity> <cluster>/<epoch> NX PX <CLAIM_TTL>

and only the winner dispatches. Two sessions of one shard (a takeover, a replay after RESUME, a woken process
next to its successor) therefore answer an event once. The identity of each claimable event
(:data:`IDENTITIES`) is what Discord keeps equal across every delivery of that event:

=======================  =================================================================
``MESSAGE_CREATE``       the message id
``INTERACTION_CREATE``   the interaction id
``GUILD_MEMBER_ADD``     guild id, user id and ``joined_at`` (a user may leave and rejoin)
``MESSAGE_DELETE``       the message id (a message is deleted once)
``THREAD_CREATE``        the thread (channel) id
=======================  =================================================================

Which of them are claimed is the host's ``claim_events`` (default :data:`DEFAULT_CLAIM_EVENTS`; empty: no
claims). The claim lives :data:`CLAIM_TTL` seconds, longer than Discord keeps a session resumable (a few
minutes), so no replay of a handled event can win a second claim.

Order: discord.py parses dispatches in arrival order and a parse may depend on an earlier one (a
``MESSAGE_UPDATE`` on the ``MESSAGE_CREATE`` it follows). :class:`ClaimSequencer` keeps one FIFO per shard: a
claimable parse waits in it for its claim, and every later parse of that shard waits behind it; claims of
consecutive events are in flight together, so a burst costs about one round trip, not one per event. A shard
with nothing waiting runs a non-claimable parse at once (no cost without claims).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .contract.keys import Keys
from .loops import cancel_and_wait

log = logging.getLogger(__name__)

#: seconds a claim is kept: longer than Discord's resume window (a few minutes), so a replay never wins again
CLAIM_TTL = 600.0

#: the events claimed unless the host's ``claim_events`` says otherwise
DEFAULT_CLAIM_EVENTS: tuple[str, ...] = ("MESSAGE_CREATE", "INTERACTION_CREATE", "GUILD_MEMBER_ADD")


def _field(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    return str(value) if value is not None and value != "" else None


def _member_add(data: Mapping[str, Any]) -> str | None:
    user = data.get("user")
    user_id = _field(user, "id") if isinstance(user, Mapping) else None
    guild_id, joined_at = _field(data, "guild_id"), _field(data, "joined_at")
    if user_id is None or guild_id is None or joined_at is None:
        return None
    return f"{guild_id}:{user_id}:{joined_at}"


#: gateway event -> the identity of one occurrence (None: the payload lacks it, the event is not claimed)
IDENTITIES: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "MESSAGE_CREATE": lambda data: _field(data, "id"),
    "INTERACTION_CREATE": lambda data: _field(data, "id"),
    "GUILD_MEMBER_ADD": _member_add,
    "MESSAGE_DELETE": lambda data: _field(data, "id"),
    "THREAD_CREATE": lambda data: _field(data, "id"),
}


def check_claim_events(names: Iterable[str]) -> tuple[str, ...]:
    """The claim set as given (upper case, duplicates removed); ``ValueError`` names an unclaimable event."""
    result: list[str] = []
    for raw in names:
        name = str(raw).strip().upper()
        if name not in IDENTITIES:
            raise ValueError(f"{raw!r} cannot be claimed; claimable events: {', '.join(IDENTITIES)}")
        if name not in result:
            result.append(name)
    return tuple(result)


def claim_identity(event: str, data: Any) -> str | None:
    """``<event>:<identity>`` of one dispatch, or None when the event has no identity in this payload."""
    identify = IDENTITIES.get(event)
    if identify is None or not isinstance(data, Mapping):
        return None
    identity = identify(data)
    return f"{event}:{identity}" if identity is not None else None


class Claimer:
    """``SET {ns}:claim:<identity> <owner> NX PX <ttl>``: True when this process won the event.

    Claims asked for in the same turn of the event loop go to Redis together in one pipeline (a burst of events
    costs one round trip, not one each)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, owner: str, ttl: float = CLAIM_TTL) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner
        self.ttl_ms = int(ttl * 1000)
        self._batch: list[tuple[str, asyncio.Future[bool]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def claim(self, identity: str) -> asyncio.Future[bool]:
        """The claim's answer; it fails with ``RedisError``/``OSError`` when Redis cannot be reached."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((identity, future))
        if len(self._batch) == 1:  # the batch is open until its sender starts running
            task = asyncio.ensure_future(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return future

    async def _send(self) -> None:
        batch, self._batch = self._batch, []
        try:
            if len(batch) == 1:
                results = [await self.redis.set(self.keys.claim(batch[0][0]), self.owner, nx=True, px=self.ttl_ms)]
            else:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for identity, _ in batch:
                        pipe.set(self.keys.claim(identity), self.owner, nx=True, px=self.ttl_ms)
                    results = await pipe.execute()
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(bool(result))


Thunk = Callable[[], None]


@dataclass
class _Lane:
    items: deque[tuple[str | None, asyncio.Future[bool] | None, Thunk]] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class ClaimSequencer:
    """Per-shard FIFO of parses: claimable ones wait for their claim, the rest keep their place behind them.

    ``claim(identity)`` answers True (won: ``run`` the parse) or False (another session has it, or the process
    may no longer handle anything: the parse is skipped); when it fails, ``retry(identity)`` answers instead
    (without ``retry`` the failure is logged and the parse skipped). ``run`` receives the parses in arrival
    order per lane.
    """

    def __init__(self, claim: Callable[[str], Awaitable[bool]], run: Callable[[Thunk], None], *,
                 retry: Callable[[str], Awaitable[bool]] | None = None) -> None:
        self._claim = claim
        self._retry = retry
        self._run = run
        self._lanes: dict[Any, _Lane] = {}
        self.won = 0
        self.lost = 0

    def submit(self, lane: Any, identity: str | None, thunk: Thunk) -> None:
        """Queue one parse of ``lane`` (a shard id); ``identity`` None: not claimed."""
        state = self._lanes.get(lane)
        if identity is None and (state is None or not state.items):
            self._run(thunk)
            return
        if state is None:
            state = self._lanes[lane] = _Lane()
        future = asyncio.ensure_future(self._claim(identity)) if identity is not None else None
        state.items.append((identity, future, thunk))
        if state.task is None or state.task.done():
            state.task = asyncio.ensure_future(self._drain(state))

    def pending(self, lane: Any) -> int:
        """Parses of ``lane`` still queued (behind or waiting for a claim)."""
        state = self._lanes.get(lane)
        return len(state.items) if state is not None else 0

    @property
    def waiting(self) -> int:
        """Parses queued behind a claim."""
        return sum(len(state.items) for state in self._lanes.values())

    async def _drain(self, state: _Lane) -> None:
        while state.items:
            identity, future, thunk = state.items[0]
            won = True
            if future is not None:
                won = await self._answer(identity, future)
                if won:
                    self.won += 1
                else:
                    self.lost += 1
            state.items.popleft()
            if won:
                try:
                    self._run(thunk)
                except Exception:
                    log.exception("a gateway event failed in its parser")

    async def _answer(self, identity: str | None, future: asyncio.Future[bool]) -> bool:
        try:
            return await future
        except Exception as exc:
            if self._retry is None or identity is None:
                log.error("claiming %s failed (%s); it is not handled here", identity, exc)
                return False
        try:
            return await self._retry(identity)
        except Exception:
            log.exception("claiming %s failed; it is not handled here", identity)
            return False

    async def drain(self, timeout: float) -> int:
        """Wait (at most ``timeout`` seconds) until every queued parse has had its claim answered and ran or was
        skipped; return how many still wait. A graceful stop calls it before closing: a claim won in Redis is
        never left without its parse (the caller stops submitting claimable events first)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            tasks = [state.task for state in self._lanes.values() if state.task is not None and not state.task.done()]
            left = deadline - loop.time()
            if not tasks or left <= 0:
                return self.waiting
            await asyncio.wait(tasks, timeout=left)

    async def close(self) -> None:
        """Cancel every pending claim and forget the queued parses."""
        for state in self._lanes.values():
            for _, future, _ in state.items:
                if future is not None:
                    future.cancel()
            state.items.clear()
            await cancel_and_wait(state.task)
        self._lanes.clear()
