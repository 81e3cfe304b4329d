"""Claim before handle: every event bots act on is handled by one session only, however many received it.

Before a cluster runs the parser (and so the user handlers) of a *claimable* event it claims the event in Redis,
in one script (:data:`CLAIM_SCRIPT`, one round trip like ``SET NX``), and only the winner dispatches. Two
sessions of one shard (a takeover, a replay after RESUME, a woken process next to its successor) therefore
answer an event once. A claim has two phases (:class:`ClaimValue`, the value of ``{ns}:claim:<event>:<identity>``):

- ``pending:<cluster>/<epoch>/<run>`` from the claim until every handler task its parse started has finished
  (``<run>``: the process run, :data:`~letsfrag.environment.ClusterEnvironment.run`);
- ``done:<cluster>/<epoch>/<run>`` after (:data:`DONE_SCRIPT`, written only over the writer's own pending value: a
  fenced or old process never turns another owner's claim into done).

A claim is won when the key is absent, or when it is *pending* for an owner that is no longer live — its epoch is
neither the cluster's current grant in ``{ns}:assignment`` nor the source of a handover in progress in
``{ns}:handover`` (a dead, frozen or fenced host's process: its handler may have died mid-way) — and the claimant
is itself the current grant of its cluster. A pending claim of the claimant's own cluster and epoch is also won
when its run is one the claimant's supervisor reaped (``dead_runs``: a cluster crashed and restarted in place
keeps its epoch). A *done* claim, a pending one of a live owner (of the claimant's own epoch: a run not known
dead, or the two-part ``pending:<cluster>/<epoch>`` of an earlier version, run unknown), and a value of the older
one-phase format (``<cluster>/<epoch>``) always lose. While the handlers of a won claim run,
:class:`ClaimedHandling` counts the messages they send: the k-th gets the nonce :func:`reply_nonce` (identity,
k), so a reply sent again by whoever takes the claim over (or by a woken process finishing its handler) is the
same message at Discord (``enforce_nonce``). The identity of each claimable event
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
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

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


#: the two phases of a claim
PENDING, DONE = "pending", "done"


#: the characters of a run identity (the scripts below match it with ``[%w%.]+``)
_RUN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.")


def _is_run(run: str) -> bool:
    return bool(run) and set(run) <= _RUN_CHARS


def check_run(run: str) -> str:
    """``run`` when it is a valid run identity (letters, digits and dots, not empty); ``ValueError`` otherwise."""
    if not _is_run(run):
        raise ValueError(f"a run identity is letters, digits and dots, found {run!r}")
    return run


@dataclass(frozen=True, slots=True)
class ClaimValue:
    """The value of ``{ns}:claim:<event>:<identity>``: ``<state>:<cluster>/<epoch>/<run>`` (the format, both ways;
    the scripts below match it with ``^pending:(%d+)/(%d+)/([%w%.]+)$``). ``run`` None: the two-part
    ``<state>:<cluster>/<epoch>`` of an earlier version (run unknown)."""

    state: str
    cluster: int
    epoch: int
    run: str | None = None

    def __str__(self) -> str:
        if self.run is None:
            return f"{self.state}:{self.cluster}/{self.epoch}"
        return f"{self.state}:{self.cluster}/{self.epoch}/{self.run}"

    @property
    def owner(self) -> str:
        """``<cluster>/<epoch>``."""
        return f"{self.cluster}/{self.epoch}"

    @classmethod
    def parse(cls, raw: str | bytes | None) -> ClaimValue | None:
        """The value read from Redis; None when absent or not of this format (an older one-phase claim: done)."""
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        state, _, owner = text.partition(":")
        parts = owner.split("/")
        if state not in (PENDING, DONE) or len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]):
            return None
        run = parts[2] if len(parts) == 3 else None
        if run is not None and not _is_run(run):
            return None
        return cls(state, int(parts[0]), int(parts[1]), run)


def parse_owner(owner: str) -> tuple[int, int]:
    """``<cluster>/<epoch>`` -> (cluster, epoch); ``ValueError`` otherwise."""
    cluster, sep, epoch = owner.partition("/")
    if not sep or not cluster.isdigit() or not epoch.isdigit():
        raise ValueError(f"a claim owner is <cluster>/<epoch>, found {owner!r}")
    return int(cluster), int(epoch)


#: KEYS: claim key, assignment hash, handover hash; ARGV: the pending value, ttl ms, claimant cluster, claimant
#: epoch, the claimant's dead runs (comma list, may be empty). Returns 1 (won: the key was absent), 2 (won: a
#: pending claim of an owner no longer live, or of a dead run of the claimant's own cluster and epoch, taken over)
#: or 0 (lost). The common case is GET + SET: one round trip, like ``SET NX``.
CLAIM_SCRIPT = """
local old = redis.call('GET', KEYS[1])
if not old then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if old == ARGV[1] then return 0 end
local cluster, epoch, run = string.match(old, '^pending:(%d+)/(%d+)/([%w%.]+)$')
if not cluster then
  cluster, epoch = string.match(old, '^pending:(%d+)/(%d+)$')
