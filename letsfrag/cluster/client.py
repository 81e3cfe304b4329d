"""``ClusterShardClient`` and ``ClusterShardBot``: discord.py's sharded client and bot run as one letsfrag cluster.

::

    client = ClusterShardClient(intents=discord.Intents.default())
    client.run()   # token, shards, Redis and Discord URLs come from the supervisor's environment

What the mixin adds to discord.py 2.7 (see also :mod:`.gateway`):

- shards, shard count, token and the Discord URLs from :class:`~letsfrag.environment.ClusterEnvironment`;
  outside a supervisor ``run()`` prints one sentence and exits 78 (EX_CONFIG).
- every IDENTIFY waits for the global identify queue (:mod:`.identify`). On first launch the wait happens
  *before* the socket is opened (outside discord.py's connect timeout) and the shards of this process launch
  concurrently, so different buckets identify in the same window; re-identifies wait in the hook.
- ownership is checked before every IDENTIFY and RESUME and every heartbeat; a fenced process closes its
  sessions, tells the supervisor (IPC ``fenced``) and exits 75.
- the dispatch guard (:mod:`.guard`) holds every parse and dispatch past the lease horizon.
- claim before handle (:mod:`letsfrag.claims`): the parse of an event in ``LETSFRAG_CLAIM_EVENTS`` runs only in the
  session that wins its claim in Redis, so two sessions of one shard handle it once. The claim is pending until
  the handler tasks its parse started have finished, then done; a pending claim of a process no longer live is
  taken over by a replay. Messages those handlers send carry a nonce derived from the event (:mod:`.reply_nonces`),
  so a reply sent twice (a woken process and the new owner) is one message.
- health to the supervisor and Redis, fatal close codes -> exit 77, graceful stop on SIGTERM or IPC ``stop``: no
  new claims, the claims in flight and their handlers finish (``stop_grace`` seconds at most), then close (1000).
- planned handover (:mod:`letsfrag.contract.handover`): a successor (``LETSFRAG_HANDOVER=1``) identifies beside the
  owner, keeps its claimable events in a gate (:mod:`.handover_gate`) and runs no user handler until the switch;
  it checks ownership every ``handover_check_interval`` seconds and at once on IPC ``promote``; its gateway URLs
  carry ``letsfrag_handover=<epoch>``.
- session records (:mod:`.sessions`): each shard's ``session_id``, ``resume_gateway_url`` and ``seq`` in Redis at
  READY/RESUMED, every heartbeat and on a graceful stop (only while this process owns the cluster; never over a
  newer epoch's record). A graceful stop marks them ended before closing with 1000; any other exit (fenced,
  crashed, the supervisor gone) closes with 4000 so they stay resumable.
- replay on takeover (:mod:`.replay`): the sessions a predecessor left in Redis are RESUMEd on side connections
  once this process's own shards are READY; their replayed claimable events go through the claims (so what the
  predecessor handled, or the fresh sessions also delivered, is dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

import discord
import discord.http
import yarl
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.shard import EventType
from redis.exceptions import RedisError

from ..bus import NO_REPLY, Bus
from ..claims import ClaimedHandling, Claimer, ClaimSequencer, SeqFloor, claim_identity, current_handling
from ..clock import Clock, SystemClock
from ..connection import create_redis
from ..contract.exitcodes import FATAL_CLOSE_CODES, ExitCode
from ..contract.handover import GATEWAY_PARAM
from ..contract.ipc_ops import IpcOp
from ..contract.keys import Keys
from ..environment import ClusterEnvironment
from ..errors import FencedError, NotInClusterError
from ..events import Severity, emit
from ..ipc import IpcChannel
from ..logs import JsonFormatter, mask, register_secrets_in, set_log_context
from ..rpc.caller import RpcCaller, cluster_node
from ..units import format_shard_range
from . import gateway_hooks, reply_nonces
from .context import ClusterContext
from .guard import DispatchGuard, DispatchVerdict, Ownership, default_margin
from .handover_gate import DEFAULT_CHECK_INTERVAL, GatePhase, GuildStream, HandoverGate
from .health import HealthReporter, ShardTracker
from .identify import IdentifyCoordinator, IdentifyTimeout
from .ownership import OwnershipChecker
from .replay import Replay, drain_session, is_expired_interaction
from .session_records import SessionRecord, SessionStore, close_resumably, live_sessions, resumable

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    _Base = discord.AutoShardedClient
else:
    _Base = object

#: re-identify waits stay below discord.py's hard-coded ``wait_for(60 s)``
_REIDENTIFY_WAIT = 50.0
#: seconds a graceful stop waits for the claims in flight and the handlers they started (below the supervisor's
#: ``stop_timeout / 2``)
DEFAULT_STOP_GRACE = 2.0
#: the handling of a won claim (:data:`letsfrag.claims.current_handling`): an owner that is not exclusive yet
#: dispatches what it dispatches; the claim is done when its tasks have finished; its messages carry its nonces
_claimed_parse = current_handling
#: how long a SIGTERM waits for the IPC hang-up that tells a dead supervisor from a planned stop
_SIGTERM_PROBE = 1.0


def apply_discord_urls(env: ClusterEnvironment) -> None:
    """Point discord.py at ``LETSFRAG_DISCORD_API_URL`` / ``LETSFRAG_DISCORD_GATEWAY_URL`` when set."""
    if env.discord_api_url:
        discord.http.Route.BASE = env.discord_api_url.rstrip("/")
    if env.discord_gateway_url:
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(env.discord_gateway_url)


class ClusterMixin(_Base):
    """The letsfrag behaviour shared by :class:`ClusterShardClient` and :class:`ClusterShardBot`."""

    def __init__(
        self,
        *args: Any,
        environment: ClusterEnvironment | None = None,
        ipc_socket: socket.socket | None = None,
        clock: Clock | None = None,
        guard_margin: float | None = None,
        identify_margin: float | None = None,
        handover_check_interval: float = DEFAULT_CHECK_INTERVAL,
        stop_grace: float = DEFAULT_STOP_GRACE,
        **kwargs: Any,
    ) -> None:
        error: NotInClusterError | None = None
        if environment is None:
            try:
                environment = ClusterEnvironment.from_env()
            except NotInClusterError as exc:
                error = exc
        if environment is not None:
            kwargs.setdefault("shard_ids", list(environment.shard_ids))
            kwargs.setdefault("shard_count", environment.shard_count)
            apply_discord_urls(environment)
            register_secrets_in({"token": environment.token, "secret": environment.secret,
                                 "redis": environment.redis})
        super().__init__(*args, **kwargs)
        self.cluster = ClusterContext(self, environment, error)
        self._lf_env = environment
        self._lf_clock: Clock = clock or SystemClock()
        lease_ttl = environment.lease_ttl if environment else 10.0
        margin = default_margin(lease_ttl) if guard_margin is None else guard_margin
        self._lf_guard = DispatchGuard(self._lf_clock, margin=margin)
        self._lf_tracker = ShardTracker(environment.shard_ids if environment else ())
        self._lf_identify_margin = identify_margin
        self._lf_ipc_socket = ipc_socket
        self._lf_active = False
        self._lf_fencing = False
        self._lf_undecided: str | None = None  # the reason of the current undecided wait (reported once)
        self._lf_handle_signals = False
        self._lf_pregrant: dict[int, float] = {}
        self._lf_tasks: set[asyncio.Task[Any]] = set()
        self._lf_launching: list[asyncio.Task[Any]] = []
        self._lf_check_task: asyncio.Task[Any] | None = None
        self._lf_ready_sent = False
        #: a successor reports ready once its cache is full, not discord.py's guild_ready_timeout later
        self._lf_stream = GuildStream(tuple(environment.shard_ids) if environment and environment.handover else ())
        self._lf_stream_sent = False
        self._lf_ipc: IpcChannel | None = None
        self._lf_redis: Any = None
        self._lf_bus: Bus | None = None
        self._lf_checker: OwnershipChecker | None = None
        self._lf_identify: IdentifyCoordinator | None = None
        self._lf_health: HealthReporter | None = None
        self._lf_sessions: SessionStore | None = None
        #: sessions a predecessor left (read before this process writes its own), replayed once READY
        self._lf_orphans: list[SessionRecord] = []
        self._lf_replay_started = False
        #: a graceful stop (its sessions end with 1000); any other exit leaves them resumable
        self._lf_graceful = False
        #: the supervisor's pid (read at start): a SIGTERM after it changed is the parent-death signal
        self._lf_parent_pid = 0
        self._lf_supervisor_gone = asyncio.Event()
        self._lf_claim_events = frozenset(environment.claim_events if environment else ())
        self._lf_claimer: Claimer | None = None
        #: per shard, the seqs of claimed events whose handlers still run: the session records stay before them
        self._lf_seq_floor = SeqFloor()
        self._lf_claims = ClaimSequencer(self._lf_claim, self._lf_admit, retry=self._lf_claim_carefully)
        self._lf_replaying = False  # a predecessor's replayed events are being handed to the claims
        self._lf_verifying: asyncio.Task[bool | None] | None = None
        self._lf_gate = HandoverGate(self._lf_clock, successor=bool(environment and environment.handover),
                                     check_interval=handover_check_interval)
        self._lf_promote = asyncio.Event()
        self._lf_stop_grace = stop_grace
        self._lf_stopping: asyncio.Future[None] | None = None
        self._lf_stop_dropped = 0  # claimable events not claimed because the process is stopping
        self._lf_abandoning = False  # the supervisor is gone: sessions left resumable, seq on record frozen
        self._lf_handlers: set[asyncio.Task[Any]] = set()  # discord.py's event handler tasks still running

    # --- running ------------------------------------------------------------------------------------------
    def run(self, token: str | None = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Run until stopped; exit 78 outside a supervisor, 75 when fenced, 77 on a fatal gateway close."""
        try:
            env = self.cluster.environment
        except NotInClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(int(ExitCode.CONFIG)) from None
        with contextlib.suppress(AttributeError, ValueError, RuntimeError):
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        self._lf_handle_signals = True
        if "log_handler" not in kwargs:
            from ..logs import SecretFilter

            handler = logging.StreamHandler(sys.stderr)
            handler.addFilter(SecretFilter())
            if env.log_format == "json":
                set_log_context(host=env.host_id, cluster=env.cluster_id, epoch=env.epoch,
                                shards=format_shard_range(env.shard_ids))
                handler.setFormatter(JsonFormatter())
                kwargs.setdefault("log_formatter", handler.formatter)
            kwargs["log_handler"] = handler
            kwargs.setdefault("root_logger", True)
        try:
            super().run(token or env.token, **kwargs)
        except Exception:
            print(mask(traceback.format_exc()), end="", file=sys.stderr, flush=True)
            raise SystemExit(int(ExitCode.FAILURE)) from None
        if self.cluster.exit_code:
            raise SystemExit(int(self.cluster.exit_code))

    async def start(self, token: str | None = None, *, reconnect: bool = True) -> None:  # type: ignore[override]
        """Check ownership, then log in and connect; returns when stopped, fenced or after a fatal close."""
        env = self.cluster.environment
        await self._lf_setup(env)
        try:
            if await self._lf_verify() is not True:
                if not self._lf_guard.fenced:
                    raise RuntimeError(f"cannot confirm ownership of cluster {env.cluster_id} in Redis")
                return
            self._lf_spawn(self._lf_heartbeat_loop())
            if not self._lf_gate.exclusive:
                self._lf_spawn(self._lf_handover_loop())
            if self._lf_ipc is not None:
                self._lf_spawn(self._lf_ipc_loop(self._lf_ipc))
            await super().start(token or env.token, reconnect=reconnect)
        except FencedError:
            self.cluster.exit_code = self.cluster.exit_code or ExitCode.FENCED
        except discord.LoginFailure as exc:
            await self._lf_fatal(4004, str(exc) or "authentication failed")
        except discord.PrivilegedIntentsRequired as exc:
            await self._lf_fatal(4014, str(exc))
        except discord.ConnectionClosed as exc:
            if exc.code not in FATAL_CLOSE_CODES:
                await self._lf_report(traceback.format_exc())
                raise
            await self._lf_fatal(exc.code, exc.reason or f"gateway closed with {exc.code}", shard=exc.shard_id)
        except Exception:
            if not self._lf_guard.fenced:
                self.cluster.exit_code = self.cluster.exit_code or ExitCode.FAILURE
                await self._lf_report(traceback.format_exc())
                raise
        finally:
            await self._lf_teardown()

    async def _lf_setup(self, env: ClusterEnvironment) -> None:
        keys = Keys(env.namespace)
        settings = env.redis_settings()
        self._lf_redis = create_redis(settings)
        bus = Bus(settings, node_id=cluster_node(env.cluster_id), namespace=env.namespace, secret=env.secret,
                  window=env.signature_window, max_bytes=env.max_message_bytes)
        await bus.subscribe(keys.cluster_inbox(env.cluster_id), self._lf_on_envelope)
        await bus.subscribe(keys.broadcast, self._lf_on_envelope)
        await bus.start()
        self._lf_bus = bus
        self.cluster.caller = RpcCaller(bus, allow_eval=env.allow_eval)
        self._lf_checker = OwnershipChecker(
            self._lf_redis, keys, cluster_id=env.cluster_id, host_id=env.host_id, epoch=env.epoch,
            incarnation=env.host_incarnation, lease_ttl=env.lease_ttl, clock=self._lf_clock,
            shard_ids=tuple(env.shard_ids), successor=env.handover)
        self._lf_identify = IdentifyCoordinator(
            self._lf_redis, keys, max_concurrency=env.max_concurrency, window=env.identify_window,
            margin=self._lf_identify_margin, source=cluster_node(env.cluster_id))
        if self._lf_ipc_socket is not None:
            self._lf_ipc = await IpcChannel.from_socket(self._lf_ipc_socket)
        else:
            self._lf_ipc = await IpcChannel.from_env()
        self._lf_claimer = Claimer(self._lf_redis, keys, f"{env.cluster_id}/{env.epoch}", run=env.run or None,
                                   dead_runs=env.dead_runs)
        self._lf_sessions = SessionStore(self._lf_redis, keys, env.cluster_id, owner=(env.host_id, env.epoch))
        await self._lf_load_orphans()
        self._lf_health = HealthReporter(self, self._lf_redis, keys, env.cluster_id, self._lf_tracker, self._lf_ipc)
        gateway_hooks.install()
        gateway_hooks.wrap_parsers(self._connection.parsers, self._lf_parse)
        if self._lf_claim_events:
            reply_nonces.install()
        self._lf_active = True
        self._lf_parent_pid = os.getppid()
        if self._lf_ipc is not None:
            await self._lf_ipc.send(IpcOp.HELLO, pid=os.getpid(), epoch=env.epoch)
        if self._lf_handle_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGTERM, lambda: self._lf_spawn(self._lf_on_sigterm()))

    async def _lf_teardown(self) -> None:
        if not self.is_closed() and not self._lf_graceful:
            await self._lf_close_resumably()
        if not self.is_closed():
            with contextlib.suppress(Exception):
                await self.close()
        await self._lf_claims.close()
        current = asyncio.current_task()
        for task in [*self._lf_tasks, *self._lf_launching]:
            if task is not current:
                task.cancel()
        if self._lf_identify is not None:
            with contextlib.suppress(Exception):
                await self._lf_identify.close()
        if self._lf_bus is not None:
            await self._lf_bus.close()
        if self._lf_redis is not None:
            with contextlib.suppress(Exception):
                await self._lf_redis.aclose()
        if self._lf_ipc is not None:
            await self._lf_ipc.close()

    def _lf_spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._lf_tasks.add(task)
        task.add_done_callback(self._lf_tasks.discard)
        return task

    # --- shards: identify queue, concurrent launch, concurrent re-identify --------------------------------
    async def launch_shards(self) -> None:
        if not self._lf_active:
            return await super().launch_shards()
        if self.is_closed():
            return
        assert self.shard_count is not None
        self._connection.shard_count = self.shard_count
        shard_ids = self.shard_ids or list(range(self.shard_count))
        self._connection.shard_ids = shard_ids
        await self._lf_ensure_budget()
        gateway_url = DiscordWebSocket.DEFAULT_GATEWAY
        self._lf_launching = [
            asyncio.create_task(self.launch_shard(gateway_url, sid, initial=index == 0))
            for index, sid in enumerate(shard_ids)
        ]
        await asyncio.gather(*self._lf_launching, return_exceptions=True)

    async def launch_shard(self, gateway: yarl.URL, shard_id: int, *, initial: bool = False) -> None:
        # discord.py's own retry after a failed launch calls this method again: it queues once more
        if not self._lf_active:
            return await super().launch_shard(gateway, shard_id, initial=initial)
        if self.is_closed() or self._lf_guard.fenced:
            return
        assert self._lf_identify is not None
        self._lf_tracker.set(shard_id, "identifying")
        while True:
            try:
                await self._lf_identify.acquire(shard_id, self._lf_holder(shard_id), timeout=60.0)
                break
            except IdentifyTimeout:
                continue
        self._lf_pregrant[shard_id] = self._lf_clock.monotonic()
        await super().launch_shard(gateway, shard_id, initial=initial)

    async def connect(self, *, reconnect: bool = True) -> None:
        """discord.py's loop, except that re-identifies and reconnects run concurrently: one shard waiting in
        the identify queue must not hold up the RESUME of another (discord.py awaits them one by one)."""
        if not self._lf_active:
            return await super().connect(reconnect=reconnect)
        self._reconnect = reconnect
        await self.launch_shards()
        queue = self._AutoShardedClient__queue  # type: ignore[attr-defined]
        while not self.is_closed():
            item = await queue.get()
            if item.type == EventType.close:
                await self.close()
                if isinstance(item.error, discord.ConnectionClosed):
                    if item.error.code == 4014:
                        raise discord.PrivilegedIntentsRequired(item.shard.id) from None
                    if item.error.code != 1000:
                        raise item.error
                return
            if item.type in (EventType.identify, EventType.resume):
                self._lf_spawn(item.shard.reidentify(item.error))
            elif item.type == EventType.reconnect:
                self._lf_spawn(item.shard.reconnect())
            elif item.type == EventType.terminate:
                await self.close()
                raise item.error
            elif item.type == EventType.clean_close:
                return

    def _lf_holder(self, shard_id: int) -> str:
        return f"{self.cluster.id}:{shard_id}"

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not self._lf_active:
            return await super().before_identify_hook(shard_id, initial=initial)
        assert self._lf_identify is not None and self._lf_env is not None
        sid = shard_id or 0
        granted_at = self._lf_pregrant.pop(sid, None)
        holder = self._lf_holder(sid)
        if granted_at is None or self._lf_clock.monotonic() - granted_at > self._lf_env.identify_window:
            self._lf_tracker.set(sid, "identifying")
            await self._lf_identify.acquire(sid, holder, timeout=_REIDENTIFY_WAIT)
        # the window counts from the IDENTIFY itself, not from the grant before the connection was opened: the
        # ownership check (a round trip) comes first, the confirmation last, just before discord.py sends it
        while True:
            await self._lf_require_owner(f"IDENTIFY of shard {sid}")
            if await self._lf_identify.confirm(sid, holder):
                return
            self._lf_tracker.set(sid, "identifying")
            await self._lf_identify.acquire(sid, holder, timeout=_REIDENTIFY_WAIT)

    async def _lf_after_identify(self, shard_id: int | None) -> None:
        """The IDENTIFY of ``shard_id`` has left: its bucket's window restarts from now (``confirm``), so the next
        IDENTIFY of the bucket follows this one by a whole window however late the event loop sent it."""
        if not self._lf_active or self._lf_identify is None:
            return
        sid = shard_id or 0
        try:
            if not await self._lf_identify.confirm(sid, self._lf_holder(sid)):
                log.warning("the identify slot of shard %s expired before its IDENTIFY left", sid)
        except (RedisError, OSError) as exc:  # the slot still runs from the confirmation before the send
            log.warning("could not restart the identify window of shard %s after its IDENTIFY: %s", sid, exc)

    async def _lf_before_resume(self, shard_id: int | None) -> None:
        self._lf_tracker.set(shard_id, "resuming")
        await self._lf_require_owner(f"RESUME of shard {shard_id}")

    async def _lf_require_owner(self, what: str) -> None:
        if self._lf_guard.fenced:
            raise FencedError(f"{what} refused: cluster {self.cluster.id} is fenced")
        assert self._lf_checker is not None
        try:
            result = await self._lf_checker.check()
        except (RedisError, OSError) as exc:
            raise ConnectionError(f"{what} postponed: cannot check ownership in Redis ({exc})") from exc
        if result.ownership.undecided:
            await self._lf_hold_undecided(result.ownership.reason)
            raise ConnectionError(f"{what} postponed: {result.ownership.reason}")
        if result.ownership.fenced:
            self._lf_spawn(self._lf_fence(result.ownership.reason))
            raise FencedError(f"{what} refused: {result.ownership.reason}")
        self._lf_guard.confirm(result.sent_at, result.ownership.ttl)
        self._lf_observe_handover(result.ownership)
        if result.ownership.handed_over:  # no new session for a cluster handed over: it stops soon
            raise ConnectionError(f"{what} postponed: {result.ownership.reason}")

    async def _lf_ensure_budget(self) -> None:
        assert self._lf_identify is not None
        try:
            if not await self._lf_identify.has_budget():
                _, _, limits = await self.http.get_bot_gateway()
                await self._lf_identify.ensure_budget(dict(limits))
        except Exception as exc:
            log.warning("could not record the identify budget: %s", exc)

    # --- the dispatch guard ------------------------------------------------------------------------------
    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        if not self._lf_active:
            return super().dispatch(event, *args, **kwargs)
        if self._lf_tracker.on_event(event, args):
            self._lf_shard_state_changed()
        handling = _claimed_parse.get()
        if not self._lf_gate.exclusive and not self._lf_gate.allows_dispatch(
                event, args, claimed=handling is not None):
            return
        parent = super().dispatch
        if handling is None:
            self._lf_admit(lambda: parent(event, *args, **kwargs))
            return
        # a dispatch held by the guard runs later, outside the parse: it keeps the handling (and holds it open)
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        handling.add(admitted)

        def claimed_dispatch() -> None:
            token = _claimed_parse.set(handling)
            try:
                parent(event, *args, **kwargs)
            finally:
                _claimed_parse.reset(token)
                if not admitted.done():
                    admitted.set_result(None)

        self._lf_admit(claimed_dispatch)

    @property
    def claim_stats(self) -> dict[str, int]:
        """Claimed events this process won (and handled), lost (another session had them) and still waiting."""
        claims = self._lf_claims
        return {"won": claims.won, "lost": claims.lost, "waiting": claims.waiting}

    @property
    def handover_stats(self) -> dict[str, Any]:
        """The handover gate (:mod:`.handover_gate`): its phase (``off`` in a normal process), events kept,
        released, overflowed and dropped, dispatches suppressed; and claimable events dropped by a graceful stop."""
        return {**self._lf_gate.status(), "dropped_at_stop": self._lf_stop_dropped}

    def _lf_parse(self, event: str, data: Any, parse: Any) -> None:
        """A gateway parse: claimable events wait for their claim, in order per shard; then the guard."""
        identity = claim_identity(event, data) if event in self._lf_claim_events else None
        lane = gateway_hooks.current_shard.get()
        if not self._lf_stream_sent and self._lf_gate.phase is GatePhase.SUCCESSOR:
            self._lf_note_stream(lane, event, data)
        if (identity is not None or not self._lf_gate.exclusive) and not self._lf_gate_parse(event, lane, identity,
                                                                                              parse):
            return
        if identity is not None:
            parse = self._lf_claimed(parse, identity, lane, None if self._lf_replaying else self._lf_live_seq(lane))
        self._lf_claims.submit(lane, identity, parse)
        if event in ("READY", "RESUMED"):  # a new session is on record at once, not a heartbeat later
            self._lf_spawn(self._lf_save_sessions())

    def _lf_live_seq(self, lane: Any) -> int | None:
        """The seq of the dispatch being parsed on shard ``lane`` (discord.py sets it before parsing)."""
        shard = self._AutoShardedClient__shards.get(lane)  # type: ignore[attr-defined]
        seq = getattr(getattr(shard, "ws", None), "sequence", None)
        return seq if isinstance(seq, int) else None

    def _lf_claim_done(self, identity: str, completed: bool) -> None:
        """Every handler task of a won claim ended: the claim becomes done (only if still this owner's pending
        one) — unless a task was cancelled (the process is going away mid-handler): then it stays pending."""
        self._lf_seq_floor.end(identity)
        if self._lf_claimer is None or not completed:
            return
        try:
            future = self._lf_claimer.done(identity)
        except RuntimeError:  # no running loop (the client is shutting down)
            return

        def report(done: asyncio.Future[bool]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.warning("could not mark the claim of %s done (a replay may handle it again): %s", identity,
                            done.exception())

        future.add_done_callback(report)

    def _lf_claim(self, identity: str) -> Awaitable[bool]:
        """Claim one event: True when this session handles it. Inside the dispatch horizon the claim goes straight
        to Redis (a failure is retried by :meth:`_lf_claim_carefully`); outside it, carefully."""
        assert self._lf_claimer is not None
        if self._lf_guard.allows():
            return self._lf_claimer.claim(identity)
        return self._lf_claim_carefully(identity)

    async def _lf_claim_carefully(self, identity: str) -> bool:
        """Claims are taken only inside the dispatch horizon (a woken process re-confirms ownership first) and
        retried while Redis is unreachable; a fenced or closed process claims nothing (False)."""
        assert self._lf_claimer is not None
        while not self._lf_guard.fenced and not self.is_closed():
            if not self._lf_guard.allows():
                if await self._lf_verify_shared() is None:
                    await asyncio.sleep(0.2)
                continue
            try:
                return await self._lf_claimer.claim(identity)
            except (RedisError, OSError) as exc:
                log.warning("cannot claim %s in Redis (retrying): %s", identity, exc)
                await asyncio.sleep(0.2)
        return False

    async def _lf_verify_shared(self) -> bool | None:
        """:meth:`_lf_verify`, one at a time however many wait for it."""
        if self._lf_verifying is None or self._lf_verifying.done():
            self._lf_verifying = self._lf_spawn(self._lf_verify())
        return await asyncio.shield(self._lf_verifying)

    def _lf_admit(self, thunk: Any) -> None:
        if self._lf_guard.admit(thunk) is DispatchVerdict.HOLD:
            self._lf_request_check()

    def _lf_request_check(self) -> None:
        if self._lf_check_task is None or self._lf_check_task.done():
            self._lf_check_task = self._lf_spawn(self._lf_check_held())

    async def _lf_check_held(self) -> None:
        while self._lf_guard.held and not self._lf_guard.fenced and not self.is_closed():
            verdict = await self._lf_verify()
            if verdict is None:
                await asyncio.sleep(0.2)
            elif self._lf_guard.held:
                await asyncio.sleep(0.05)

    async def _lf_verify(self) -> bool | None:
        """Check ownership now: True owner (held events released), False fenced, None Redis unreachable."""
        assert self._lf_checker is not None
        try:
            result = await self._lf_checker.check()
        except (RedisError, OSError) as exc:
            log.warning("cannot check ownership of cluster %s in Redis: %s", self.cluster.id, exc)
            return None
        if result.ownership.undecided:
            await self._lf_hold_undecided(result.ownership.reason)
            return None
        if self._lf_undecided is not None:
            log.info("cluster %s: ownership decided again (%s)", self.cluster.id, result.ownership.reason)
            self._lf_undecided = None
        if result.ownership.fenced:
            self._lf_gate.observe(result.ownership)
            await self._lf_fence(result.ownership.reason)
            return False
        self._lf_guard.confirm(result.sent_at, result.ownership.ttl)
        self._lf_observe_handover(result.ownership)
        self._lf_guard.release(lambda exc: log.error("a held event failed", exc_info=exc))
        return True

    def _lf_shard_state_changed(self) -> None:
        ready = self._lf_tracker.all_ready
        self.cluster.ready = ready
        if ready:
            self._lf_start_replay()
        if ready and not self._lf_ready_sent:
            self._lf_ready_sent = True
            if self._lf_ipc is not None:
                self._lf_spawn(self._lf_ipc.send(IpcOp.READY))
        elif not ready:
            self._lf_ready_sent = False

    # --- outcomes -----------------------------------------------------------------------------------------
    async def _lf_hold_undecided(self, reason: str) -> None:
        """Ownership cannot be decided yet: events stay held (not dropped); reported once per reason."""
        if reason == self._lf_undecided:
            return
        self._lf_undecided = reason
        env = self.cluster.environment
        await emit(self._lf_redis, Keys(env.namespace), Severity.WARNING, "cluster_holding",
                   f"cluster {env.cluster_id}: {reason} ({len(self._lf_guard.held)} events held so far)",
                   source=cluster_node(env.cluster_id), cluster=env.cluster_id, host=env.host_id, epoch=env.epoch)

    async def _lf_fence(self, reason: str) -> None:
        if self._lf_fencing:
            return
        self._lf_fencing = True
        dropped = self._lf_guard.fence()
        self.cluster.exit_code = ExitCode.FENCED
        env = self.cluster.environment
        for task in self._lf_launching:
            task.cancel()
        if self._lf_ipc is not None:
            await self._lf_ipc.send(IpcOp.FENCED, reason=reason)
        await emit(self._lf_redis, Keys(env.namespace), Severity.WARNING, "cluster_fenced",
                   f"cluster {env.cluster_id} fenced, closing its sessions: {reason} ({dropped} held events dropped)",
                   source=cluster_node(env.cluster_id),
                   cluster=env.cluster_id, host=env.host_id, epoch=env.epoch, dropped=dropped)
        await asyncio.shield(self._lf_close_resumably())  # the successor may still replay these sessions
        await asyncio.shield(self.close())  # teardown cancels this task; never cancel the close itself

    async def _lf_fatal(self, code: int, reason: str, *, shard: int | None = None) -> None:
        """Discord closed with a code after which reconnecting cannot help: tell the supervisor (which does not
        restart this process) and the event stream, naming the shard when discord.py said which one."""
        self.cluster.exit_code = ExitCode.FATAL_GATEWAY
        env = self.cluster.environment
        on_shard = f" on shard {shard}" if shard is not None else ""
        log.error("cluster %s: fatal gateway close %r%s (%r); not restarting", env.cluster_id, code, on_shard, reason)
        if self._lf_ipc is not None:
            await self._lf_ipc.send(IpcOp.FATAL, code=code, reason=reason, shard=shard)
        await emit(self._lf_redis, Keys(env.namespace), Severity.ERROR, "fatal_gateway",
                   f"cluster {env.cluster_id}: Discord closed with {code}{on_shard} ({reason})",
                   source=cluster_node(env.cluster_id), cluster=env.cluster_id, code=code,
                   **({"shard": shard} if shard is not None else {}))

    async def _lf_report(self, text: str) -> None:
        if self._lf_health is not None:
            await self._lf_health.report_error(text, redis=self._lf_gate.writes_allowed)

    async def _lf_shutdown(self, reason: str) -> None:
        """The graceful stop (IPC ``stop``, SIGTERM, the supervisor gone), once however often it is asked for."""
        if self._lf_stopping is None:
            self._lf_stopping = asyncio.ensure_future(self._lf_stop(reason))
        await asyncio.shield(self._lf_stopping)  # teardown cancels the caller; never cancel the stop itself

    async def _lf_stop(self, reason: str) -> None:
        """No new claims (:meth:`_lf_parse` drops claimable events from now on: a successor handles them); the
        claims in flight resolve, their parses run and the handlers they started finish, within ``stop_grace``
        seconds; then the sessions are recorded and closed with 1000."""
        log.info("cluster %s stopping: %s", self.cluster.id, reason)
        if self.cluster.exit_code is None:
            self.cluster.exit_code = ExitCode.OK
        await self._lf_finish_in_flight()
        self._lf_graceful = True
        await self._lf_save_final_sessions()
        await asyncio.shield(self.close())  # teardown cancels this task; never cancel the close itself

    async def _lf_finish_in_flight(self) -> None:
        """The claims in flight resolve, their parses run and the handlers they started finish, within
        ``stop_grace`` seconds (new claimable events are dropped meanwhile: :meth:`_lf_gate_parse`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lf_stop_grace
        waiting = await self._lf_claims.drain(self._lf_stop_grace)
        handlers = [task for task in self._lf_handlers if not task.done()]
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=max(0.0, deadline - loop.time()))
        else:
            pending = set()
        if waiting or pending:
            log.warning("cluster %s: stopping with %d claimed events unresolved and %d handlers still running "
                        "after %.1fs", self.cluster.id, waiting, len(pending), self._lf_stop_grace)
        if self._lf_claimer is not None:  # the handlers' done callbacks (run before this wait returned) sent the
            await self._lf_claimer.flush(max(0.1, deadline - loop.time()))  # done marks: they land before the close

    async def _lf_save_final_sessions(self) -> None:
        """The session records of a graceful stop, marked ended (:meth:`_lf_end_sessions`), after a fresh check
        that tells whether the cluster was handed over (its successor's records must not be overwritten)."""
        if self._lf_gate.phase in (GatePhase.OFF, GatePhase.EXCLUSIVE) and self._lf_checker is not None:
            with contextlib.suppress(RedisError, OSError):
                self._lf_observe_handover((await self._lf_checker.check()).ownership)
        await self._lf_end_sessions()

    def _schedule_event(self, coro: Any, event_name: str, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = super()._schedule_event(coro, event_name, *args, **kwargs)
        if self._lf_active:  # a graceful stop lets them finish (a handler answering a claimed event)
            self._lf_handlers.add(task)
            task.add_done_callback(self._lf_handlers.discard)
            handling = _claimed_parse.get()
            if handling is not None:  # the claim is done when its handlers are
                handling.add(task)
        return task

    # --- planned handover (the successor's gate, letsfrag.contract.handover) ---------------------------------------
    def _lf_gateway_query(self) -> dict[str, str] | None:
        """Extra query parameters of the gateway connections this process opens now (see :mod:`.gateway`)."""
        if self._lf_gate.phase is GatePhase.SUCCESSOR and self._lf_env is not None:
            return {GATEWAY_PARAM: str(self._lf_env.epoch)}
        return None

    def _lf_gate_parse(self, event: str, lane: Any, identity: str | None, parse: Any) -> bool:
        """True when the parse goes on to the claims; False when it is kept (a successor's claimable event),
        dropped (a claimable event reaching a stopping process: its successor handles it) or left to the old
        process (an unclaimed ``INTERACTION_CREATE``: its parse runs app commands, user code)."""
        if identity is None:
            return event != "INTERACTION_CREATE"
        if self._lf_stopping is not None or self._lf_abandoning:
            self._lf_stop_dropped += 1
            return False
        if self._lf_gate.keeps:
            if not self._lf_gate.keep(lane, identity, parse) and self._lf_gate.overflowed == 1:
                log.warning("cluster %s: the handover gate is full (%d events kept); later claimable events are "
                            "left to the current owner", self.cluster.id, self._lf_gate.limit)
            return False
        return True

    def _lf_note_stream(self, lane: Any, event: str, data: Any) -> None:
        """A successor without member chunking sends IPC ``ready`` once every guild its READYs listed arrived."""
        if self._connection._chunk_guilds:  # the member cache fills later: discord.py's ready decides
            return
        self._lf_stream.on_parse(lane, event, data)
        if self._lf_stream.complete and self._lf_ipc is not None:
            self._lf_stream_sent = True
            log.info("cluster %s: every guild of the successor's shards arrived; ready for the switch",
                     self.cluster.id)
            self._lf_spawn(self._lf_ipc.send(IpcOp.READY))

    def _lf_claimed(self, parse: Any, identity: str, lane: Any = None, seq: int | None = None) -> Any:
        """``parse`` run as the handling of a won claim (:class:`~letsfrag.claims.ClaimedHandling`): its dispatches
        run in an owner that is not exclusive, the handler tasks discord.py schedules for them (and those these
        schedule in turn) are counted (:meth:`_schedule_event`), and the claim is done once they have all finished.
        ``seq``: the event's seq in shard ``lane``'s session, which the session records do not pass until then."""
        def claimed() -> None:
            handling = ClaimedHandling(identity, self._lf_claim_done)
            if seq is not None:
                self._lf_seq_floor.begin(lane, identity, seq)
            token = _claimed_parse.set(handling)
            try:
                parse()
            finally:
                _claimed_parse.reset(token)
                handling.parsed()
        return claimed

    def _lf_observe_handover(self, ownership: Ownership) -> None:
        """Apply a verdict to the gate: at the switch the kept events go to the claims, in order, before any
        newer parse; once exclusive the suppressed lifecycle events are dispatched."""
        gate = self._lf_gate
        if gate.phase is GatePhase.OFF and not ownership.handed_over:
            return
        before = gate.phase
        released = gate.observe(ownership)
        for item in released:
            self._lf_claims.submit(item.lane, item.identity, self._lf_claimed(item.parse, item.identity))
        if gate.phase is not before:
            log.info("cluster %s: handover %s -> %s (%s; %d kept events submitted to the claims, %d overflowed)",
                     self.cluster.id, before, gate.phase, ownership.reason, len(released), gate.overflowed)
        parent = super().dispatch
        for event, args in gate.take_lifecycle():
            self._lf_admit(lambda event=event, args=args: parent(event, *args))

    async def _lf_handover_loop(self) -> None:
        """Check ownership every ``handover_check_interval`` seconds (at once on IPC ``promote``) until this
        successor is the exclusive owner, or fenced, or closed."""
        gate = self._lf_gate
        while not self.is_closed() and not self._lf_guard.fenced:
            wait = gate.next_check()
            if wait is None:
                return
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lf_promote.wait(), wait)
            self._lf_promote.clear()
            gate.note_check()
            await self._lf_verify_shared()

    async def _lf_on_envelope(self, envelope: Any) -> Any:
        """Cluster RPC, served once this process dispatches everything (the old process answers until then)."""
        if not self._lf_gate.exclusive:
            return NO_REPLY
        return await self.cluster.server.on_envelope(envelope)

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        await super().on_error(event_method, *args, **kwargs)
        await self._lf_report(f"in {event_method}:\n{traceback.format_exc()}")

    # --- background ---------------------------------------------------------------------------------------
    async def _lf_heartbeat_loop(self) -> None:
        assert self._lf_env is not None and self._lf_health is not None
        interval = self._lf_env.heartbeat_interval
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self.is_closed():
            lag = max(0.0, loop.time() - due)
            await self._lf_verify()
            if self._lf_guard.fenced:
                return
            try:
                await self._lf_health.beat(lag, redis=self._lf_gate.writes_allowed)
            except Exception:
                log.exception("heartbeat failed")
            await self._lf_save_sessions()
            due = max(due + interval, loop.time())
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _lf_save_sessions(self) -> None:
        """Write this cluster's session records (only while it owns its shards, and not once it abandons them: the
        next owner replays from the seq recorded then; Redis failures are logged)."""
        if (self._lf_sessions is None or self._lf_abandoning or self._lf_guard.fenced or not self._lf_guard.allows()
                or not self._lf_gate.writes_allowed):
            return
        env = self.cluster.environment
        # a shard with a parse still waiting for its claim keeps its older record, and a record stays before the
        # oldest claimed event whose handlers still run: discord.py's seq already counts those events, and a
        # successor replaying from it would never see them (the claims drop the extra ones; a pending claim of this
        # process is taken over)
        floor = self._lf_seq_floor
        records = [dataclasses.replace(record, seq=floor.recordable(record.shard_id, record.seq))
                   for record in live_sessions(self, env.shard_ids, env.epoch)
                   if not self._lf_claims.pending(record.shard_id)]
        try:
            await self._lf_sessions.save(records)
        except (RedisError, OSError) as exc:
            log.debug("could not write the session records: %s", exc)

    async def _lf_end_sessions(self) -> None:
        """A graceful stop: the last seq on record (while owner), then every session marked ended — before the
        1000 close ends them at Discord, so no successor tries to RESUME them (and gets op 9)."""
        await self._lf_save_sessions()
        if self._lf_sessions is None:
            return
        env = self.cluster.environment
        try:
            await self._lf_sessions.end(live_sessions(self, env.shard_ids, env.epoch))
        except (RedisError, OSError) as exc:
            log.warning("could not mark the sessions of cluster %s ended: %s", env.cluster_id, exc)

    async def _lf_on_sigterm(self) -> None:
        """SIGTERM: a planned stop, unless it is the parent-death signal (the supervisor died), which leaves the
        sessions resumable like the IPC hang-up does. Linux sends the parent-death signal when the parent *thread*
        exits, so a SIGKILLed supervisor's first one can come while ``getppid()`` still names it: the IPC hang-up
        (within :data:`_SIGTERM_PROBE` s) or a changed parent pid decides."""
        if self._lf_ipc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lf_supervisor_gone.wait(), _SIGTERM_PROBE)
            if self._lf_supervisor_gone.is_set():
                return  # the IPC loop abandons
        if os.getppid() != self._lf_parent_pid:
            await self._lf_abandon("the supervisor is gone (parent-death SIGTERM)")
        else:
            await self._lf_shutdown("SIGTERM")

    async def _lf_abandon(self, reason: str) -> None:
        """Stop without ending the sessions (the supervisor is gone: not a planned stop): the last seq on record,
        then the connections closed with 4000, so the next owner RESUMEs them and replays what was missed."""
        log.info("cluster %s stopping, its sessions left resumable: %s", self.cluster.id, reason)
        if self.cluster.exit_code is None:
            self.cluster.exit_code = ExitCode.OK
        await self._lf_save_sessions()
        # from here the recorded seq stays put and claimable events are dropped (the next owner replays them
        # from it); the events this process claimed before finish their handlers, or they would be lost
        self._lf_abandoning = True
        await self._lf_finish_in_flight()
        await asyncio.shield(self._lf_close_resumably())
        await asyncio.shield(self.close())  # teardown cancels this task; never cancel the close itself

    async def _lf_close_resumably(self) -> None:
        with contextlib.suppress(Exception):
            await close_resumably(self)

    # --- replay on takeover (see :mod:`.replay`) ------------------------------------------------------------
    async def _lf_load_orphans(self) -> None:
        """Read the sessions a predecessor left (before this process writes its own). Not in a handover
        successor: its predecessor is alive and ends its own sessions."""
        env = self.cluster.environment
        if not self._lf_claim_events or env.handover or self._lf_sessions is None:
            return
        try:
            stored = await self._lf_sessions.load()
        except (RedisError, OSError) as exc:
            log.warning("cannot read the session records of cluster %s: %s", env.cluster_id, exc)
            return
        self._lf_orphans = resumable(stored, env.shard_ids, env.epoch)

    def _lf_start_replay(self) -> None:
        if self._lf_orphans and not self._lf_replay_started:
            self._lf_replay_started = True
            self._lf_spawn(self._lf_replay_orphans())

    async def _lf_replay_orphans(self) -> None:
        """Drain every session a predecessor left and hand its claimable events to the claims."""
        orphans, self._lf_orphans = self._lf_orphans, []
        assert self._lf_sessions is not None
        try:  # a predecessor stopping gracefully after this process read the records has ended them since
            ended = await self._lf_sessions.ended(record.session_id for record in orphans)
        except (RedisError, OSError):
            ended = set()
        for record in orphans:
            if record.session_id in ended:
                log.info("shard %s's previous session was ended by a graceful stop: nothing to replay",
                         record.shard_id)
        results = await asyncio.gather(*(self._lf_drain(r) for r in orphans if r.session_id not in ended))
        for replay in results:
            if replay is not None and not self._lf_guard.fenced and not self.is_closed():
                await self._lf_dispatch_replay(replay)

    async def _lf_drain(self, record: SessionRecord) -> Replay | None:
        env = self.cluster.environment
        keys = Keys(env.namespace)
        try:
            replay = await drain_session(record, env.token)
        except Exception as exc:
            await emit(self._lf_redis, keys, Severity.WARNING, "replay_failed",
                       f"cluster {env.cluster_id}: could not replay shard {record.shard_id}'s previous session: "
                       f"{mask(str(exc))}", source=cluster_node(env.cluster_id), cluster=env.cluster_id,
                       shard=record.shard_id)
            return None
        if not replay.resumed:
            await emit(self._lf_redis, keys, Severity.WARNING, "replay_refused",
                       f"cluster {env.cluster_id}: shard {record.shard_id}'s previous session (epoch "
                       f"{record.epoch}) was not replayed, its missed events are lost: {replay.reason}",
                       source=cluster_node(env.cluster_id), cluster=env.cluster_id, shard=record.shard_id,
                       epoch=record.epoch)
            return None
        return replay

    async def _lf_dispatch_replay(self, replay: Replay) -> None:
        """The replay's claimable events through the (wrapped) parsers, so through the claims and the guard."""
        env = self.cluster.environment
        handed = expired = 0
        parsers = self._connection.parsers
        token = gateway_hooks.current_shard.set(replay.shard_id)
        self._lf_replaying = True  # their seqs are the old session's, not this shard's
        try:
            for event, data in replay.events:
                if event not in self._lf_claim_events or event not in parsers:
                    continue
                if is_expired_interaction(event, data):
                    expired += 1
                    log.warning("replayed interaction %s of shard %s is older than 3 s: expired, not answered",
                                data.get("id"), replay.shard_id)
                    continue
                parsers[event](data)
                handed += 1
        finally:
            self._lf_replaying = False
            gateway_hooks.current_shard.reset(token)
        await emit(self._lf_redis, Keys(env.namespace), Severity.INFO, "session_replayed",
                   f"cluster {env.cluster_id}: shard {replay.shard_id}'s previous session replayed "
                   f"{len(replay.events)} events ({handed} handed to the claims, {expired} expired interactions)",
                   source=cluster_node(env.cluster_id), cluster=env.cluster_id, shard=replay.shard_id,
                   replayed=len(replay.events), claimed=handed, expired=expired)

    async def _lf_ipc_loop(self, ipc: IpcChannel) -> None:
        while True:
            message = await ipc.receive()
            if message is None:
                self._lf_supervisor_gone.set()
                await self._lf_abandon("the supervisor is gone (IPC closed)")
                return
            if message.get("op") == IpcOp.STOP:
                await self._lf_shutdown(str(message.get("reason") or "stop requested by the supervisor"))
                return
            if message.get("op") == IpcOp.PROMOTE:
                self._lf_promote.set()


class ClusterShardClient(ClusterMixin, discord.AutoShardedClient):
    """``discord.AutoShardedClient`` running the shards a letsfrag supervisor gave this process."""


class ClusterShardBot(ClusterMixin, commands.AutoShardedBot):
    """``commands.AutoShardedBot`` running the shards a letsfrag supervisor gave this process."""
