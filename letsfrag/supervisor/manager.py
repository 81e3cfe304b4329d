"""``ClusterManager``: the host supervisor. It runs the clusters the broker granted to this host.

Tasks report, one loop decides: process watchers, timers, the lease loop, the sampler tick and bus commands
put events on one queue; :meth:`ClusterManager._handle` is the only place where a cluster's state changes.
Redis I/O never happens inside that loop (the :class:`Publisher` and :class:`HostAgent` do it), so a slow or
dead Redis cannot delay a restart or a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from letsfrag.bus import NO_REPLY, Bus
from letsfrag.clock import Clock, SystemClock
from letsfrag.config import HostConfig
from letsfrag.contract.envelope import Envelope, MessageType
from letsfrag.contract.handover import SUCCESSORS_FIELD, HandoverRecord
from letsfrag.contract.records import LayoutRecord
from letsfrag.contract.reshard import SHARDING_REQUIRED_FIELD
from letsfrag.errors import BusError, RecordError
from letsfrag.events import Severity
from letsfrag.logs import set_log_context
from letsfrag.loops import cancel_and_wait, supervised
from letsfrag.metrics import MetricsServer, start_metrics
from letsfrag.supervisor import policy
from letsfrag.supervisor.commands import CommandHandler
from letsfrag.supervisor.grants import Grants
from letsfrag.supervisor.handoff import Handovers
from letsfrag.supervisor.host import HostAgent
from letsfrag.supervisor.launch import build_argv, build_env, cluster_environment, register_config_secrets
from letsfrag.supervisor.logfile import ClusterLog, log_path
from letsfrag.supervisor.metrics import HostMetrics
from letsfrag.supervisor.prefork import Launcher, launcher_mode
from letsfrag.supervisor.process import ClusterProcess
from letsfrag.supervisor.publish import Publisher
from letsfrag.supervisor.reactions import Reactions
from letsfrag.supervisor.state import (
    Call,
    ClusterRecord,
    ClusterState,
    ClusterView,
    HostState,
    IpcMessage,
    ProcessExited,
    RestartDue,
    StopIntent,
)
from letsfrag.supervisor.stopping import Stopper
from letsfrag.supervisor.watch import TreeSampler

__all__ = ["EVENT_NAMES", "ClusterManager"]

log = logging.getLogger(__name__)

EVENT_NAMES = frozenset({"cluster_create", "cluster_ready", "cluster_exit", "cluster_failed", "ready"})


class ClusterManager:
    """Runs this host's clusters: register, take grants, spawn, watch, restart, stop, report (docs/redis.md)."""

    def __init__(
        self,
        config: HostConfig,
        *,
        clock: Clock | None = None,
        handle_signals: bool = False,
        host_id: str | None = None,
        capacity: int | None = None,
        rng: random.Random | None = None,
        launcher: Launcher | None = None,
    ) -> None:
        """``launcher``: the pre-fork launcher to use with ``bot.launcher: fork`` (default: a new one)."""
        self.config = config
        self.host_id = host_id or config.host.id
        self.capacity = config.host.capacity if capacity is None else capacity
        self.clock: Clock = clock or SystemClock()
        self.handle_signals = handle_signals
        self._rng = rng or random.Random()
        #: what the parts share (records, grants, layout, logs, closing): one object with public fields
        self.state = HostState()
        #: process tokens: unique per spawned process (main or successor), so late events find their process
        self._tokens = itertools.count(1)
        self._callbacks: dict[str, list[Callable[..., Any]]] = {name: [] for name in EVENT_NAMES}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        #: tasks confirming that ended clusters left no process behind (awaited on close)
        self._confirming: set[asyncio.Future[None]] = set()
        self._started = False
        self._closed = asyncio.Event()
        self._all_ready = False
        self._bus: Bus | None = None
        self._redis_lost_at: float | None = None
        self.agent: HostAgent | None = None
        self._metrics: MetricsServer | None = None
        self.publisher: Publisher | None = None
        # the parts: each is given the shared state and this manager as its shell (supervisor/shell.py)
        #: successors and retiring processes of planned handovers (one home, apart from the records)
        self.handovers = Handovers(self.state, self)
        self.commands = CommandHandler(self.state, self)
        self.reactions = Reactions(self.state, self, self.handovers, TreeSampler())
        self.grants = Grants(self.state, self, self.handovers, self._rng)
        self.stopper = Stopper(self.state, self, self.handovers)
        self.argv = build_argv(config)
        #: the pre-fork launcher (``bot.launcher: fork``), None when every cluster is exec'd
        self.launcher: Launcher | None = (launcher or Launcher()) if launcher_mode(config) == "fork" else None

    # ------------------------------------------------------------------------------------------ public API

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback(view)`` on ``cluster_*`` events and ``callback()`` on ``ready`` (all clusters READY)."""
        if event not in EVENT_NAMES:
            raise ValueError(f"unknown event {event!r}; expected one of {', '.join(sorted(EVENT_NAMES))}")
        self._callbacks[event].append(callback)

    @property
    def clusters(self) -> dict[int, ClusterView]:
        """A snapshot of every cluster this host ran or runs."""
        return {cid: rec.view() for cid, rec in sorted(self.state.records.items())}

    @property
    def bus(self) -> Bus:
        """The supervisor's bus connection (``bus.redis``, ``bus.keys``); available once :meth:`start` ran."""
        if self._bus is None:
            raise RuntimeError("the ClusterManager is not started yet: call `await manager.start()` first")
        return self._bus

    @property
    def incarnation(self) -> str:
        return self.agent.incarnation if self.agent else ""

    @property
    def assigned(self) -> dict[int, int]:
        """``{cluster id: epoch}`` granted to this host, as last read."""
        return dict(self.state.desired)

    def running(self) -> dict[int, int]:
        """``{cluster id: epoch}`` of clusters this host holds now (the record's ``running``)."""
        return self.state.running()

    @property
    def host_cpu(self) -> float:
        """CPU percent of this supervisor and its clusters (last sample)."""
        return self.state.host_cpu

    @property
    def host_rss(self) -> int:
        """RSS in bytes of this supervisor and its clusters (last sample)."""
        return self.state.host_rss

    def dead_loops(self) -> list[str]:
        """Names of the core loops (decision, lease, publish, tick) that ended; empty while all run."""
        return [task.get_name() for task in self._tasks if task.done()]

    async def start(self) -> None:
        """Connect, wait for the broker's layout, register and start taking grants."""
        if self._started:
            return
        self._started = True
        register_config_secrets(self.config)
        set_log_context(host=self.host_id)
        if self.launcher is not None:
            await self.launcher.start()  # it imports while this connects, waits for the layout and registers
        cfg = self.config
        if cfg.secret is None:
            log.warning("host %s: no secret is configured: bus messages are unsigned and anyone with access to "
                        "Redis can control this host (set `secret`)", self.host_id)
        bus = self._bus = Bus(cfg.redis, node_id=f"host:{self.host_id}", namespace=cfg.namespace,
                              secret=cfg.secret.get_secret_value() if cfg.secret else None,
                              window=cfg.signature_window, max_bytes=cfg.max_message_bytes)
        self.publisher = Publisher(bus, self.host_id, self._view_of, self.clock.time)
        self.agent = HostAgent(bus, self.host_id, self.capacity, self.clock, on_grants=self._on_grants,
                               on_fence=self._on_fence, record_fields=self._record_fields,
                               on_bad_value=self._on_bad_value)
        bus.on_state(self._on_bus_state)
        await bus.start(wait=None)
        await bus.subscribe(bus.keys.host_inbox(self.host_id), self._on_inbox)
        self._tasks.append(self._core_task("supervisor-loop", self._loop))
        self._tasks.append(self._core_task("supervisor-publish", self.publisher.run))
        if self.handle_signals:
            self.stopper.install_signals()
        self.state.layout = await self.agent.wait_for_layout()
        while True:
            try:
                await self.agent.register()
                break
            except (RedisError, OSError, TimeoutError, BusError) as exc:  # Redis left between layout and register
                log.warning("host %s: registration failed (%s); retrying", self.host_id, exc)
                await asyncio.sleep(0.5)
        self._tasks += [
            # the lease loop checks the fencing deadline first thing, so it restarts fast
            self._core_task("supervisor-lease", self.agent.run, max_delay=0.5),
            self._core_task("supervisor-tick", self.reactions.ticker),
        ]
        self.agent.poke()
        self._metrics = await start_metrics(cfg.metrics.listen, lambda: HostMetrics(self))

    async def close(self, *, force: bool = False) -> None:
        """Stop every cluster (gracefully unless ``force``), leave the host set's lease and disconnect."""
        await self._close(force)
        if self.launcher is not None:
            await self.launcher.close()
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None

    async def _close(self, force: bool) -> None:
        """The leave (see :mod:`letsfrag.supervisor.stopping`): hand off, stop everything, then let go of the
        shell's resources (loops, tasks, the bus, the log files)."""
        if self.state.closing or self.stopper.handing_off:
            if force:
                self.stopper.force()
            await self._closed.wait()
            return
        try:
            if not force and self._tasks:
                await self.stopper.hand_off()
            self.state.closing = True
            await self._shutdown(force)
        finally:
            await cancel_and_wait(*self._tasks)
            self.state.closing = True
            for record in self.state.records.values():
                if record.process is not None:
                    record.process.cancel_tasks()
            for process in self.handovers.processes():
                process.cancel_tasks()
            for task in list(self._background):
                if task is not asyncio.current_task():  # this stop may run as one of them: never cancel itself
                    task.cancel()
            if self._bus is not None:
                await self._bus.close()
            for log_file in self.state.logs.values():
                log_file.close()
            if self.handle_signals:
                self.stopper.remove_signals()
            self._closed.set()

    async def _shutdown(self, force: bool) -> None:
        if self.agent is not None and self.agent.registered:
            await self.agent.set_state("leaving")
        if self._tasks:
            await self.stopper.stop_everything(force)
        pending = [task for task in self._confirming if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=3.0)
        for task in self._tasks:
            if task.get_name() in ("supervisor-lease", "supervisor-tick"):
                task.cancel()
        if self.publisher is not None:
            await self.publisher.drain(2.0)
        if self.agent is not None:
            await self.agent.leave()

    async def __aenter__(self) -> ClusterManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        """Start (if needed) and run until :meth:`close` finished (e.g. after SIGTERM with handle_signals).

        A close during the start (still waiting for the broker's layout) ends the wait too.
        """
        starting = asyncio.ensure_future(self.start())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            done, _ = await asyncio.wait({starting, closed}, return_when=asyncio.FIRST_COMPLETED)
            if starting in done:
                starting.result()
                await closed
        finally:
            await cancel_and_wait(starting, closed)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` is true, re-checking at every state change; False after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))
        return True

    def post(self, item: Any) -> None:
        """Put an item (a ``Call``, a loop event) on the decision loop's queue."""
        self._queue.put_nowait(item)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` inside the decision loop and return its result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Call(fn, future))
        return await future

    # ------------------------------------------------------------------------------------------ the loop

    def _core_task(self, name: str, run: Callable[[], Any], *, max_delay: float = 5.0) -> asyncio.Task[None]:
        """A core loop that is logged with its traceback and restarted when it raises (never silently dead)."""
        return asyncio.create_task(supervised(name, run, logger=log, on_crash=self._on_crash, max_delay=max_delay),
                                   name=name)

    def _on_crash(self, name: str, exc: BaseException) -> None:
        self.event(Severity.ERROR, "loop_crashed", f"host {self.host_id}: {name} crashed "
                    f"({type(exc).__name__}: {exc}); restarted", host=self.host_id, loop=name)

    def _on_bad_value(self, exc: RecordError) -> None:
        self.event(Severity.ERROR, "redis_value_invalid", f"host {self.host_id}: {exc}; ignored",
                    host=self.host_id, key=exc.key, field=exc.field)

    async def _loop(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("supervisor loop: handling %r failed", type(item).__name__)
                if isinstance(item, Call) and item.future and not item.future.done():
                    item.future.set_exception(RuntimeError("internal error; see the supervisor log"))

    async def _handle(self, item: Any) -> None:
        if isinstance(item, Call):
            try:
                result = item.fn()
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(exc)
                    return
                raise
            if item.future is not None and not item.future.done():
                item.future.set_result(result)
            return
        if isinstance(item, IpcMessage | ProcessExited) and self.handovers.owns(item.cluster_id, item.token):
            self.handovers.on_item(item)
            if isinstance(item, ProcessExited) and self.publisher is not None:
                self.publisher.host_fields({"running": self.running_json()})
            return
        record = self.state.records.get(item.cluster_id)
        if record is None or record.token != item.token:
            return  # a late event of a process that was replaced
        if isinstance(item, IpcMessage):
            self.reactions.on_ipc(record, item.message)
        elif isinstance(item, ProcessExited):
            await self.reactions.on_exit(record, item.returncode)
            if self.publisher is not None:
                self.publisher.host_fields({"running": self.running_json()})
        elif isinstance(item, RestartDue):
            record.restart_handle = None
            if record.state is ClusterState.BACKOFF and not self.state.closing:
                await self.spawn(record)

    # ------------------------------------------------------------------------------------------ state

    def set_state(self, record: ClusterRecord, state: ClusterState, reason: str) -> None:
        changed = record.state is not state
        record.state = state
        record.reason = reason
        if changed:
            log.info("cluster %d: %s (%s)", record.cluster_id, state, reason)
        if self.publisher is not None:
            self.publisher.status(record.cluster_id)
            if changed:
                self.publisher.host_fields({"running": self.running_json()})
        self.pulse()

    def pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        records, desired = self.state.records, self.state.desired
        ready = bool(desired) and all(
            (r := records.get(cid)) is not None and r.state is ClusterState.READY for cid in desired)
        if ready and not self._all_ready:
            self.fire("ready")
        self._all_ready = ready

    def fire(self, name: str, *args: Any) -> None:
        for callback in self._callbacks[name]:
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    self.background(result)
            except Exception:
                log.exception("%s callback failed", name)

    def background(self, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_bus_state(self, up: bool) -> None:
        if not up:
            self._redis_lost_at = self._redis_lost_at or self.clock.monotonic()
        elif self._redis_lost_at is not None:
            outage, self._redis_lost_at = self.clock.monotonic() - self._redis_lost_at, None
            self.event(Severity.WARNING, "redis_reconnected",
                        f"host {self.host_id} reconnected to Redis after {outage:.1f}s", host=self.host_id)

    def event(self, severity: Severity, kind: str, message: str, **context: Any) -> None:
        if self.publisher is not None:
            self.publisher.event(severity, kind, message, **context)

    def _view_of(self, cluster_id: int) -> ClusterView | None:
        record = self.state.records.get(cluster_id)
        return record.view() if record else None

    def running_json(self) -> str:
        return json.dumps({str(cid): epoch for cid, epoch in self.running().items()})

    def _record_fields(self) -> dict[str, str]:
        return {"cpu_percent": f"{self.host_cpu:.1f}", "rss": str(self.host_rss), "running": self.running_json(),
                "log_write_errors": str(sum(log_file.write_errors for log_file in self.state.logs.values())),
                SUCCESSORS_FIELD: self.handovers.field_value(), **self.sharding_fields()}

    def sharding_fields(self) -> dict[str, str]:
        """The host record's ``sharding_required``: granted clusters Discord closed with 4011 (contract.reshard)."""
        desired = self.state.desired
        failed = sorted(cid for cid, r in self.state.records.items()
                        if r.extra.get("sharding_required") and cid in desired and r.epoch == desired[cid])
        return {SHARDING_REQUIRED_FIELD: json.dumps(failed)}

    # ------------------------------------------------------------------------------------------ grants

    def _on_grants(self, layout: LayoutRecord, grants: dict[int, int], handovers: dict[int, HandoverRecord]) -> None:
        self._queue.put_nowait(Call(lambda: self.grants.apply(layout, grants, handovers)))

    def _on_fence(self, reason: str) -> None:
        self._queue.put_nowait(Call(lambda: self.grants.fence_all(reason)))

    async def reconcile(self) -> None:
        await self.grants.reconcile()

    def confirm_stopped(self, record: ClusterRecord) -> None:
        self.grants.confirm_stopped(record)

    def record_of(self, cluster_id: int) -> ClusterRecord:
        return self.grants.record(cluster_id)

    # ------------------------------------------------------------------------------------------ spawning

    def _log_for(self, cluster_id: int) -> ClusterLog:
        log_file = self.state.logs.get(cluster_id)
        if log_file is None:
            logs = self.config.logs
            # a relative logs.dir is relative to the supervisor's working directory (docs/config.md)
            log_file = ClusterLog(log_path(Path(logs.dir), cluster_id), logs.max_bytes, logs.backups)
            self.state.logs[cluster_id] = log_file
        return log_file

    def next_token(self) -> int:
        return next(self._tokens)

    def begin_run(self, record: ClusterRecord, *, epoch: int | None = None, token: int | None = None) -> None:
        """A new run of ``record`` (a spawn, or a promoted successor): a new token, the per-run fields cleared."""
        if epoch is not None:
            record.epoch = epoch
        record.token = self.next_token() if token is None else token
        record.spawns += 1
        if record.spawns > 1 and record.state is not ClusterState.PENDING:
            record.restarts += 1
        for name in ("fatal_reason", "stop_intent", "stop_cause", "stop_task", "ready_at", "last_heartbeat",
                     "last_heartbeat_mono", "exit_code", "exit_signal", "next_restart_at", "guilds", "latency"):
            setattr(record, name, None)
        record.hang_signalled = False
        record.extra.pop("sharding_required", None)
        record.memory.reset()

    async def launch(self, cluster_id: int, shard_ids: tuple[int, ...], epoch: int, token: int, *,
                      handover: bool = False, layout: LayoutRecord | None = None) -> ClusterProcess:
        """Start one process of ``cluster_id`` (a cluster, or with ``handover`` a successor) in ``layout``
        (default the live one; a reshard's cluster runs in its generation's); raises ``OSError``."""
        assert self.state.layout is not None and self.agent is not None
        layout = layout or self.state.layout
        environment = cluster_environment(
            self.config, cluster_id=cluster_id, shard_ids=shard_ids, shard_count=layout.shard_count,
            host_id=self.host_id, incarnation=self.agent.incarnation, epoch=epoch,
            heartbeat_interval=layout.heartbeat_interval, lease_ttl=layout.lease_ttl,
            max_concurrency=layout.max_concurrency, identify_window=layout.identify_window,
            broker_allows_eval=layout.allow_eval, handover=handover)
        process = ClusterProcess(
            cluster_id, token, argv=self.argv, cwd=self.config.bot.cwd,
            env_for_fd=lambda fd: build_env(self.config, environment, fd),
            log_file=self._log_for(cluster_id), sink=self._queue.put_nowait, launcher=self.launcher,
            module=self.config.bot.module)
        try:
            await process.start()
        except OSError as exc:
            self._log_for(cluster_id).note(f"cannot start {self.program()}: {exc}")
            raise
        return process

    def program(self) -> str:
        """What is started for a cluster, for messages: ``module <name>`` (forked) or the command."""
        return f"module {self.config.bot.module}" if self.launcher is not None else self.argv[0]

    async def spawn(self, record: ClusterRecord, epoch: int | None = None) -> None:
        self.begin_run(record, epoch=epoch)
        assert record.epoch is not None
        record.started_at = self.clock.time()
        record.started_mono = self.clock.monotonic()
        try:
            process = await self.launch(record.cluster_id, record.shard_ids, record.epoch, record.token)
        except OSError as exc:
            record.last_error = f"cannot start {self.program()}: {exc}"
            self.reactions.decide(record, policy.ExitInfo(code=127, signal=None), cause=f"cannot start: {exc}")
            return
        record.process = process  # recorded before anything is written about it (a log write may fail)
        record.started_mono = self.clock.monotonic()  # the hang timer runs from the process, not the wait for it
        process.log.note(f"started pid {process.pid} (cluster {record.cluster_id})")
        self.set_state(record, ClusterState.STARTING, f"started pid {process.pid} (epoch {record.epoch})")
        self.fire("cluster_create", record.view())

    def schedule_restart(self, record: ClusterRecord, delay: float) -> None:
        record.restart_handle = asyncio.get_running_loop().call_later(
            delay, self._queue.put_nowait, RestartDue(record.cluster_id, record.token))

    def confirm_gone_later(self, process: ClusterProcess) -> None:
        confirm = asyncio.ensure_future(_confirm_gone(process))
        self._confirming.add(confirm)
        confirm.add_done_callback(self._confirming.discard)

    def cancel_backoff(self, record: ClusterRecord) -> None:
        if record.restart_handle is not None:
            record.restart_handle.cancel()
            record.restart_handle = None
        record.next_restart_at = None

    # ------------------------------------------------------------------------------------------ stopping

    def begin_stop(self, record: ClusterRecord, intent: StopIntent, reason: str, *, cause: str | None = None,
                    ask: bool = True, timeout: float | None = None) -> None:
        self.stopper.begin_stop(record, intent, reason, cause=cause, ask=ask, timeout=timeout)

    # ------------------------------------------------------------------------------------------ bus inbox

    async def _on_inbox(self, envelope: Envelope) -> Any:
        if envelope.type is MessageType.ASSIGN:
            if self.agent is not None:
                self.agent.poke()
            return NO_REPLY
        if envelope.type is MessageType.COMMAND:
            return await self.commands.handle(envelope.payload)
        if envelope.type is MessageType.PING:
            return {"ok": True, "host": self.host_id, "incarnation": self.incarnation}
        return NO_REPLY


async def _confirm_gone(process: ClusterProcess) -> None:
    """Make sure nothing of an ended cluster is left (kill again what is still there)."""
    survivors = await process.confirm_gone(1.0)
    if survivors:
        process.kill_all()
        survivors = await process.confirm_gone(1.0)
    if survivors:
        log.error("cluster %d: processes %s survived SIGKILL", process.cluster_id, survivors)
