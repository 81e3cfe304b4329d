"""The cluster lifecycle, pure: what happens to this host's clusters, as effects for the shell to carry out.

The supervisor is a core and a shell. This module is the core: :class:`Lifecycle` holds no process, timer, task
or connection and does no I/O. Each input — grants and the layout, fencing, an IPC message, a process exit, a
restart that is due, a stop sequence that ended, a tick (with the log files' health), a sample of the process
trees, an operator's restart, the shutdown — comes in with the time (:class:`Instant`); it changes the plain
records of the shared :class:`HostState` and returns the effects (:data:`Effect`): spawn, stop, hurry a stop,
signal, send an IPC message, start or cancel a restart timer, write a note to a cluster's log, a state change,
publish, emit an operator event, fire a user callback, log a line, sample. The manager (the shell,
:class:`letsfrag.supervisor.manager.ClusterManager`) keeps the processes, timer handles and tasks by cluster id
and executes the effects in order; what an effect's execution learns (a spawn's pid or its ``OSError``) comes
back as another input (:meth:`Lifecycle.spawned`, :meth:`Lifecycle.spawn_failed`).

``tests/supervisor/test_lifecycle_table.py`` drives every transition with a fake clock and no process.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from letsfrag.config import HostConfig
from letsfrag.contract.envelope import MessageType
from letsfrag.contract.exitcodes import CloseCode, ExitCode
from letsfrag.contract.ipc_ops import IpcOp
from letsfrag.contract.records import LayoutRecord
from letsfrag.contract.reshard import SHARDING_REQUIRED_FIELD
from letsfrag.events import Severity
from letsfrag.supervisor import policy
from letsfrag.supervisor.state import (
    FINAL_STOP_INTENTS,
    ClusterRecord,
    ClusterState,
    ClusterView,
    HostState,
    StopIntent,
)

__all__ = [
    "CRASH_TAIL_LINES",
    "HANG_DUMP_WAIT",
    "CancelTimer",
    "ClusterStopped",
    "Effect",
    "Emit",
    "Fire",
    "HurryStop",
    "Instant",
    "Lifecycle",
    "LogHealth",
    "LogLine",
    "Note",
    "Promotion",
    "PublishError",
    "PublishHostFields",
    "PublishMessage",
    "PublishMetric",
    "PublishRestart",
    "PublishStatus",
    "Sample",
    "Send",
    "Signal",
    "Spawn",
    "StartTimer",
    "StateChanged",
    "Stop",
    "TreeSample",
    "tick_interval",
]

#: the lines of a crash report kept in ``{ns}:errors:cluster:{cid}``
CRASH_TAIL_LINES = 30
#: the most earlier runs of one epoch a new run is told are dead (``Spawn.dead_runs``; a crash loop keeps the newest)
MAX_DEAD_RUNS = 16
#: after SIGUSR1 (stack dump) a hung cluster gets this long before it is stopped
HANG_DUMP_WAIT = 0.5


def tick_interval(sample_interval: float, hang_timeout: float) -> float:
    """How often the loop checks for hangs (and samples when due): fine enough for the hang timeout."""
    return max(min(sample_interval, hang_timeout / 4, 1.0), 0.02)


@dataclass(frozen=True, slots=True)
class Instant:
    """The time an input happens: ``mono`` (monotonic seconds, for intervals) and ``wall`` (epoch seconds)."""

    mono: float
    wall: float


# ------------------------------------------------------------------------------------------ effects


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start a process for ``cluster_id``'s new run; report it with ``spawned`` or ``spawn_failed``."""

    cluster_id: int
    shard_ids: tuple[int, ...]
    epoch: int
    token: int
    #: tokens of earlier runs of this cluster and epoch whose process was reaped (``LETSFRAG_DEAD_RUNS``)
    dead_runs: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Stop:
    """Run the stop sequence of the cluster's process (ask over IPC first when ``ask``); report ``stop_done``."""

    cluster_id: int
    ask: bool
    reason: str
    timeout: float


@dataclass(frozen=True, slots=True)
class HurryStop:
    """The process is already stopping: stop it again without asking, within ``timeout`` (fencing)."""

    cluster_id: int
    reason: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Signal:
    """Send ``signal`` to the cluster's main process."""

    cluster_id: int
    signal: int