end
if not cluster then return 0 end
local function grant_epoch(cid)
  local raw = redis.call('HGET', KEYS[2], cid)
  if not raw then return nil end
  local ok, v = pcall(cjson.decode, raw)
  if ok and type(v) == 'table' then return tonumber(v.epoch) end
  return nil
end
if run and cluster == ARGV[3] and tonumber(epoch) == tonumber(ARGV[4])
    and string.find(',' .. ARGV[5] .. ',', ',' .. run .. ',', 1, true) then
  if grant_epoch(ARGV[3]) ~= tonumber(ARGV[4]) then return 0 end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
if grant_epoch(cluster) == tonumber(epoch) then return 0 end
local handover = redis.call('HGET', KEYS[3], cluster)
if handover then
  local ok, v = pcall(cjson.decode, handover)
  if not ok or type(v) ~= 'table' or tonumber(v.from_epoch) == tonumber(epoch) then return 0 end
end
if grant_epoch(ARGV[3]) ~= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 2
"""

#: KEYS: claim key; ARGV: the writer's pending value, its done value, ttl ms. 1 when written, 0 when the claim is no
#: longer the writer's pending one (taken over, or gone).
DONE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

_SHAS = {script: hashlib.sha1(script.encode()).hexdigest() for script in (CLAIM_SCRIPT, DONE_SCRIPT)}


class Claimer:
    """Claims (:data:`CLAIM_SCRIPT`) and their completion (:data:`DONE_SCRIPT`) for one owner ``<cluster>/<epoch>``
    in the process run ``run``; ``dead_runs``: earlier runs of the same cluster and epoch that have exited (their
    pending claims are taken over).

    Requests made in the same turn of the event loop go to Redis together in one pipeline (a burst of events
    costs one round trip, not one each)."""

    def __init__(self, redis: aioredis.Redis, keys: Keys, owner: str, ttl: float = CLAIM_TTL, *,
                 run: str | None = None, dead_runs: Iterable[str] = ()) -> None:
        self.redis = redis
        self.keys = keys
        self.owner = owner
        cluster, epoch = parse_owner(owner)
        self.run = check_run(run) if run is not None else None
        self.dead_runs = ",".join(check_run(dead) for dead in dead_runs)
        self.pending_value = str(ClaimValue(PENDING, cluster, epoch, self.run))
        self.done_value = str(ClaimValue(DONE, cluster, epoch, self.run))
        self._cluster, self._epoch = str(cluster), epoch
        self.ttl_ms = int(ttl * 1000)
        #: claims won by taking over a pending claim of an owner no longer live
        self.taken_over = 0
        self._batch: list[tuple[str, str, asyncio.Future[bool]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    def claim(self, identity: str) -> asyncio.Future[bool]:
        """The claim's answer (True: won); it fails with ``RedisError``/``OSError`` when Redis cannot be reached."""
        return self._queue("claim", identity)

    def done(self, identity: str) -> asyncio.Future[bool]:
        """Mark this owner's pending claim done (True when it still was this owner's pending claim)."""
        return self._queue("done", identity)

    async def flush(self, timeout: float) -> int:
        """Wait (at most ``timeout`` seconds) for the requests already sent; return how many batches are still out."""
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=timeout)
        return len(self._sending)

    def _queue(self, kind: str, identity: str) -> asyncio.Future[bool]:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((kind, identity, future))
        if len(self._batch) == 1:  # the batch is open until its sender starts running
            task = asyncio.ensure_future(self._send())
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        return future

    def _command(self, kind: str, identity: str) -> tuple[str, list[Any]]:
        """The script and its ``numkeys, *keys, *args`` of one request."""
        key = self.keys.claim(identity)
        if kind == "claim":
            return CLAIM_SCRIPT, [3, key, self.keys.assignment, self.keys.handover, self.pending_value, self.ttl_ms,
                                  self._cluster, self._epoch, self.dead_runs]
        return DONE_SCRIPT, [1, key, self.pending_value, self.done_value, self.ttl_ms]

    async def _eval(self, script: str, args: list[Any]) -> Any:
        """EVALSHA, or EVAL (which caches the script) when Redis does not know it yet (first use, a restart)."""
        try:
            return await self.redis.evalsha(_SHAS[script], *args)  # type: ignore[misc]
        except NoScriptError:
            return await self.redis.eval(script, *args)  # type: ignore[misc]

    async def _execute(self, batch: list[tuple[str, str, asyncio.Future[bool]]]) -> list[Any]:
        commands = [self._command(kind, identity) for kind, identity, _ in batch]
        if len(commands) == 1:
            return [await self._eval(*commands[0])]
        # EVALSHA in a plain pipeline: redis-py's Script objects would add a SCRIPT EXISTS round trip to every
        # pipeline; a command refused with NOSCRIPT did not run, so only those are sent again (with EVAL)
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, args in commands:
                pipe.evalsha(_SHAS[script], *args)
            results = await pipe.execute(raise_on_error=False)
        for index, result in enumerate(results):
            if isinstance(result, NoScriptError):
                results[index] = await self.redis.eval(commands[index][0], *commands[index][1])  # type: ignore[misc]
            elif isinstance(result, Exception):
                raise result
        return list(results)

    async def _send(self) -> None:
        batch, self._batch = self._batch, []
        try:
            results = await self._execute(batch)
        except BaseException as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (kind, _, future), result in zip(batch, results, strict=True):
            if kind == "claim" and int(result) == 2:
                self.taken_over += 1
            if not future.done():
                future.set_result(int(result) > 0)


