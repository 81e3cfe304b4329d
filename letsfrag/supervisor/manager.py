"""``ClusterManager``: the host supervisor. It runs the clusters the broker granted to this host.

The manager is the shell around a pure core. Tasks report, one loop decides: process watchers, timers, the
lease loop, the sampler tick and bus commands put events on one queue; :meth:`ClusterManager._handle` feeds
each to the cluster lifecycle (:class:`letsfrag.supervisor.lifecycle.Lifecycle`, no I/O), which changes the
records and returns effects, and the manager carries them out (:meth:`ClusterManager._run`). The processes,
their restart timers and stop tasks are the manager's, by cluster id, never the records'; the restart timers and
the tick run on the injected clock (``clock``: :meth:`~letsfrag.clock.Clock.call_later`,
:meth:`~letsfrag.clock.Clock.sleep`).
Redis I/O never happens inside that loop (the :class:`Publisher` and :class:`HostAgent` do it), so a slow or
dead Redis cannot delay a restart or a stop.

The graceful leave is here too (:meth:`ClusterManager.close`): first, when another host is up and a broker
listens, ask the broker to hand this host's clusters elsewhere (``host_leave`` with ``hand_off``) and wait until
nothing is granted or runs here, the broker says no host has room (``handoff_blocked``) or
``limits.leave_timeout`` is over (:func:`letsfrag.supervisor.successors.leave_verdict`); then mark the host
``leaving``, stop every cluster left through the loop, wait for them (killing what outlives the limit), cancel
the lease, publish the last changes and leave the host set. SIGTERM/SIGINT start that close; a second one ends
the wait and kills every cluster at once. ``close(force=True)`` skips the hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import random
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from letsfrag.bus import NO_REPLY, Bus
from letsfrag.clock import Clock, SystemClock, Timer
from letsfrag.config import HostConfig
from letsfrag.contract.envelope import Envelope, MessageType
from letsfrag.contract.handover import SUCCESSORS_FIELD, HandoverRecord
from letsfrag.contract.records import LayoutRecord
from letsfrag.contract.states import HostRecordState
from letsfrag.errors import BusError, RecordError
from letsfrag.events import Severity
from letsfrag.logs import set_log_context
from letsfrag.loops import cancel_and_wait, supervised
from letsfrag.supervisor import lifecycle as lc
from letsfrag.supervisor.handoff import SuccessorBook
from letsfrag.supervisor.host import HostAgent
from letsfrag.supervisor.launch import (
    build_argv,
    build_env,
    cluster_environment,
    register_config_secrets,
    run_identity,
)
from letsfrag.supervisor.logfile import ClusterLog, log_path
from letsfrag.supervisor.prefork import Launcher, launcher_mode
from letsfrag.supervisor.process import ClusterProcess, run_stop
from letsfrag.supervisor.publish import Publisher
from letsfrag.supervisor.state import (
    Call,
    ClusterRecord,
    ClusterState,
    ClusterView,
    HostState,
    IpcMessage,
    ProcessExited,
    RestartDue,
    StopDone,
)
from letsfrag.supervisor.successors import LeaveVerdict, leave_verdict
from letsfrag.supervisor.supervisor_commands import SupervisorCommands
from letsfrag.supervisor.watch import TreeSampler

if TYPE_CHECKING:
    from letsfrag.metrics import MetricsServer

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
        #: what the parts share (records, grants, layout, logs, closing): one object with public fields
        self.state = HostState()
        #: the pure core: every decision about a cluster (supervisor/lifecycle.py)
        self.lifecycle = lc.Lifecycle(config, self.host_id, self.state, rng or random.Random())
        #: this supervisor run's part of every process run identity (``LETSFRAG_RUN``: ``<prefix>.<token>``): a
        #: restarted supervisor counts tokens from 1 again, so its runs never look like an earlier supervisor's
        self.run_prefix = uuid.uuid4().hex[:12]
        #: the shell's resources, by cluster id: each cluster's process, its restart timer, its stop task
        self.processes: dict[int, ClusterProcess] = {}
        self._timers: dict[int, Timer] = {}
        self._stops: dict[int, asyncio.Task[None]] = {}
        self._sampler = TreeSampler()
        self._signals = 0
        #: True while the host waits for the broker to hand its clusters away (grants still apply)
        self.handing_off = False
        self._forced = asyncio.Event()
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
        self.handovers = SuccessorBook(self.state, self)
        self.commands = SupervisorCommands(self.state, self)
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
            self._install_signals()
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
            self._core_task("supervisor-tick", self._ticker),
        ]
        self.agent.poke()
        if cfg.metrics.listen is not None:  # prometheus_client and aiohttp's server only when configured
            from letsfrag.metrics import start_metrics
            from letsfrag.supervisor.supervisor_metrics import HostMetrics

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
        """The leave (see the module docstring): hand off, stop everything, then let go of the shell's resources
        (loops, tasks, the bus, the log files)."""
        if self.state.closing or self.handing_off:
            if force:
                self._force()
            await self._closed.wait()
            return
        try:
            if not force and self._tasks:
                await self._hand_off()
            self.state.closing = True
            await self._shutdown(force)
        finally:
            await cancel_and_wait(*self._tasks)
            self.state.closing = True
            for timer in self._timers.values():
                timer.cancel()
            for process in self.processes.values():
                process.cancel_tasks()
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
                self._remove_signals()
            self._closed.set()

    async def _shutdown(self, force: bool) -> None:
        if self.agent is not None and self.agent.registered:
            await self.agent.set_state(HostRecordState.LEAVING)
        if self._tasks:
            await self._stop_everything(force)
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
            await self._run(self.lifecycle.ipc(item.cluster_id, item.token, item.message, self._now()))
        elif isinstance(item, ProcessExited):
            await self._exited(record, item.returncode)
            if self.publisher is not None:
                self.publisher.host_fields({"running": self.running_json()})
        elif isinstance(item, RestartDue):
            self._timers.pop(item.cluster_id, None)
            await self._run(self.lifecycle.restart_due(item.cluster_id, item.token, self._now()))
        elif isinstance(item, StopDone):
            await self._run(self.lifecycle.stop_done(item.cluster_id, item.token))

    def _now(self) -> lc.Instant:
        return lc.Instant(self.clock.monotonic(), self.clock.time())

    async def _exited(self, record: ClusterRecord, returncode: int | None) -> None:
        """The shell's part of an exit (the process's leftovers), then the lifecycle's."""
        cid = record.cluster_id
        process = self.processes.pop(cid)
        leftovers = process.finish()
        if leftovers:
            self.event(Severity.WARNING, "cluster_leftovers",
                       f"cluster {cid}: killed {len(leftovers)} leftover process(es) {leftovers}", cluster=cid)
        self.confirm_gone_later(process)
        await self._run(self.lifecycle.exited(cid, record.token, returncode, process.log.tail(), self._now()))

    # ------------------------------------------------------------------------------------------ effects

    async def _run(self, effects: list[lc.Effect]) -> None:
        """Carry out the lifecycle's effects, in order (a spawn's outcome is fed back, and its effects run)."""
        for effect in effects:
            await self._execute(effect)

    async def _execute(self, effect: lc.Effect) -> None:
        publisher = self.publisher
        if isinstance(effect, lc.StateChanged):
            self._state_changed(effect)
        elif isinstance(effect, lc.Spawn):
            await self._spawn(effect)
        elif isinstance(effect, lc.Stop):
            process = self.processes.get(effect.cluster_id)
            if process is not None:
                self._start_stop(process, effect)
        elif isinstance(effect, lc.HurryStop):
            process = self.processes.get(effect.cluster_id)
            if process is not None:
                self.background(process.stop(ask=False, reason=effect.reason, stop_timeout=effect.timeout))
        elif isinstance(effect, lc.Signal):
            process = self.processes.get(effect.cluster_id)
            if process is not None:
                process.signal(effect.signal)
        elif isinstance(effect, lc.Send):
            process = self.processes.get(effect.cluster_id)
            if process is not None:
                self.background(process.send(effect.op, **effect.fields))
        elif isinstance(effect, lc.StartTimer):
            self._cancel_timer(effect.cluster_id)
            self._timers[effect.cluster_id] = self.clock.call_later(
                effect.delay, functools.partial(self._queue.put_nowait, RestartDue(effect.cluster_id, effect.token)))
        elif isinstance(effect, lc.CancelTimer):
            self._cancel_timer(effect.cluster_id)
        elif isinstance(effect, lc.Note):
            self._log_for(effect.cluster_id).note(effect.text)
        elif isinstance(effect, lc.Emit):
            self.event(effect.severity, effect.kind, effect.message, **effect.context)
        elif isinstance(effect, lc.Fire):
            if effect.view is None:
                self.fire(effect.name)
            else:
                self.fire(effect.name, effect.view)
        elif isinstance(effect, lc.LogLine):
            log.log(effect.level, "%s", effect.text)
        elif isinstance(effect, lc.Sample):
            await self._run(self._sample())
        elif isinstance(effect, lc.ClusterStopped):
            self._confirm_stopped(effect.cluster_id, effect.epoch)
        elif publisher is None:
            return
        elif isinstance(effect, lc.PublishStatus):
            publisher.status(effect.cluster_id)
        elif isinstance(effect, lc.PublishRestart):
            publisher.restart(effect.cluster_id, effect.entry)
        elif isinstance(effect, lc.PublishMetric):
            publisher.metric(effect.cluster_id, effect.entry)
        elif isinstance(effect, lc.PublishError):
            publisher.error(effect.cluster_id, effect.text)
        elif isinstance(effect, lc.PublishHostFields):
            publisher.host_fields(effect.fields)
        elif isinstance(effect, lc.PublishMessage):
            payload = effect.payload
            if effect.type is MessageType.HOST_HELLO:
                payload = {**payload, "incarnation": self.incarnation}
            publisher.message(effect.type, payload)

    def _start_stop(self, process: ClusterProcess, stop: lc.Stop) -> None:
        task = asyncio.create_task(run_stop(process, ask=stop.ask, reason=stop.reason, stop_timeout=stop.timeout))
        cid, token = stop.cluster_id, process.token
        self._stops[cid] = task

        def done(_: asyncio.Task[None]) -> None:
            if self._stops.get(cid) is task:
                del self._stops[cid]
            self.post(StopDone(cid, token))

        task.add_done_callback(done)

    def _cancel_timer(self, cluster_id: int) -> None:
        timer = self._timers.pop(cluster_id, None)
        if timer is not None:
            timer.cancel()

    def _confirm_stopped(self, cluster_id: int, epoch: int | None) -> None:
        """A revoke is complete: update ``running`` in the host record, then tell the broker."""
        assert self.publisher is not None
        self.publisher.host_fields({"running": self.running_json()})
        self.publisher.message(MessageType.CLUSTER_STOPPED, {"host": self.host_id, "cluster": cluster_id,
                                                             "epoch": epoch})

    # ------------------------------------------------------------------------------------------ state

    def _state_changed(self, effect: lc.StateChanged) -> None:
        if effect.changed:
            log.info("cluster %d: %s (%s)", effect.cluster_id, effect.state, effect.reason)
        if self.publisher is not None:
            self.publisher.status(effect.cluster_id)
            if effect.changed:
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
        return self.lifecycle.running_json()

    def _record_fields(self) -> dict[str, str]:
        return {"cpu_percent": f"{self.host_cpu:.1f}", "rss": str(self.host_rss), "running": self.running_json(),
                "log_write_errors": str(sum(log_file.write_errors for log_file in self.state.logs.values())),
                SUCCESSORS_FIELD: self.handovers.field_value(), **self.sharding_fields()}

    def sharding_fields(self) -> dict[str, str]:
        """The host record's ``sharding_required``: granted clusters Discord closed with 4011 (contract.reshard)."""
        return self.lifecycle.sharding_fields()

    # ------------------------------------------------------------------------------------------ grants

    def _on_grants(self, layout: LayoutRecord, grants: dict[int, int], handovers: dict[int, HandoverRecord]) -> None:
        self._queue.put_nowait(Call(lambda: self._apply_grants(layout, grants, handovers)))

    def _on_fence(self, reason: str) -> None:
        self._queue.put_nowait(Call(lambda: self._fence_all(reason)))

    async def _apply_grants(self, layout: LayoutRecord, grants: dict[int, int],
                            handovers: dict[int, HandoverRecord]) -> None:
        """Take the grants read from Redis and the handover records, carry out the handovers (spawn, promote or
        roll back successors), then reconcile."""
        if self.state.closing:
            return
        await self._run(self.lifecycle.take_layout(layout, self.bus.keys.layout))
        await self._run(self.lifecycle.take_grants(grants))
        # before the reconcile: a grant naming a successor's epoch promotes it (nothing new is spawned for it)
        await self.handovers.apply(handovers, self.state.desired)
        await self.reconcile()
        self.pulse()

    async def _fence_all(self, reason: str) -> None:
        """This host may have lost its lease: stop everything now, within the rest of the lease."""
        effects = self.lifecycle.fence(reason)
        self.handovers.stop_all(f"fenced: {reason}", timeout=self.lifecycle.fence_timeout())
        await self._run(effects)

    async def reconcile(self) -> None:
        await self._run(self.lifecycle.reconcile(self._now()))

    def record_of(self, cluster_id: int) -> ClusterRecord:
        return self.lifecycle.record(cluster_id)

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
        return self.lifecycle.next_token()

    async def promote(self, cluster_id: int, process: ClusterProcess, successor: lc.Promotion) -> None:
        """``process`` (a promoted successor) is now the cluster's process."""
        self.processes[cluster_id] = process
        await self._run(self.lifecycle.promote(cluster_id, successor, self._now()))

    async def launch(self, cluster_id: int, shard_ids: tuple[int, ...], epoch: int, token: int, *,
                     handover: bool = False, layout: LayoutRecord | None = None,
                     dead_runs: tuple[int, ...] = ()) -> ClusterProcess:
        """Start one process of ``cluster_id`` (a cluster, or with ``handover`` a successor) in ``layout``
        (default the live one; a reshard's cluster runs in its generation's); ``dead_runs``: the tokens of earlier
        runs of this cluster and epoch whose process was reaped. Raises ``OSError``."""
        assert self.state.layout is not None and self.agent is not None
        layout = layout or self.state.layout
        environment = cluster_environment(
            self.config, cluster_id=cluster_id, shard_ids=shard_ids, shard_count=layout.shard_count,
            host_id=self.host_id, incarnation=self.agent.incarnation, epoch=epoch,
            heartbeat_interval=layout.heartbeat_interval, lease_ttl=layout.lease_ttl,
            max_concurrency=layout.max_concurrency, identify_window=layout.identify_window,
            broker_allows_eval=layout.allow_eval, handover=handover, run=run_identity(self.run_prefix, token),
            dead_runs=tuple(run_identity(self.run_prefix, dead) for dead in dead_runs))
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

    async def _spawn(self, spawn: lc.Spawn) -> None:
        try:
            process = await self.launch(spawn.cluster_id, spawn.shard_ids, spawn.epoch, spawn.token,
                                        dead_runs=spawn.dead_runs)
        except OSError as exc:
            await self._run(self.lifecycle.spawn_failed(spawn.cluster_id, spawn.token, str(exc), self.program(),
                                                        self._now()))
            return
        self.processes[spawn.cluster_id] = process
        await self._run(self.lifecycle.spawned(spawn.cluster_id, spawn.token, process.pid, self._now()))

    def confirm_gone_later(self, process: ClusterProcess) -> None:
        confirm = asyncio.ensure_future(_confirm_gone(process))
        self._confirming.add(confirm)
        confirm.add_done_callback(self._confirming.discard)

    # ------------------------------------------------------------------------------------------ commands

    async def restart_cluster(self, cluster_id: int) -> tuple[bool, str, int]:
        """Inside the loop: begin restarting one cluster (an operator's ``restart``); ``(ok, message, spawns
        before)``."""
        ok, message, before, effects = self.lifecycle.request_restart(cluster_id)
        await self._run(effects)
        if ok:
            await self._run(self.lifecycle.start_if_idle(cluster_id, self._now()))
        return ok, message, before

    # ------------------------------------------------------------------------------------------ ticks

    async def _ticker(self) -> None:
        """The tick loop (a core task): every tick, check hangs, logs and (when due) sample, inside the loop."""
        interval = lc.tick_interval(self.config.sample_interval, self.config.limits.hang_timeout)
        while True:
            await self.clock.sleep(interval)
            self.post(Call(self._on_tick))

    async def _on_tick(self) -> None:
        logs = {cid: lc.LogHealth(f.write_errors, f.failing, f.last_write_error, str(f.path))
                for cid, f in self.state.logs.items()}
        await self._run(self.lifecycle.tick(self._now(), logs))

    def _sample(self) -> list[lc.Effect]:
        roots = {cid: p.pid for cid, p in self.processes.items() if p.running}
        samples = self._sampler.sample(roots)
        own_cpu, own_rss = self._sampler.sample_self()
        for cid, sample in samples.items():
            process = self.processes.get(cid)
            if process is not None:
                process.remember(sample.pids)
        effects = self.lifecycle.sampled(
            {cid: lc.TreeSample(s.cpu_percent, s.rss, s.threads, s.pss, s.uss) for cid, s in samples.items()},
            own_cpu, own_rss, self._now())
        if self.launcher is not None:  # a subreaper inherits the orphans of its clusters' trees
            keep = {p.pid for p in self.processes.values()}
            self.launcher.reap_strays(keep | {p.pid for p in self.handovers.processes()})
        return effects

    # ------------------------------------------------------------------------------------------ stopping

    def _kill_everything(self) -> None:
        """SIGKILL every cluster's process tree now."""
        for process in self.processes.values():
            process.kill_all()
        self.handovers.kill_all()

    def _alive(self) -> bool:
        """Does any process (a cluster's, a successor or a retiring one) still run here?"""
        return bool(self.processes) or any(True for _ in self.handovers.processes())

    def _force(self) -> None:
        """A forced close while closing (a second signal, ``close(force=True)``): end the hand-off, kill all."""
        self._forced.set()
        self._kill_everything()

    async def _hand_off(self) -> None:
        """Ask the broker to hand this host's clusters to other hosts and wait (see the module docstring).

        Called by the close once the loops run (outside the decision loop)."""
        state, agent = self.state, self.agent
        timeout = self.config.limits.leave_timeout
        if agent is None or not agent.registered or timeout <= 0 or not self._alive():
            return
        clusters = state.alive_clusters()
        if not await agent.others_up():
            self._left_over(clusters, "no other host is up", Severity.INFO)
            return
        self.handing_off = True
        try:
            if (problem := await agent.ask_to_leave()) is not None:
                self._left_over(clusters, f"cannot ask the broker to hand them over: {problem}")
                return
            self.event(Severity.INFO, "host_handing_off", f"host {self.host_id} is leaving: handing clusters "
                       f"{clusters} to other hosts (up to {timeout:g}s)", host=self.host_id)
            started = self.clock.monotonic()
            others_up = True

            def verdict() -> LeaveVerdict:
                return leave_verdict(now=self.clock.monotonic(), started=started, timeout=timeout,
                                     granted=len(state.desired), running=int(self._alive()),
                                     blocked=agent.handoff_blocked, forced=self._forced.is_set(),
                                     others_up=others_up)

            # every renewal interval: is someone still there to take the clusters (all hosts may be leaving)?
            check = max(agent.heartbeat_interval, 0.5)
            while (result := verdict()) is LeaveVerdict.WAIT:
                await self.wait_for(lambda: verdict() is not LeaveVerdict.WAIT, check)
                if verdict() is LeaveVerdict.WAIT:
                    others_up = await agent.others_up()
        finally:
            self.handing_off = False
        left = state.alive_clusters()
        took = self.clock.monotonic() - started
        if result is LeaveVerdict.HANDED_OFF:
            self.event(Severity.INFO, "host_handed_off", f"host {self.host_id} handed every cluster to other hosts "
                       f"in {took:.1f}s", host=self.host_id)
        elif result is LeaveVerdict.BLOCKED:
            self._left_over(left, f"no other host has room ({agent.handoff_blocked})")
        elif result is LeaveVerdict.FORCED:
            self._left_over(left, "a second signal")
        elif result is LeaveVerdict.ALONE:
            self._left_over(left, "no other host is up any more")
        else:
            self._left_over(left, f"not handed over within limits.leave_timeout ({timeout:g}s)")

    def _left_over(self, clusters: list[int], why: str, severity: Severity = Severity.WARNING) -> None:
        """Say why clusters are stopped instead of handed over (their shards go offline)."""
        if not clusters:
            return
        self.event(severity, "host_leave_stopping", f"host {self.host_id}: {why}: stopping clusters "
                   f"{clusters} (their shards go offline)", host=self.host_id)

    async def _stop_everything(self, force: bool) -> None:
        """Forget the grants, stop every cluster and successor through the loop and wait for them (killing what
        outlives the limit). Called by the close once the loops run (outside the decision loop)."""

        async def stop_all() -> None:
            self.handovers.stop_all("supervisor shutting down")
            await self._run(self.lifecycle.shutdown())
            if force:
                self._kill_everything()

        await self.call(stop_all)
        limit = self.config.limits.stop_timeout * 1.5 + 5.0
        if not await self.wait_for(lambda: not self._alive(), limit):
            self._kill_everything()
            await self.wait_for(lambda: not self._alive(), 5.0)

    # ------------------------------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        """SIGTERM/SIGINT close the manager; a second one kills every cluster."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("received %s: stopping every cluster (again to force)", signal.Signals(sig).name)
            self.background(self.close())
        else:
            log.warning("received %s again: killing every cluster now", signal.Signals(sig).name)
            self._force()

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