@dataclass(frozen=True, slots=True)
class Send:
    """Send an IPC message (``op`` with ``fields``) to the cluster's process, in the background."""

    cluster_id: int
    op: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StartTimer:
    """After ``delay`` seconds, feed ``restart_due(cluster_id, token)``."""

    cluster_id: int
    token: int
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Cancel the cluster's pending restart timer, if any."""

    cluster_id: int


@dataclass(frozen=True, slots=True)
class Note:
    """A supervisor line in the cluster's log file."""

    cluster_id: int
    text: str


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The cluster's state was set (``changed``: to another one): log it, publish its status and ``running``,
    wake the waiters."""

    cluster_id: int
    state: ClusterState
    reason: str
    changed: bool


@dataclass(frozen=True, slots=True)
class PublishStatus:
    """Write the cluster's status key."""

    cluster_id: int


@dataclass(frozen=True, slots=True)
class PublishRestart:
    """Append to the cluster's restart history."""

    cluster_id: int
    entry: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishMetric:
    """Append to the cluster's metric history."""

    cluster_id: int
    entry: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishError:
    """Write the cluster's last error report."""

    cluster_id: int
    text: str


@dataclass(frozen=True, slots=True)
class PublishHostFields:
    """Write fields of the host record."""

    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class PublishMessage:
    """Send a message to the broker (``payload`` without the host's incarnation; ``hello`` adds it)."""

    type: MessageType
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClusterStopped:
    """A revoke is complete: publish ``running`` (as of then), then tell the broker ``cluster_stopped``."""

    cluster_id: int
    epoch: int | None


@dataclass(frozen=True, slots=True)
class Emit:
    """An operator event (``{ns}:events``)."""

    severity: Severity
    kind: str
    message: str
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fire:
    """Call the user's callbacks of ``name`` with ``view`` (None: without an argument)."""

    name: str
    view: ClusterView | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    """A line of the supervisor's own log."""

    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Sample:
    """Sampling is due: measure the process trees and feed :meth:`Lifecycle.sampled`."""


Effect = (Spawn | Stop | HurryStop | Signal | Send | StartTimer | CancelTimer | Note | StateChanged | PublishStatus
          | PublishRestart | PublishMetric | PublishError | PublishHostFields | PublishMessage | ClusterStopped
          | Emit | Fire | LogLine | Sample)


# ------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class Promotion:
    """A successor of a planned handover that the assignment now names: what its run brings to the record."""

    epoch: int
    token: int
    pid: int
    started_at: float | None
    started_mono: float
    last_heartbeat: float | None
    last_heartbeat_mono: float | None
    #: it reported READY (at ``ready_at``)
    ready: bool
    ready_at: float | None


@dataclass(frozen=True, slots=True)
class LogHealth:
    """What a tick needs to know about one cluster's log file."""

    write_errors: int
    failing: bool
    last_write_error: str
    path: str


@dataclass(frozen=True, slots=True)
class TreeSample:
    """One cluster's process tree, as measured."""

    cpu_percent: float
    rss: int
    threads: int
    pss: int = 0
    uss: int = 0