#: the longest nonce Discord accepts
NONCE_LENGTH = 25


def reply_nonce(identity: str, index: int) -> str:
    """The nonce of the ``index``-th message (from 0) sent while handling the claimed event ``identity``: the same
    in every process that handles it, different for every other (event, index); 25 characters."""
    digest = hashlib.sha256(f"{identity}#{index}".encode()).hexdigest()
    return "lf" + digest[: NONCE_LENGTH - 2]


class ClaimedHandling:
    """The handling of one won claim: the handler tasks its parse started, and the messages they send.

    :meth:`add` a task (those discord.py schedules while the parse runs, and those they schedule in turn);
    :meth:`parsed` once the parse returned. When the parse returned and every task added has ended,
    ``on_done(identity, completed)`` is called once; ``completed`` is False when a task was cancelled (its process
    is going away mid-handler: the claim must stay pending, for a successor to take over). :meth:`next_nonce`
    numbers the messages sent (:func:`reply_nonce`)."""

    def __init__(self, identity: str, on_done: Callable[[str, bool], None]) -> None:
        self.identity = identity
        self._on_done = on_done
        self._tasks: set[asyncio.Future[Any]] = set()
        self._parsed = False
        self.finished = False
        self.cancelled = False
        self.sent = 0

    def add(self, task: asyncio.Future[Any]) -> None:
        """Count ``task`` as part of this handling (ignored once the handling finished, or when already done)."""
        if self.finished or task.done() or task in self._tasks:
            return
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def parsed(self) -> None:
        """The parse returned: the handling ends when its tasks do."""
        self._parsed = True
        self._check()

    def next_nonce(self) -> str:
        """The nonce of the next message sent by this handling."""
        nonce = reply_nonce(self.identity, self.sent)
        self.sent += 1
        return nonce

    @property
    def running(self) -> int:
        """Tasks of this handling still running."""
        return len(self._tasks)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        self.cancelled |= task.cancelled()
        self._check()

    def _check(self) -> None:
        if self._parsed and not self._tasks and not self.finished:
            self.finished = True
            self._on_done(self.identity, not self.cancelled)


#: the handling of a won claim, inside its parse and in every task it starts (its handlers, and what they dispatch
#: later: a command's ``command_completion`` / ``command_error``); set by the cluster (``letsfrag.cluster.client``)
current_handling: ContextVar[ClaimedHandling | None] = ContextVar("letsfrag_claimed_parse", default=None)


class SeqFloor:
    """Per shard, the gateway seqs of claimed events whose handling has not finished (their handler tasks still
    run): a session record must not pass the oldest, or a successor's replay would miss it."""

    def __init__(self) -> None:
        self._open: dict[Any, dict[str, int]] = {}

    def begin(self, lane: Any, identity: str, seq: int) -> None:
        """The event ``identity`` (seq ``seq`` of ``lane``'s session) is on its way."""
        self._open.setdefault(lane, {})[identity] = seq

    def end(self, identity: str) -> None:
        """The handling of ``identity`` ended."""
        for lane, open_ in list(self._open.items()):
            if open_.pop(identity, None) is not None and not open_:
                del self._open[lane]

    def recordable(self, lane: Any, seq: int) -> int:
        """The seq a record of ``lane`` may carry now (``seq`` is the session's): before its oldest open event."""
        open_ = self._open.get(lane)
        return min(seq, min(open_.values()) - 1) if open_ else seq

    def clear(self) -> None:
        self._open.clear()


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
