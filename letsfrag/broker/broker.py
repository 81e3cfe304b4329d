"""The ClusterBroker: decides the layout, grants clusters to hosts with fenced epochs, fails over, rebalances.

Run one or more brokers against the same Redis; the holder of ``{ns}:leader`` acts, the others are standbys
that only renew their ``{ns}:brokers:{id}`` key and try to take the lock. The leader's loop is woken by
doorbells on ``{ns}:cb`` and by a timer every ``heartbeat_interval`` (pub/sub may drop messages: every decision
also follows from polling keys). See ``docs/redis.md`` for every key and message.

Example::

    broker = ClusterBroker(config)
    broker.on("ready", lambda: print("every cluster has a host"))
    async with broker:
        await broker.serve_forever()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from letsfrag.bus import NO_REPLY, Bus
from letsfrag.clock import Clock, SystemClock
from letsfrag.config import BrokerConfig
from letsfrag.contract.envelope import Envelope, MessageType
from letsfrag.contract.records import LayoutRecord
from letsfrag.errors import BusError, DiscordSetupError, LetsfragError
from letsfrag.events import Severity, emit
from letsfrag.logs import register_secrets_in, set_log_context
from letsfrag.loops import cancel_and_wait, supervised

from .assignment import ClusterSpec, cluster_specs
from .broker_commands import BrokerCommands
from .layout import GatewayBot, fetch_gateway_bot, resolve_layout
from .leader import LeaderLock, Term
from .reconcile import Reconciler
from .store import NotLeader, RedisDataError, Store

if TYPE_CHECKING:
    from letsfrag.metrics import MetricsServer

__all__ = ["ClusterBroker"]

log = logging.getLogger("letsfrag.broker")

CALLBACKS = frozenset({"connect", "disconnect", "ready", "error", "assign", "leader"})


class ClusterBroker:
    """One broker process (leader or standby); embed it with ``async with`` or :meth:`serve_forever`.

    ``move_timeout``: how long a move waits for the old host to confirm the stop (default ``3 × lease.ttl``);
    ``budget_interval``: how often the identify budget is refreshed from Discord (needs a token);
    ``command_wait``: how long a ``drain``/``rebalance`` command waits for completion before replying (a
    ``restart``/``rolling_restart`` waits as long as its payload's ``wait`` asks, at most ``max_command_wait``);
    ``handover_timeout``: how long a handover's successor has to become ready before it is rolled back (default
    the config's ``handover_timeout``).
    """

    def __init__(self, config: BrokerConfig, *, broker_id: str | None = None, clock: Clock | None = None,
                 handle_signals: bool = False, move_timeout: float | None = None,
                 budget_interval: float = 600.0, command_wait: float = 5.0, handover_timeout: float | None = None,
                 max_command_wait: float = 3600.0) -> None:
        self.config = config
        self.broker_id = broker_id or config.broker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.clock = clock or SystemClock()
        self.handle_signals = handle_signals
        self.move_timeout = move_timeout if move_timeout is not None else 3 * config.lease.ttl
        self.budget_interval = budget_interval
        self.command_wait = command_wait
        self.handover_timeout = handover_timeout if handover_timeout is not None else float(config.handover_timeout)
        self.max_command_wait = max_command_wait
        secret = config.secret.get_secret_value() if config.secret else None
        register_secrets_in(config)
        self.bus = Bus(config.redis, node_id=f"broker:{self.broker_id}", namespace=config.namespace, secret=secret,
                       window=config.signature_window, max_bytes=config.max_message_bytes)
        self.keys = self.bus.keys
        self.store = Store(self.bus.redis, self.keys, self.broker_id)
        self.lock = LeaderLock(self.bus.redis, self.keys, self.broker_id, config.leader_ttl)
        self.interval = min(config.heartbeat_interval, config.leader_ttl / 3)
        self._callbacks: dict[str, list[Callable[..., Any]]] = {name: [] for name in CALLBACKS}
        self._layout: LayoutRecord | None = None
        self._reconciler: Reconciler | None = None
        self._commands: BrokerCommands | None = None
        self._budget: GatewayBot | None = None
        self._leading = False
        self._since = 0.0
        self._redis_ok = True
        self._data_error: str | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._ticked = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._budget_task: asyncio.Task[None] | None = None
        self._started = False
        self._metrics: MetricsServer | None = None

    # public API ----------------------------------------------------------------------------------------

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` (sync or async) on ``connect``, ``disconnect``, ``ready``, ``error``, ``assign``
        or ``leader``; see the module docs of :mod:`letsfrag.broker` for their arguments."""
        if event not in CALLBACKS:
            raise ValueError(f"unknown broker event {event!r}; expected one of {', '.join(sorted(CALLBACKS))}")
        self._callbacks[event].append(callback)

    @property
    def is_leader(self) -> bool:
        """True while this broker holds the leader lock."""
        return self._leading

    @property
    def layout(self) -> list[ClusterSpec]:
        """The clusters of the live generation (empty before :meth:`start`)."""
        layout = self._live_layout()
        return cluster_specs(layout) if layout else []

    def _live_layout(self) -> LayoutRecord | None:
        """The live generation's layout: the reconciler's (a reshard replaces it), else the config's."""
        return self._reconciler.layout if self._reconciler is not None else self._layout

    @property
    def assignment(self) -> dict[int, str | None]:
        """Cluster id -> host id (``None``: unassigned), as this broker last saw or wrote it."""
        if self._reconciler is None:
            return {}
        grants = self._reconciler.assignment
        return {c: (grants[c].host if c in grants else None) for c in self._reconciler.layout.cluster_ids}

    @property
    def recommended_shards(self) -> int | None:
        """The shard count ``/gateway/bot`` recommended at the last refresh (``None``: never fetched, no token)."""
        return self._budget.shards if self._budget is not None else None

    @property
    def buckets(self) -> int:
        """IDENTIFY buckets of the layout (0 before :meth:`start`)."""
        return self._layout.max_concurrency if self._layout else 0

    @property
    def synced(self) -> bool:
        """True once started and while Redis answered the last tick (leader or standby)."""
        return self._loop_task is not None and not self._loop_task.done() and self._redis_ok

    def dead_loops(self) -> list[str]:
        """Names of the broker's loops (decision tick, budget refresh) that ended; empty while all run."""
        return [task.get_name() for task in (self._loop_task, self._budget_task) if task is not None and task.done()]

    @property
    def reconciler(self) -> Reconciler | None:
        """The decision state (for tools and tests)."""
        return self._reconciler

    async def start(self) -> None:
        """Resolve the layout (may ask Discord), connect to Redis and start the loop.

        Raises :class:`DiscordSetupError` when an ``auto`` value cannot be resolved.
        """
        if self._started:
            return
        set_log_context(broker=self.broker_id)
        self._layout, self._budget = await resolve_layout(self.config)
        self._reconciler = Reconciler(self.config, self._layout, self.store, event=self._event, fire=self._fire,
                                      notify=self._notify, move_timeout=self.move_timeout, clock=self.clock,
                                      handover_timeout=self.handover_timeout)
        self._reconciler.recommended = lambda: self.recommended_shards
        self._commands = BrokerCommands(
            self._reconciler, event=self._event, wake=self.wake, wait_tick=self.wait_tick,
            recommended=lambda: self.recommended_shards, interval=self.interval, command_wait=self.command_wait,
            max_command_wait=self.max_command_wait, handover_timeout=self.handover_timeout)
        self._redis_lost_at: float | None = None
        self.bus.on_state(self._on_bus_state)
        await self.bus.subscribe(self.keys.broker_inbox, self._on_inbox)
        try:
            await self.bus.start()
        except BusError as exc:
            log.warning("%s; the broker keeps retrying", exc)
        self._started = True
        if self.config.secret is None:
            await self._event(Severity.WARNING, "no_secret",
                              "no secret is configured: bus messages are unsigned and anyone with access to "
                              "Redis can control this deployment (set `secret`)")
        log.info("broker %s: %d shards in %d clusters of %d, max_concurrency %d", self.broker_id,
                 self._layout.shard_count, self._layout.cluster_count, self._layout.shards_per_cluster,
                 self._layout.max_concurrency)
        self._loop_task = asyncio.create_task(
            supervised("broker tick loop", self._run, logger=log, on_crash=self._on_crash),
            name=f"broker-{self.broker_id}")
        if self.config.token is not None:
            self._budget_task = asyncio.create_task(
                supervised("broker budget loop", self._budget_loop, logger=log, on_crash=self._on_crash),
                name="broker-budget")
        if self.config.metrics.listen is not None:  # prometheus_client and aiohttp's server only when configured
            from letsfrag.metrics import start_metrics

            from .broker_metrics import BrokerMetrics

            self._metrics = await start_metrics(self.config.metrics.listen, lambda: BrokerMetrics(self))

    async def close(self) -> None:
        """Stop the loop, release the leader lock (a standby takes over at once) and disconnect."""
        self._stop.set()
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None
        await cancel_and_wait(self._loop_task, self._budget_task, *self._tasks)
        self._loop_task = self._budget_task = None
        if self._started:
            with contextlib.suppress(RedisError, OSError):
                if self._leading:
                    await self.lock.release()
                await self.bus.redis.delete(self.keys.broker_role(self.broker_id))
            if self._leading:
                self._leading = False
                self._fire("leader", False)
        await self.bus.close()
        self._started = False

    async def __aenter__(self) -> ClusterBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stop(self) -> None:
        """Ask :meth:`serve_forever` to return."""
        self._stop.set()

    async def serve_forever(self) -> None:
        """Run until :meth:`stop` (or SIGINT/SIGTERM with ``handle_signals``), then close."""
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.close()

    def wake(self) -> None:
        """Run the next tick now."""
        self._wake.set()

    async def wait_tick(self, timeout: float) -> None:
        """Wait until the next tick finished (or ``timeout`` passed)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._ticked:
                await self._ticked.wait()

    # loop ------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self._tick()
            except NotLeader as exc:
                await self._set_leading(False, str(exc))
            except (RedisDataError, ResponseError) as exc:
                await self._on_data_error(exc)
            except (BusError, RedisError, OSError) as exc:
                if self._redis_ok:
                    log.warning("broker tick: Redis unavailable (%s); retrying every %.1fs", exc, self.interval)
                self._redis_ok = False
                if self._reconciler is not None:
                    self._reconciler.membership.reset()
            except Exception as exc:
                log.exception("broker tick failed")
                await self._on_crash("broker tick", exc)
            else:
                if not self._redis_ok:
                    log.info("broker: Redis reachable again")
                if self._data_error is not None:
                    log.info("broker: the Redis data error is gone (%s)", self._data_error)
                self._redis_ok = True
                self._data_error = None
            async with self._ticked:
                self._ticked.notify_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):  # not wait_for: it can swallow a cancel on 3.11
                    await self._wake.wait()

    async def _tick(self) -> None:
        assert self._reconciler is not None and self._layout is not None
        rec = self._reconciler
        now = self.clock.monotonic()
        term = await self.lock.hold(self._leading)
        role = "standby" if term is Term.NONE else "leader"
        await self.bus.redis.set(self.keys.broker_role(self.broker_id), role, px=self.lock.ttl_ms)
        if term is Term.NONE:
            if self._leading:
                await self._set_leading(False, "another broker holds the leader lock")
            return
        buckets = self._layout.max_concurrency
        if term is Term.NEW or not self._leading:
            if self._leading:
                await self._event(Severity.WARNING, "leader_retaken",
                                  "the leader lock had expired (a stall or a Redis restart); re-reading the world")
            else:
                await self._set_leading(True, "")
            await rec.begin_term(now, await self.store.snapshot(buckets))
            await self._write_budget()
        changed = await rec.step(now, await self.store.snapshot(buckets))
        await self._write_info(rec)
        if changed:
            with contextlib.suppress(BusError):
                await self.bus.publish(self.keys.doorbell, MessageType.DOORBELL, {"source": "broker"})

    async def _on_data_error(self, exc: Exception) -> None:
        """Redis answered, but refused a command because of what a key holds: not an outage (membership is
        kept, so hosts are still judged); reported once per distinct error."""
        text = str(exc)
        self._redis_ok = True
        if text == self._data_error:
            return
        self._data_error = text
        key = exc.key if isinstance(exc, RedisDataError) else "unknown"
        await self._event(Severity.ERROR, "redis_data_error",
                          f"broker {self.broker_id}: data error in Redis, not an outage: {text}", key=key)

    async def _on_crash(self, name: str, exc: BaseException) -> None:
        await self._event(Severity.ERROR, "loop_crashed", f"broker {self.broker_id}: {name} crashed "
                          f"({type(exc).__name__}: {exc}); it continues", loop=name)

    async def _set_leading(self, leading: bool, reason: str) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        # operator commands are addressed to "broker": only the leader answers to that name
        (self.bus.aliases.add if leading else self.bus.aliases.discard)("broker")
        self._fire("leader", leading)  # at once, so is_leader and the callback never disagree
        if leading:
            self._since = self.clock.time()
            await self._event(Severity.INFO, "leader_acquired", f"broker {self.broker_id} is the leader")
        else:
            if self._reconciler is not None:
                self._reconciler.moves.clear()
            await self._event(Severity.WARNING, "leader_lost",
                              f"broker {self.broker_id} is no longer the leader ({reason}); now a standby")

    async def _write_info(self, rec: Reconciler) -> None:
        prefix = self.keys.broker_role("")
        standbys = sorted({
            key[len(prefix):] async for key in self.bus.redis.scan_iter(match=f"{prefix}*", count=200)
        } - {self.broker_id})
        await self.store.hset(self.keys.broker, {
            "id": self.broker_id, "since": f"{self._since:.3f}", "heartbeat_at": f"{self.clock.time():.3f}",
            "state": rec.state, "identify_depth": rec.identify_depth, "unassigned": rec.unassigned,
            "standbys": json.dumps(standbys),
        })

    def _on_bus_state(self, up: bool) -> Any:
        if not up:
            self._redis_lost_at = self.clock.monotonic()
            if self._reconciler is not None:
                self._reconciler.membership.reset()
            return None
        if self._redis_lost_at is None:
            return None
        outage, self._redis_lost_at = self.clock.monotonic() - self._redis_lost_at, None
        return self._event(Severity.WARNING, "redis_reconnected",
                           f"broker {self.broker_id} reconnected to Redis after {outage:.1f}s; "
                           "leases are judged afresh, with grace")

    # messages -------------------------------------------------------------------------------------------

    async def _on_inbox(self, env: Envelope) -> Any:
        rec = self._reconciler
        if rec is None:
            return NO_REPLY
        payload = env.payload
        host = payload.get("host") if isinstance(payload.get("host"), str) else None
        if host is None and env.sender.startswith("host:"):
            host = env.sender[len("host:"):]
        if env.type is MessageType.HOST_LEAVE and host:
            incarnation = payload.get("incarnation")
            rec.leave_signals[host] = incarnation if isinstance(incarnation, str) else None
        elif env.type is MessageType.CLUSTER_STOPPED and host:
            cluster, raw_epoch = payload.get("cluster"), payload.get("epoch")
            epoch = raw_epoch if isinstance(raw_epoch, int) and not isinstance(raw_epoch, bool) else None
            if isinstance(cluster, int) and not isinstance(cluster, bool):
                rec.handovers.confirm_stopped(cluster, host, epoch)
            if isinstance(cluster, int) and not isinstance(cluster, bool) and not rec.moves.confirm_stopped(
                    cluster, host, epoch):
                log.warning("ignored cluster_stopped for cluster %d from %r: epoch %r is not the epoch of its "
                            "pending move", cluster, host, epoch)
        elif env.type is MessageType.COMMAND:
            if not self._leading or self._commands is None:
                return NO_REPLY
            return await self._commands.handle(payload)
        self._wake.set()
        return NO_REPLY

    async def _notify(self, hosts: set[str]) -> None:
        for host in sorted(hosts):
            try:
                await self.bus.publish(self.keys.host_inbox(host), MessageType.ASSIGN, {"host": host})
            except BusError as exc:
                log.debug("could not ring %r: %s", host, exc)

    # events and callbacks ---------------------------------------------------------------------------------

    async def _event(self, severity: Severity, kind: str, message: str, **context: Any) -> None:
        await emit(self.bus.redis, self.keys, severity, kind, message, source=f"broker:{self.broker_id}", **context)
        if severity is Severity.ERROR:
            self._fire("error", LetsfragError(message))

    def _fire(self, name: str, *args: Any) -> None:
        for callback in self._callbacks[name]:
            try:
                result = callback(*args)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("broker %r callback failed", name)

    # identify budget --------------------------------------------------------------------------------------

    async def _budget_loop(self) -> None:
        token = self.config.token
        assert token is not None
        first = True
        while not self._stop.is_set():
            if not first or self._budget is None:
                try:
                    self._budget = await fetch_gateway_bot(self.config.discord.api_url, token.get_secret_value())
                except DiscordSetupError as exc:
                    await self._event(Severity.WARNING, "identify_budget", f"could not refresh the budget: {exc}")
            first = False
            with contextlib.suppress(NotLeader, RedisError, OSError):
                await self._write_budget()
            await asyncio.sleep(self.budget_interval)

    async def _write_budget(self) -> None:
        info = self._budget
        if info is None or not self._leading:
            return
        now = self.clock.time()
        await self.store.hset(self.keys.identify("budget"), {
            "total": info.total, "remaining": info.remaining, "reset_at": f"{now + info.reset_after:.3f}",
            "max_concurrency": info.max_concurrency, "updated_at": f"{now:.3f}",
        })

