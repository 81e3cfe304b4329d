"""Cluster states, the per-cluster record (plain data), and the events that feed the manager's loop.

Per-process tasks (IPC reader, exit waiter, timers, stop sequences) never change a record themselves: they put one
of the event dataclasses below on the manager's queue, and the manager's single loop feeds it to the lifecycle,
which decides (see ``manager.py`` and ``lifecycle.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from letsfrag.supervisor.policy import MemoryWatch, RestartTracker

from ..units import format_shard_range

if TYPE_CHECKING:
    from letsfrag.contract.records import LayoutRecord
    from letsfrag.supervisor.logfile import ClusterLog

__all__ = [
    "ALIVE_STATES",
    "Call",
    "ClusterRecord",
    "ClusterState",
    "ClusterView",
    "HostState",
    "IpcMessage",
    "ProcessExited",
    "RestartDue",
    "StopDone",
    "StopIntent",
]


class ClusterState(StrEnum):
    """Where one cluster is in its life on this host (the ``state`` field of its status key)."""

    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BACKOFF = "backoff"
    FAILED = "failed"


#: states in which this host holds the cluster (it appears in the host record's ``running``)
ALIVE_STATES = frozenset({
    ClusterState.PENDING, ClusterState.STARTING, ClusterState.READY, ClusterState.DEGRADED,
    ClusterState.STOPPING, ClusterState.BACKOFF,
})


class StopIntent(StrEnum):
    """Why the supervisor is stopping a cluster process; decides what follows its exit."""

    REVOKE = "revoked"      # no longer assigned here (or another epoch): stopped, confirm with cluster_stopped
    FENCE = "fenced"        # this host lost its lease: stopped, may be granted again after re-registering
    SHUTDOWN = "shutdown"   # the supervisor is leaving
    RESTART = "restart"     # an operator asked: start again at once, not counted by the restart policy
    HUNG = "hung"           # no heartbeat: counted by the restart policy
    MEMORY = "memory"       # RSS over the limit: counted by the restart policy
    FATAL = "fatal"         # the cluster reported a fatal gateway close: FAILED

    @property
    def requested(self) -> bool:
        """True when the exit is on purpose and must not count toward backoff or FAILED."""
        return self in (StopIntent.REVOKE, StopIntent.FENCE, StopIntent.SHUTDOWN, StopIntent.RESTART)


#: stop intents after which the cluster is not started again on this host; they override any other intent
FINAL_STOP_INTENTS = frozenset({StopIntent.REVOKE, StopIntent.FENCE, StopIntent.SHUTDOWN})


@dataclass(frozen=True)
class ClusterView:
    """A read-only snapshot of one cluster, as ``ClusterManager.clusters`` returns it.

    Times are wall-clock epoch seconds (``None`` when unknown).
    """

    cluster_id: int
    state: ClusterState
    epoch: int | None
    pid: int | None
    shard_ids: tuple[int, ...]
    restarts: int
    reason: str
    started_at: float | None
    ready_at: float | None
    last_heartbeat: float | None
    exit_code: int | None
    exit_signal: int | None
    last_error: str
    next_restart_at: float | None
    cpu_percent: float
    rss: int
    threads: int
    guilds: int | None
    latency: float | None
    spawns: int
    #: writes to the cluster's log file that failed (full disk, unwritable path); the output was dropped
    log_errors: int = 0
    #: proportional and unique set size of the process tree (bytes; 0 before the first sample)
    pss: int = 0
    uss: int = 0

    @property
    def shard_range(self) -> str:
        """``"24–31"`` (en dash), one id for a single shard, ``""`` without shards."""
        return format_shard_range(self.shard_ids)


@dataclass(eq=False)
class ClusterRecord:
    """Everything the supervisor knows about one cluster: plain data, changed only by the lifecycle
    (:mod:`letsfrag.supervisor.lifecycle`) inside the manager's loop. The process, its restart timer and its stop
    task are the shell's (the manager keeps them by cluster id); the record knows only the process's ``pid``.
    """

    cluster_id: int
    shard_ids: tuple[int, ...]
    tracker: RestartTracker
    memory: MemoryWatch
    state: ClusterState = ClusterState.PENDING
    #: epoch of the current (or last) run
    epoch: int | None = None
    #: an epoch whose run ended for good here (fenced exit, FAILED, policy stop): not started again
    done_epoch: int | None = None
    #: the pid of the cluster's process while one exists (possibly stopping); None once it exited
    pid: int | None = None
    #: increases with every spawn; events carry it so late events of an old process are ignored
    token: int = 0
    #: the token of the last run whose process this supervisor reaped (``exited``)
    reaped_token: int | None = None
    #: tokens of earlier runs of this epoch whose process was reaped (the newest last): the current run may take
    #: over the claims they left pending (``LETSFRAG_DEAD_RUNS``)
    dead_runs: tuple[int, ...] = ()
    spawns: int = 0
    restarts: int = 0
    reason: str = ""
    started_at: float | None = None
    started_mono: float = 0.0
    ready_at: float | None = None
    last_heartbeat: float | None = None
    last_heartbeat_mono: float | None = None
    exit_code: int | None = None
    exit_signal: int | None = None
    last_error: str = ""
    next_restart_at: float | None = None
    stop_intent: StopIntent | None = None
    stop_cause: str | None = None
    #: a stop sequence runs (until it ended, or the process exited)
    stopping: bool = False
    fatal_reason: str | None = None
    hang_signalled: bool = False
    #: monotonic time of the hang's SIGUSR1 (stack dump); the stop follows ``HANG_DUMP_WAIT`` later
    hang_at: float | None = None
    #: the reason the cluster gave when it reported itself fenced (IPC ``fenced``)
    fenced: str | None = None
    #: the run ended with Discord's 4011 (sharding required): the host record's ``sharding_required`` names it
    sharding_required: bool = False
    #: its log file is failing to write (a streak of write errors; reported once at its start)
    log_failing: bool = False
    cpu_percent: float = 0.0
    rss: int = 0
    pss: int = 0
    uss: int = 0
    threads: int = 0
    guilds: int | None = None
    latency: float | None = None
    log_errors: int = 0

    @property
    def alive(self) -> bool:
        """A process exists (possibly stopping)."""
        return self.pid is not None

    def view(self) -> ClusterView:
        """The snapshot handed to callers and the publisher."""
        return ClusterView(
            cluster_id=self.cluster_id, state=self.state, epoch=self.epoch, pid=self.pid,
            shard_ids=self.shard_ids, restarts=self.restarts, reason=self.reason, started_at=self.started_at,
            ready_at=self.ready_at, last_heartbeat=self.last_heartbeat, exit_code=self.exit_code,
            exit_signal=self.exit_signal, last_error=self.last_error, next_restart_at=self.next_restart_at,
            cpu_percent=self.cpu_percent, rss=self.rss, threads=self.threads, guilds=self.guilds,
            latency=self.latency, spawns=self.spawns, log_errors=self.log_errors, pss=self.pss, uss=self.uss,
        )


@dataclass(eq=False)
class HostState:
    """What the supervisor's parts share: one object with public fields, owned by the manager, changed only
    inside its decision loop.

    The lifecycle (the pure core, :mod:`letsfrag.supervisor.lifecycle`) makes the decisions on it; the manager
    (the shell: processes, timers, tasks, Redis) and its parts (``SupervisorCommands``, ``SuccessorBook``) read it;
    none of them reaches into another's private attributes. What a part may ask of the shell is
    :class:`letsfrag.supervisor.shell.Shell`.
    """

    #: every cluster this host ran or runs, by cluster id
    records: dict[int, ClusterRecord] = field(default_factory=dict)
    #: ``{cluster id: epoch}`` granted to this host, as last read (emptied by fencing and shutdown)
    desired: dict[int, int] = field(default_factory=dict)
    #: the broker's layout in force here (None until the first one was read)
    layout: LayoutRecord | None = None
    #: each cluster's log file, by cluster id (created on the first spawn)
    logs: dict[int, ClusterLog] = field(default_factory=dict)
    #: the supervisor is shutting down: nothing is started again
    closing: bool = False
    #: the host's own CPU and RSS plus its clusters' (last sample)
    host_cpu: float = 0.0
    host_rss: int = 0

    def running(self) -> dict[int, int]:
        """``{cluster id: epoch}`` of clusters this host holds now (the host record's ``running``)."""
        return {cid: rec.epoch for cid, rec in sorted(self.records.items())
                if rec.epoch is not None and (rec.state in ALIVE_STATES or rec.pid is not None)}

    def alive_clusters(self) -> list[int]:
        """Ids of the clusters whose process exists (possibly stopping)."""
        return sorted(cid for cid, r in self.records.items() if r.pid is not None)


# ------------------------------------------------------------------------------------ loop events


@dataclass(frozen=True)
class IpcMessage:
    """A message a cluster process sent over its IPC pipe."""

    cluster_id: int
    token: int
    message: dict[str, Any]


@dataclass(frozen=True)
class ProcessExited:
    """A cluster process ended (it was reaped); ``returncode`` negative = killed by that signal."""

    cluster_id: int
    token: int
    returncode: int | None


@dataclass(frozen=True)
class RestartDue:
    """The backoff delay of a cluster is over."""

    cluster_id: int
    token: int


@dataclass(frozen=True)
class StopDone:
    """The stop sequence of a cluster's process ended (the process exited, or was killed)."""

    cluster_id: int
    token: int


@dataclass(frozen=True)
class Call:
    """Run ``fn`` inside the loop (grants, commands, fencing) and resolve ``future`` with its result."""

    fn: Callable[[], Any]
    future: asyncio.Future[Any] | None = None