def _format_bytes(size: int) -> str:
    return f"{size / 1024 / 1024:.0f} MiB"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class Lifecycle:
    """The decisions about this host's clusters (see the module docstring); every method runs inside the
    manager's decision loop and returns the effects to carry out, in order."""

    def __init__(self, config: HostConfig, host_id: str, state: HostState, rng: random.Random | None = None) -> None:
        self.config = config
        self.host_id = host_id
        self.state = state
        self._rng = rng or random.Random()
        self._settings = config.restart
        #: process tokens: unique per spawned process (main or successor), so late events find their process
        self._tokens = itertools.count(1)
        self._refused: tuple[int, int] | None = None
        self._next_sample = 0.0

    # ------------------------------------------------------------------------------------------ records

    def next_token(self) -> int:
        """A new process token."""
        return next(self._tokens)

    def record(self, cluster_id: int) -> ClusterRecord:
        """The record of ``cluster_id``, created (with its restart tracker) on first use."""
        record = self.state.records.get(cluster_id)
        if record is None:
            assert self.state.layout is not None
            record = ClusterRecord(cluster_id, self.state.layout.shards_of(cluster_id),
                                   policy.RestartTracker(self._settings, self._rng),
                                   policy.MemoryWatch(self.config.limits.max_memory))
            self.state.records[cluster_id] = record
        return record

    def set_state(self, record: ClusterRecord, state: ClusterState, reason: str) -> list[Effect]:
        """Move ``record`` to ``state``."""
        changed = record.state is not state
        record.state = state
        record.reason = reason
        return [StateChanged(record.cluster_id, state, reason, changed)]

    def begin_run(self, record: ClusterRecord, *, epoch: int | None = None, token: int | None = None) -> None:
        """A new run of ``record`` (a spawn, or a promoted successor): a new token, the per-run fields cleared.

        ``dead_runs`` keeps the earlier runs of the same epoch whose process was reaped (plus the previous run when
        it was: a restart in place); a new epoch starts with none."""
        if epoch is not None and epoch != record.epoch:
            record.dead_runs = ()
        elif record.token and record.reaped_token == record.token:
            record.dead_runs = (*record.dead_runs, record.token)[-MAX_DEAD_RUNS:]
        if epoch is not None:
            record.epoch = epoch
        record.token = self.next_token() if token is None else token
        record.spawns += 1
        if record.spawns > 1 and record.state is not ClusterState.PENDING:
            record.restarts += 1
        for name in ("fatal_reason", "stop_intent", "stop_cause", "ready_at", "last_heartbeat",
                     "last_heartbeat_mono", "exit_code", "exit_signal", "next_restart_at", "guilds", "latency",
                     "hang_at"):
            setattr(record, name, None)
        record.stopping = False
        record.hang_signalled = False
        record.sharding_required = False
        record.memory.reset()

    def cancel_backoff(self, record: ClusterRecord) -> list[Effect]:
        """Cancel ``record``'s pending restart, if any."""
        record.next_restart_at = None
        return [CancelTimer(record.cluster_id)]

    def running_json(self) -> str:
        """The host record's ``running`` field, as of now."""
        return json.dumps({str(cid): epoch for cid, epoch in self.state.running().items()})

    def sharding_fields(self) -> dict[str, str]:
        """The host record's ``sharding_required``: granted clusters Discord closed with 4011 (contract.reshard)."""
        desired = self.state.desired
        failed = sorted(cid for cid, r in self.state.records.items()
                        if r.sharding_required and cid in desired and r.epoch == desired[cid])
        return {SHARDING_REQUIRED_FIELD: json.dumps(failed)}

    # ------------------------------------------------------------------------------------------ spawning

    def spawn(self, record: ClusterRecord, now: Instant, epoch: int | None = None) -> list[Effect]:
        """Start a new run of ``record`` (at ``epoch``, default its own)."""
        self.begin_run(record, epoch=epoch)
        assert record.epoch is not None
        record.started_at = now.wall
        record.started_mono = now.mono
        return [Spawn(record.cluster_id, record.shard_ids, record.epoch, record.token, record.dead_runs)]

    def spawned(self, cluster_id: int, token: int, pid: int, now: Instant) -> list[Effect]:
        """The process of a :class:`Spawn` started."""
        record = self.state.records.get(cluster_id)
        if record is None or record.token != token:
            return []
        record.pid = pid  # recorded before anything is written about it (a log write may fail)
        record.started_mono = now.mono  # the hang timer runs from the process, not the wait for it
        return [Note(cluster_id, f"started pid {pid} (cluster {cluster_id})"),
                *self.set_state(record, ClusterState.STARTING, f"started pid {pid} (epoch {record.epoch})"),
                Fire("cluster_create", record.view())]

    def spawn_failed(self, cluster_id: int, token: int, error: str, program: str, now: Instant) -> list[Effect]:
        """The process of a :class:`Spawn` could not be started (``error``: the ``OSError``'s text)."""
        record = self.state.records.get(cluster_id)
        if record is None or record.token != token:
            return []
        record.last_error = f"cannot start {program}: {error}"
        return self._decide(record, policy.ExitInfo(code=127, signal=None), now, cause=f"cannot start: {error}")

    # ------------------------------------------------------------------------------------------ grants

    def take_layout(self, layout: LayoutRecord, key: str) -> list[Effect]:
        """A layout was read (``key``: its Redis key, for messages): it becomes the one in force, unless it
        changes the shard ranges while clusters run here (two processes would run the same shard): then the last
        one stays, reported once; it applies when nothing runs. A layout of a later generation
        (:mod:`letsfrag.contract.reshard`) is taken: its clusters have other ids."""
        current = self.state.layout
        effects: list[Effect] = []
        if current is None or current.geometry == layout.geometry or layout.generation > current.generation:
            self._refused = None
        elif not (alive := self.state.alive_clusters()):
            self._refused = None
        else:
            if self._refused != layout.geometry:
                self._refused = layout.geometry
                text = (f"host {self.host_id}: refusing the layout {key} with {layout.shard_count} shards in "
                        f"clusters of {layout.shards_per_cluster} while clusters {alive} run {current.shard_count} "
                        f"shards in clusters of {current.shards_per_cluster} (their shard ranges would overlap)")
                effects.append(LogLine(logging.ERROR, text))
                effects.append(Emit(Severity.ERROR, "layout_refused", text, {
                    "host": self.host_id, "key": key,
                    "field": "shards_per_cluster" if layout.shards_per_cluster != current.shards_per_cluster
                    else "shard_count"}))
            layout = current
        self.state.layout = layout
        return effects

    def take_grants(self, grants: Mapping[int, int]) -> list[Effect]:
        """The grants read from Redis (``{cluster id: epoch}`` naming this host) become the desired ones; call
        :meth:`reconcile` once the handovers were applied."""
        layout = self.state.layout
        assert layout is not None
        valid = {cid: epoch for cid, epoch in grants.items() if layout.shards_of(cid)}
        self.state.desired = valid
        return [LogLine(logging.WARNING, f"cluster {cid} is granted to this host but is outside the layout; ignored")
                for cid in sorted(grants.keys() - valid.keys())]

    def reconcile(self, now: Instant) -> list[Effect]:
        """Make the processes match the grants: spawn newer epochs, stop what is no longer ours."""
        effects: list[Effect] = []
        for cid, epoch in sorted(self.state.desired.items()):
            record = self.record(cid)
            if record.alive:
                if record.epoch != epoch and record.stop_intent not in FINAL_STOP_INTENTS:
                    effects += self.stop(record, StopIntent.REVOKE, f"epoch {record.epoch} replaced by {epoch}")
                continue
            if record.state is ClusterState.BACKOFF and record.epoch == epoch:
                continue
            if record.epoch is not None and epoch < record.epoch:
                continue  # a stale grant: epochs only grow
            if epoch == record.epoch and (record.state is ClusterState.FAILED or record.done_epoch == epoch):
                continue
            effects += self.cancel_backoff(record)
            if self.state.layout is not None:
                record.shard_ids = self.state.layout.shards_of(cid)
            if record.epoch != epoch:
                record.restarts = 0
            effects += self.set_state(record, ClusterState.PENDING, f"granted to this host (epoch {epoch})")
            effects += self.spawn(record, now, epoch)
        for cid, record in sorted(self.state.records.items()):
            if cid in self.state.desired:
                continue
            if record.alive:
                if record.stop_intent not in FINAL_STOP_INTENTS:
                    effects += self.stop(record, StopIntent.REVOKE, "no longer assigned to this host")
            elif record.state is ClusterState.BACKOFF:
                effects += self.cancel_backoff(record)
                effects += self.set_state(record, ClusterState.STOPPED, "revoked during backoff")
                effects.append(ClusterStopped(cid, record.epoch))
        return effects

    def fence_timeout(self) -> float:
        """How long a fenced host gives a process to stop: within the rest of the lease."""
        hb = self.state.layout.heartbeat_interval if self.state.layout else 1.0
        return min(self.config.limits.stop_timeout, max(hb, 1.0) / 2)

    def fence(self, reason: str) -> list[Effect]:
        """This host may have lost its lease: forget every grant and stop everything within the rest of it."""
        effects: list[Effect] = [
            LogLine(logging.ERROR, f"host {self.host_id} fenced itself: {reason}; stopping every cluster"),
            Emit(Severity.ERROR, "host_fenced", f"host {self.host_id} fenced itself: {reason}")]
        self.state.desired = {}
        timeout = self.fence_timeout()
        for record in self.state.records.values():
            record.done_epoch = None
            if record.alive:
                effects += self.stop(record, StopIntent.FENCE, reason, timeout=timeout)
            elif record.state is ClusterState.BACKOFF:
                effects += self.cancel_backoff(record)
                effects += self.set_state(record, ClusterState.STOPPED, f"fenced: {reason}")
        return effects

    def shutdown(self) -> list[Effect]:
        """The supervisor is leaving: forget the grants, stop every cluster, end every backoff."""
        self.state.desired = {}
        effects: list[Effect] = []
        for record in self.state.records.values():
            if record.alive:
                effects += self.stop(record, StopIntent.SHUTDOWN, "supervisor shutting down")
            elif record.state is ClusterState.BACKOFF:
                effects += self.cancel_backoff(record)
                effects += self.set_state(record, ClusterState.STOPPED, "supervisor shutting down")
        return effects

    # ------------------------------------------------------------------------------------------ stopping

    def stop(self, record: ClusterRecord, intent: StopIntent, reason: str, *, cause: str | None = None,
             ask: bool = True, timeout: float | None = None) -> list[Effect]:
        """Start stopping ``record``'s process for ``intent`` (nothing without a process)."""
        if not record.alive:
            return []
        if record.stopping:
            # already stopping: a stronger purpose (revoke, fence, shutdown) replaces a weaker one
            if intent in FINAL_STOP_INTENTS and record.stop_intent not in FINAL_STOP_INTENTS:
                record.stop_intent, record.stop_cause = intent, cause
            return [HurryStop(record.cluster_id, str(intent), timeout)] if timeout is not None else []
        record.stop_intent, record.stop_cause = intent, cause
        record.stopping = True
        effects: list[Effect] = []
        if record.state is not ClusterState.FAILED:
            effects += self.set_state(record, ClusterState.STOPPING, reason)
        stop_timeout = self.config.limits.stop_timeout if timeout is None else timeout
        effects.append(Stop(record.cluster_id, ask, str(intent), stop_timeout))
        return effects

    def stop_done(self, cluster_id: int, token: int) -> list[Effect]:
        """The stop sequence of a :class:`Stop` ended (the process may still have to be reaped)."""
        record = self.state.records.get(cluster_id)
        if record is not None and record.token == token:
            record.stopping = False
        return []

    # ------------------------------------------------------------------------------------------ IPC

    def ipc(self, cluster_id: int, token: int, message: dict[str, Any], now: Instant) -> list[Effect]:
        """A message the cluster's process sent over its IPC pipe."""
        record = self.state.records.get(cluster_id)
        if record is None or record.token != token:
            return []  # a late message of a process that was replaced
        op = message.get("op")
        if op == IpcOp.HEARTBEAT:
            return self._on_heartbeat(record, message, now)
        if op == IpcOp.READY:
            return self._mark_ready(record, now)
        if op == IpcOp.HELLO:
            epoch = message.get("epoch")
            if epoch is not None and epoch != record.epoch:
                return [LogLine(logging.WARNING,
                                f"cluster {cluster_id} says epoch {epoch!r}, expected {record.epoch!r}")]
            return []
        if op == IpcOp.FATAL:
            return self._on_fatal(record, message)
        if op == IpcOp.FENCED:
            reason = str(message.get("reason") or "fenced")
            record.fenced = reason
            return [LogLine(logging.WARNING, f"cluster {cluster_id} reports it is fenced: {reason!r}")]
        if op == IpcOp.ERROR:
            text = str(message.get("text") or "")[:20000]
            if not text:
                return []
            record.last_error = _last_line(text)
            return [PublishError(cluster_id, text),
                    Emit(Severity.WARNING, "cluster_error", f"cluster {cluster_id}: {record.last_error}",
                         {"cluster": cluster_id}),
                    PublishStatus(cluster_id)]
        return []

    def _on_heartbeat(self, record: ClusterRecord, message: dict[str, Any], now: Instant) -> list[Effect]:
        record.last_heartbeat = now.wall
        record.last_heartbeat_mono = now.mono
        record.hang_signalled = False
        guilds, latency = message.get("guilds"), message.get("latency")
        record.guilds = guilds if isinstance(guilds, int) and not isinstance(guilds, bool) else record.guilds
        record.latency = float(latency) if isinstance(latency, int | float) else record.latency
        ready = message.get("ready")
        if ready is True and record.state is ClusterState.STARTING:
            return self._mark_ready(record, now)
        if ready is True and record.state is ClusterState.DEGRADED:
            effects = self.set_state(record, ClusterState.READY, "all shards ready again")
            record.tracker.on_ready(now.mono)
            return effects
        if ready is False and record.state is ClusterState.READY:
            return self.set_state(record, ClusterState.DEGRADED, "not every shard is ready")
        return []

    def _mark_ready(self, record: ClusterRecord, now: Instant) -> list[Effect]:
        if record.state not in (ClusterState.STARTING, ClusterState.DEGRADED):
            return []
        record.ready_at = now.wall
        record.tracker.on_ready(now.mono)
        took = record.ready_at - (record.started_at or record.ready_at)
        return [*self.set_state(record, ClusterState.READY, f"ready in {took:.1f}s"),
                Fire("cluster_ready", record.view())]

    def _on_fatal(self, record: ClusterRecord, message: dict[str, Any]) -> list[Effect]:
        code = message.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            reason = policy.fatal_close_reason(code)
        else:
            reason = str(message.get("reason") or "fatal error reported by the cluster")
        record.fatal_reason = reason
        record.last_error = reason
        record.done_epoch = record.epoch
        record.tracker.failed = True
        if code == CloseCode.SHARDING_REQUIRED:  # the broker reshards (letsfrag.contract.reshard); the field tells it
            record.sharding_required = True
        effects = self.set_state(record, ClusterState.FAILED, reason)
        if record.sharding_required:
            effects += [PublishHostFields(self.sharding_fields()),
                        PublishMessage(MessageType.HOST_HELLO, {"host": self.host_id})]
        effects += [Emit(Severity.ERROR, "cluster_failed", f"cluster {record.cluster_id} failed: {reason}",
                         {"cluster": record.cluster_id}),
                    Fire("cluster_failed", record.view())]
        return effects + self.stop(record, StopIntent.FATAL, reason)

    # ------------------------------------------------------------------------------------------ exits

    def exited(self, cluster_id: int, token: int, returncode: int | None, tail: list[str],
               now: Instant) -> list[Effect]:
        """The cluster's process ended (reaped); ``tail``: the last lines of its output, for a crash report."""
        record = self.state.records.get(cluster_id)
        if record is None or record.token != token:
            return []
        pid, record.pid, record.stopping = record.pid, None, False
        record.reaped_token = token
        info = policy.ExitInfo.from_returncode(returncode, fatal_reason=record.fatal_reason)
        record.exit_code, record.exit_signal = info.code, info.signal
        record.cpu_percent, record.rss, record.threads, record.pss, record.uss = 0.0, 0, 0, 0, 0
        intent, record.stop_intent = record.stop_intent, None
        what = policy.describe_exit(info)
        effects: list[Effect] = [Note(cluster_id, f"pid {pid} {what}"), Fire("cluster_exit", record.view())]
        if intent in (StopIntent.REVOKE, StopIntent.FENCE, StopIntent.SHUTDOWN):
            record.tracker.on_exit(now.mono, info, requested=True)
            if record.state is not ClusterState.FAILED:
                effects += self.set_state(record, ClusterState.STOPPED, f"{intent}: {what}")
            if intent is StopIntent.REVOKE:
                effects.append(ClusterStopped(cluster_id, record.epoch))
            return effects + self.reconcile(now)
        if intent is StopIntent.RESTART:
            record.tracker.on_exit(now.mono, info, requested=True)
            effects.append(PublishRestart(cluster_id, {
                "ts": round(now.wall, 3), "reason": "restart requested", "exit_code": info.code,
                "exit_signal": info.signal, "delay": 0.0}))
            if not self.state.closing and self.state.desired.get(cluster_id) == record.epoch:
                return effects + self.spawn(record, now)
            effects += self.set_state(record, ClusterState.STOPPED, f"restart requested: {what}")
            return effects + self.reconcile(now)
        crashed = info.signal is not None or info.code not in (ExitCode.OK, ExitCode.FENCED)
        if crashed and record.fatal_reason is None:
            effects += self._report_crash(record, what, tail)
        cause = record.stop_cause if intent in (StopIntent.HUNG, StopIntent.MEMORY) else None
        return effects + self._decide(record, info, now, cause=cause)

    def _report_crash(self, record: ClusterRecord, what: str, tail: list[str]) -> list[Effect]:
        text = "\n".join(tail[-CRASH_TAIL_LINES:]).strip()
        if text:
            record.last_error = _last_line(text)
        return [PublishError(record.cluster_id, f"{what}\n{text}" if text else what),
                Emit(Severity.WARNING, "cluster_crash",
                     f"cluster {record.cluster_id} {what}" + (f": {record.last_error}" if text else ""),
                     {"cluster": record.cluster_id, "exit_code": record.exit_code,
                      "exit_signal": record.exit_signal})]

    def _decide(self, record: ClusterRecord, info: policy.ExitInfo, now: Instant, *,
                cause: str | None) -> list[Effect]:
        """Ask the restart policy what follows an exit that was not on purpose."""
        decision = record.tracker.on_exit(now.mono, info, cause=cause)
        cid = record.cluster_id
        if decision.action is policy.ExitAction.RESTART and not self.state.closing:
            record.next_restart_at = now.wall + decision.delay
            return [*self.set_state(record, ClusterState.BACKOFF,
                                    f"{decision.reason}; restarting in {decision.delay:.1f}s"),
                    StartTimer(cid, record.token, decision.delay),
                    PublishRestart(cid, {"ts": round(now.wall, 3), "reason": decision.reason, "exit_code": info.code,
                                         "exit_signal": info.signal, "delay": round(decision.delay, 3)}),
                    Emit(Severity.WARNING, "cluster_restart",
                         f"cluster {cid} {decision.reason}; restarting in {decision.delay:.1f}s", {"cluster": cid})]
        record.done_epoch = record.epoch
        if decision.action is policy.ExitAction.FAIL:
            already = record.state is ClusterState.FAILED
            effects = self.set_state(record, ClusterState.FAILED, record.reason if already else decision.reason)
            if not already:
                effects += [Emit(Severity.ERROR, "cluster_failed", f"cluster {cid} failed: {decision.reason}",
                                 {"cluster": cid}),
                            Fire("cluster_failed", record.view())]
            return effects
        return self.set_state(record, ClusterState.STOPPED, decision.reason)

    def promote(self, cluster_id: int, successor: Promotion, now: Instant) -> list[Effect]:
        """A successor became the cluster's process (the shell keeps it now; an old process here retires)."""
        record = self.record(cluster_id)
        old_epoch = record.epoch
        effects = self.cancel_backoff(record)
        if self.state.layout is not None:
            record.shard_ids = self.state.layout.shards_of(cluster_id)
        self.begin_run(record, epoch=successor.epoch, token=successor.token)
        pid = record.pid = successor.pid
        record.started_at, record.started_mono = successor.started_at, successor.started_mono
        record.last_heartbeat, record.last_heartbeat_mono = successor.last_heartbeat, successor.last_heartbeat_mono
        record.restarts = 0
        if successor.ready:
            record.ready_at = successor.ready_at
            record.tracker.on_ready(now.mono)
        effects += self.set_state(record, ClusterState.READY if successor.ready else ClusterState.STARTING,
                                  f"successor pid {pid} promoted (epoch {successor.epoch})")
        effects += [
            Note(cluster_id, f"successor pid {pid} promoted: it owns cluster {cluster_id} at epoch {successor.epoch}"),
            Send(cluster_id, IpcOp.PROMOTE, {"epoch": successor.epoch}),
            Emit(Severity.INFO, "successor_promoted", f"cluster {cluster_id}: successor pid {pid} promoted "
                 f"(epoch {old_epoch} -> {successor.epoch})", {"cluster": cluster_id, "epoch": successor.epoch}),
            Fire("cluster_create", record.view())]
        if successor.ready:
            effects.append(Fire("cluster_ready", record.view()))
        return effects

    def restart_due(self, cluster_id: int, token: int, now: Instant) -> list[Effect]:
        """The backoff delay of a cluster's run is over."""
        record = self.state.records.get(cluster_id)
        if record is None or record.token != token:
            return []
        if record.state is ClusterState.BACKOFF and not self.state.closing:
            return self.spawn(record, now)
        return []

    # ------------------------------------------------------------------------------------------ operators

    def request_restart(self, cluster_id: int) -> tuple[bool, str, int, list[Effect]]:
        """An operator asked to restart one cluster (clears FAILED): ``(ok, message, spawns before, effects)``.

        Follow with :meth:`start_if_idle` when ok."""
        state = self.state
        record = state.records.get(cluster_id)
        if record is None or cluster_id not in state.desired:
            return False, f"cluster {cluster_id} is not assigned to host {self.host_id}", 0, []
        before = record.spawns
        if record.alive:
            if record.stop_intent in (StopIntent.REVOKE, StopIntent.FENCE, StopIntent.SHUTDOWN):
                return False, f"cluster {cluster_id} is being stopped ({record.stop_intent})", before, []
            record.tracker.reset()
            record.done_epoch = None
            if record.stop_intent is not None:  # hung, memory or fatal stop under way: restart after it
                record.stop_intent = StopIntent.RESTART
                return True, f"cluster {cluster_id} is stopping; it will start again", before, []
            return (True, f"restarting cluster {cluster_id}", before,
                    self.stop(record, StopIntent.RESTART, "restart requested"))
        record.tracker.reset()
        record.done_epoch = None
        return True, f"starting cluster {cluster_id}", before, self.cancel_backoff(record)

    def start_if_idle(self, cluster_id: int, now: Instant) -> list[Effect]:
        """Spawn a granted cluster that has no process (FAILED, STOPPED, BACKOFF)."""
        record = self.state.records.get(cluster_id)
        if record is not None and not record.alive and cluster_id in self.state.desired:
            record.epoch = self.state.desired[cluster_id]
            return self.spawn(record, now)
        return []

    # ------------------------------------------------------------------------------------------ ticks

    def tick(self, now: Instant, logs: Mapping[int, LogHealth]) -> list[Effect]:
        """Check hangs and the log files; ask for a :class:`Sample` when one is due."""
        hang_timeout = self.config.limits.hang_timeout
        effects: list[Effect] = []
        for record in self.state.records.values():
            if not record.alive or record.stop_intent is not None:
                continue
            if record.state not in (ClusterState.STARTING, ClusterState.READY, ClusterState.DEGRADED):
                continue
            if not policy.is_hung(now.mono, record.last_heartbeat_mono, record.started_mono, hang_timeout):
                continue
            if not record.hang_signalled:
                record.hang_signalled = True
                record.hang_at = now.mono
                effects += [Note(record.cluster_id, f"no heartbeat for {hang_timeout:g}s: SIGUSR1 (stack dump)"),
                            Signal(record.cluster_id, signal.SIGUSR1)]
            elif now.mono - (record.hang_at if record.hang_at is not None else now.mono) >= HANG_DUMP_WAIT:
                since = now.mono - (record.last_heartbeat_mono or record.started_mono)
                cause = f"hung: no heartbeat for {since:.0f}s"
                effects.append(Emit(Severity.WARNING, "cluster_hung", f"cluster {record.cluster_id} {cause}",
                                    {"cluster": record.cluster_id}))
                effects += self.stop(record, StopIntent.HUNG, cause, cause=cause, ask=False)
        effects += self._check_logs(logs)
        if now.mono >= self._next_sample:
            self._next_sample = now.mono + self.config.sample_interval
            effects.append(Sample())
        return effects

    def _check_logs(self, logs: Mapping[int, LogHealth]) -> list[Effect]:
        """Publish new log write errors; the start of a streak is a warning event and the cluster's last error.

        A cluster whose log cannot be written keeps running (its output is dropped, its last lines are still kept
        in memory for crash reports): a full log disk must not stop the bot.
        """
        effects: list[Effect] = []
        for cid, record in self.state.records.items():
            health = logs.get(cid)
            if health is None or health.write_errors == record.log_errors:
                continue
            lost = health.write_errors - record.log_errors
            record.log_errors = health.write_errors
            if not record.log_failing:
                record.last_error = f"cannot write its log: {health.last_write_error} ({health.path})"
                effects.append(Emit(Severity.WARNING, "cluster_log_error",
                                    f"cluster {cid} {record.last_error} ({lost} writes lost); it keeps running",
                                    {"cluster": cid}))
            record.log_failing = health.failing
            effects.append(PublishStatus(cid))
        return effects

    def sampled(self, samples: Mapping[int, TreeSample], own_cpu: float, own_rss: int,
                now: Instant) -> list[Effect]:
        """The process trees were measured: record them, publish them, stop what is over the memory limit."""
        effects: list[Effect] = []
        total_cpu, total_rss = own_cpu, own_rss
        ts = round(now.wall, 3)
        for cid, sample in samples.items():
            record = self.state.records[cid]
            if not record.alive:
                continue
            record.cpu_percent, record.rss, record.threads = sample.cpu_percent, sample.rss, sample.threads
            record.pss, record.uss = sample.pss, sample.uss
            total_cpu += sample.cpu_percent
            total_rss += sample.rss
            effects += [PublishMetric(cid, {"ts": ts, "cpu": round(sample.cpu_percent, 1), "rss": sample.rss,
                                            "pss": sample.pss}),
                        PublishStatus(cid)]
            if record.memory.sample(sample.rss) and record.stop_intent is None:
                limit = record.memory.limit or 0
                cause = (f"memory: RSS {_format_bytes(sample.rss)} over the limit {_format_bytes(limit)} "
                         f"on {record.memory.samples} samples")
                effects.append(Emit(Severity.WARNING, "cluster_memory", f"cluster {cid} {cause}", {"cluster": cid}))
                effects += self.stop(record, StopIntent.MEMORY, cause, cause=cause)
        self.state.host_cpu, self.state.host_rss = total_cpu, total_rss
        return effects
