"""One consistent picture of a deployment, read from the Redis keys of ``docs/redis.md``.

:func:`read_snapshot` costs two pipelined round trips whatever the size of the deployment (layout, members,
assignment, leader and events first; then every host record, lease TTL, cluster status, shard status and
identify queue). :func:`read_cluster_detail` reads one cluster's shards, errors, restarts and metrics.
Everything derived (host state, ages, heartbeat colours, counts) is computed here from an injected ``now``, so
``letsfrag status``, ``letsfrag-top`` and the tests agree and can be made deterministic.
``Snapshot.to_json()`` is the stable document of ``letsfrag status --json`` (see ``docs/status.md``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis

from ..contract.handover import (
    HANDOFF_BLOCKED_FIELD,
    OPERATION_FIELD,
    SUCCESSORS_FIELD,
    HandoverRecord,
    HandoverState,
    SuccessorReport,
    parse_successors,
)
from ..contract.keys import Keys
from ..contract.records import (
    CLOCK_OFFSET_WARN,
    Grant,
    LayoutRecord,
    clock_skew_text,
    lenient_float,
    lenient_int,
    parse_running,
)
from ..contract.states import HostRecordState
from ..errors import RecordError
from ..events import Event, Severity
from ..units import format_shard_range
from .packed import parse_json as _json
from .packed import read_assignment, read_clusters, read_hosts

__all__ = [
    "HANDOVER_STATES", "RUNNING_STATES", "SCHEMA_VERSION", "ClusterDetail", "ClusterRow", "HandoverInfo", "HostRow",
    "LeaderInfo", "ShardRow", "Snapshot", "count_errors", "format_range", "heartbeat_colour", "operation_text",
    "read_cluster_detail", "read_snapshot",
]

#: version of the ``to_json()`` document; bumped only on incompatible changes
SCHEMA_VERSION = 1
#: cluster states in which its shards' own reports are believed
RUNNING_STATES = frozenset({"starting", "ready", "degraded"})
#: a running cluster whose last heartbeat is older than this many heartbeat intervals is shown as ``stale``:
#: its supervisor stopped reporting (host dead, frozen or cut off) and its READY can no longer be trusted
STALE_AFTER_INTERVALS = 5.0
ERROR_WINDOW = 600.0
#: how a cluster being handed over is shown, by the state of its ``{ns}:handover`` record
HANDOVER_STATES: dict[HandoverState, str] = {HandoverState.PREPARING: "handing over",
                                             HandoverState.SWITCHED: "switching"}
#: how the broker's operation kinds read (``{ns}:broker`` field ``operation``)
_OPERATION_NAMES = {"rolling": "rolling restart", "restart": "restart", "drain": "drain", "rebalance": "rebalance",
                    "leave": "hand-off", "on_join": "rebalance on join", "reshard": "reshard"}
#: the numeric fields of a host record (a value that is not a finite number is listed in ``HostRow.invalid``)
_HOST_NUMBERS = ("heartbeat_at", "capacity", "cpu_percent", "rss", "started_at", "pid", "clock_offset")

_float = lenient_float
_int = lenient_int


def _age(now: float, ts: float | None) -> float | None:
    return None if ts is None else max(0.0, now - ts)


def heartbeat_colour(age: float | None, interval: float) -> str:
    """``"green"`` up to 2 intervals old, ``"yellow"`` up to 5, else (or never seen) ``"red"``."""
    if age is None:
        return "red"
    if age <= 2 * interval:
        return "green"
    if age <= 5 * interval:
        return "yellow"
    return "red"


#: the ``layout`` object of ``status --json`` (docs/status.md): the record's fields but ``allow_eval``
_LAYOUT_JSON = ("generation", "cluster_base", "shard_count", "shards_per_cluster", "cluster_count", "max_concurrency",
                "identify_window", "lease_ttl", "lease_grace", "heartbeat_interval", "updated_at")


def _layout_json(layout: LayoutRecord | None) -> dict[str, Any] | None:
    return {name: getattr(layout, name) for name in _LAYOUT_JSON} if layout else None


def format_range(shards: range | list[int]) -> str:
    """``24–31`` (en dash), ``5`` for one shard, ``–`` for none."""
    return format_shard_range(shards, empty="–")


@dataclass(slots=True)
class LeaderInfo:
    """The leader broker (``{ns}:leader`` and ``{ns}:broker``)."""

    id: str | None
    state: str | None = None
    since: float | None = None
    heartbeat_age: float | None = None
    identify_depth: int | None = None
    standbys: list[str] = field(default_factory=list)
    #: the operator operation in progress (``{ns}:broker`` field ``operation``, JSON), None when none
    operation: dict[str, Any] | None = None


def operation_text(operation: dict[str, Any] | None) -> str:
    """One line for an operation in progress: ``rolling restart of h0: 2 of 4`` ('' when none)."""
    if not operation:
        return ""
    kind = str(operation.get("kind") or "operation")
    if kind == "reshard":
        generation, ready, total = (_int(operation.get(k)) for k in ("generation", "ready", "total"))
        text = f"reshard to generation {generation}" if generation is not None else "reshard"
        if operation.get("state") == "switched":
            return f"{text}: switched, retiring {_int(operation.get('retiring')) or 0} cluster(s)"
        return f"{text}: {ready} of {total} ready" if ready is not None and total else text
    text = _OPERATION_NAMES.get(kind, kind.replace("_", " "))
    host, cluster = operation.get("host"), operation.get("cluster")
    if isinstance(host, str) and host:
        text += f" of {host}"
    elif isinstance(cluster, int) and not isinstance(cluster, bool) and kind == "restart":
        text += f" of cluster {cluster}"
    done, total = _int(operation.get("done")), _int(operation.get("total"))
    if done is not None and total:
        text += f": {done} of {total}"
    if isinstance(cluster, int) and not isinstance(cluster, bool) and kind != "restart":
        text += f" (cluster {cluster})"
    return text


@dataclass(slots=True)
class HostRow:
    """One host: its record, lease and derived state (``up``, ``lost``, ``leaving``, ``draining``)."""

    id: str
    hostname: str
    state: str
    lease: bool
    lease_age: float | None
    lease_ttl_left: float | None
    capacity: int | None
    clusters: list[int]
    shards: int
    cpu_percent: float | None
    rss: int | None
    uptime: float | None
    pid: int | None
    version: str
    running: dict[str, int]
    #: this host's clock minus Redis ``TIME`` in seconds, as the host measured it (``None``: not reported)
    clock_offset: float | None = None
    #: fields of the host record that hold something other than a finite number (shown as unknown)
    invalid: list[str] = field(default_factory=list)
    #: clusters whose successor process this host runs (its record's ``successors`` field)
    successors: list[int] = field(default_factory=list)
    #: why this leaving host's clusters could not be handed to another host ('' when they could)
    handoff_blocked: str = ""

    @property
    def problem(self) -> bool:
        return self.state != HostRecordState.UP

    @property
    def clock_skewed(self) -> bool:
        """The host's clock is more than :data:`CLOCK_OFFSET_WARN` seconds off Redis ``TIME``."""
        return self.clock_offset is not None and abs(self.clock_offset) > CLOCK_OFFSET_WARN


@dataclass(slots=True)
class ShardRow:
    """One shard as its cluster last reported it (``status`` is ``down`` when the cluster is not running)."""

    id: int
    cluster: int
    status: str
    latency: float | None
    guilds: int | None
    last_event_age: float | None
    report_age: float | None


@dataclass(slots=True)
class HandoverInfo:
    """A planned handover of a cluster in progress: its ``{ns}:handover`` record and the successor's report."""

    #: as shown: ``handing over`` (preparing: the successor starts) or ``switching`` (switched: the old stops)
    state: str
    #: the record's own state, ``preparing`` or ``switched``
    phase: str
    reason: str
    from_host: str
    from_epoch: int
    #: the target host and the new epoch
    host: str
    epoch: int
    #: the process handing over and its successor (None when not reported)
    old_pid: int | None
    new_pid: int | None
    #: the successor's state as its host reports it (``starting``, ``ready``, ``failed``; None: no report yet)
    successor: str | None
    age: float | None
    deadline_in: float


def _handover_info(record: HandoverRecord, status: dict[str, str], report: SuccessorReport | None,
                   now: float) -> HandoverInfo:
    """Join a handover record, the cluster's status hash (whichever process wrote it) and the successor report."""
    status_epoch, status_pid = _int(status.get("epoch")), _int(status.get("pid")) or None
    new_pid = report.pid if report is not None and report.epoch == record.epoch else None
    if new_pid is None and status_epoch == record.epoch:
        new_pid = status_pid
    return HandoverInfo(
        state=HANDOVER_STATES.get(record.state, str(record.state)), phase=str(record.state), reason=record.reason,
        from_host=record.from_host, from_epoch=record.from_epoch, host=record.host, epoch=record.epoch,
        old_pid=status_pid if status_epoch == record.from_epoch else None, new_pid=new_pid,
        successor=str(report.state) if report is not None and report.epoch == record.epoch else None,
        age=_age(now, record.started), deadline_in=record.deadline - now,
    )


@dataclass(slots=True)
class ClusterRow:
    """One cluster joined from the assignment, its status hash and its shards' reports."""

    id: int
    host: str | None
    epoch: int | None
    state: str
    shard_range: str
    shard_ids: list[int]
    pid: int | None
    restarts: int
    uptime: float | None
    cpu_percent: float | None
    rss: int | None
    #: proportional / unique set size of the process tree (bytes; None when not reported)
    pss: int | None
    uss: int | None
    guilds: int | None
    latency: float | None
    heartbeat_age: float | None
    heartbeat_colour: str
    last_error: str
    reason: str
    exit_code: int | None
    next_restart_in: float | None
    shards_ready: int
    #: writes to the cluster's log file that failed (its output was dropped; the cluster kept running)
    log_errors: int = 0
    shards: list[ShardRow] = field(default_factory=list)
    #: the planned handover of this cluster in progress, None when none
    handover: HandoverInfo | None = None

    @property
    def assigned(self) -> bool:
        return self.host is not None

    @property
    def problem(self) -> bool:
        """Not assigned, not ready, or its heartbeat is late."""
        return (not self.assigned or self.state != "ready" or self.heartbeat_colour != "green"
                or self.shards_ready < len(self.shard_ids))


@dataclass(slots=True)
class Snapshot:
    """The whole deployment at ``taken_at``."""

    namespace: str
    taken_at: float
    layout: LayoutRecord | None
    leader: LeaderInfo
    hosts: list[HostRow]
    clusters: list[ClusterRow]
    events: list[Event]
    identify_depth: int
    errors_10m: int
    #: ``{ns}:identify:budget`` (Discord's daily session-start budget): total, remaining, reset_at; None if unknown
    identify_budget: dict[str, float] | None = None
    #: what is wrong in the records themselves (an invalid layout, a host's bad fields or skewed clock)
    warnings: list[str] = field(default_factory=list)

    @property
    def hosts_up(self) -> int:
        return sum(1 for h in self.hosts if h.state in (HostRecordState.UP, HostRecordState.DRAINING))

    @property
    def clusters_ready(self) -> int:
        return sum(1 for c in self.clusters if c.state == "ready" and c.assigned)

    @property
    def shards_total(self) -> int:
        return self.layout.shard_count if self.layout else 0

    @property
    def shards_ready(self) -> int:
        return sum(c.shards_ready for c in self.clusters)

    @property
    def healthy(self) -> bool:
        """True when there is a layout and every shard is READY."""
        return self.shards_total > 0 and self.shards_ready == self.shards_total

    def summary(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "hosts_up": self.hosts_up, "hosts_total": len(self.hosts),
            "clusters_ready": self.clusters_ready, "clusters_total": len(self.clusters),
            "clusters_unassigned": sum(1 for c in self.clusters if not c.assigned),
            "shards_ready": self.shards_ready, "shards_total": self.shards_total,
            "identify_depth": self.identify_depth, "errors_10m": self.errors_10m,
            "identify_budget": self.identify_budget,
            "generation": self.layout.generation if self.layout else None,
        }

    def to_json(self, *, shards: bool = False, events: int = 20) -> dict[str, Any]:
        """The document of ``letsfrag status --json`` (schema in ``docs/status.md``)."""
        clusters = []
        for c in self.clusters:
            row = {k: v for k, v in asdict(c).items() if k != "shards"}
            row["assigned"] = c.assigned
            if shards:
                row["shards"] = [asdict(s) for s in c.shards]
            clusters.append(row)
        return {
            "schema": SCHEMA_VERSION,
            "namespace": self.namespace,
            "taken_at": round(self.taken_at, 3),
            "summary": self.summary(),
            "layout": _layout_json(self.layout),
            "leader": asdict(self.leader),
            "hosts": [asdict(h) for h in self.hosts],
            "clusters": clusters,
            "events": [e.to_dict() for e in self.events[:events]],
            "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------------------------------------ building


def count_errors(events: list[Event], now: float, window: float = ERROR_WINDOW) -> int:
    """How many ``error`` events happened in the ``window`` seconds before ``now``."""
    return sum(1 for e in events if e.severity is Severity.ERROR and now - e.ts <= window)


def _host_of(grant: Grant | None) -> str:
    return grant.host if grant else ""


def _grant(raw: str | None, keys: Keys, cluster_id: int) -> Grant | None:
    """The cluster's grant (``None``: unassigned or unreadable, shown as unassigned)."""
    if raw is None:
        return None
    try:
        return Grant.from_json(raw, key=keys.assignment, field=str(cluster_id))
    except RecordError:
        return None


def _host_row(host_id: str, data: dict[str, str], pttl: int, layout: LayoutRecord | None, clusters: list[int],
              now: float) -> HostRow:
    offset = _float(data.get("clock_offset"))
    now = now + (offset or 0.0)  # the host's timestamps are on its own clock
    lease = (pttl is not None and pttl > 0) or pttl == -1
    record_state = data.get("state") or HostRecordState.UP
    state = HostRecordState.LOST if not lease or record_state == HostRecordState.LOST else record_state
    try:
        running: dict[str, int] = {str(c): e for c, e in
                                   parse_running(data.get("running"), key=f"host {host_id}").items()}
        bad_running = []
    except RecordError:
        running, bad_running = {}, ["running"]
    shards = sum(len(layout.shards_of(c)) for c in clusters) if layout else 0
    invalid = [name for name in _HOST_NUMBERS if data.get(name) not in (None, "") and _float(data.get(name)) is None]
    invalid += bad_running
    try:
        successors = sorted(parse_successors(data.get(SUCCESSORS_FIELD), key=f"host {host_id}"))
    except RecordError:
        successors = []
        invalid.append(SUCCESSORS_FIELD)
    return HostRow(
        id=host_id, hostname=data.get("hostname", ""), state=state, lease=lease,
        lease_age=_age(now, _float(data.get("heartbeat_at"))),
        lease_ttl_left=pttl / 1000 if pttl and pttl > 0 else None,
        capacity=_int(data.get("capacity")), clusters=clusters, shards=shards,
        cpu_percent=_float(data.get("cpu_percent")), rss=_int(data.get("rss")),
        uptime=_age(now, _float(data.get("started_at"))), pid=_int(data.get("pid")),
        version=data.get("version", ""), running=running,
        clock_offset=_float(data.get("clock_offset")), invalid=invalid, successors=successors,
        handoff_blocked=str(data.get(HANDOFF_BLOCKED_FIELD) or ""),
    )


def _warnings(keys: Keys, layout_raw: dict[str, str], hosts: list[HostRow]) -> list[str]:
    """One sentence per problem of the records: an invalid layout, a host's invalid fields, a skewed clock."""
    out: list[str] = []
    if layout_raw:
        try:
            LayoutRecord.from_hash(layout_raw, key=keys.layout)
        except RecordError as exc:
            out.append(str(exc))
    for host in hosts:
        if host.invalid:
            out.append(f"host {host.id}: {keys.host(host.id)} has invalid {', '.join(host.invalid)} "
                       "(not a finite number or not the expected JSON; shown as unknown)")
        skew = clock_skew_text(host.id, host.clock_offset)
        if skew is not None:
            out.append(skew)
    return out


def _shard_rows(cid: int, raw: dict[str, Any], running: bool, now: float) -> list[ShardRow]:
    rows = []
    for key, value in raw.items():
        data = _json(value) if isinstance(value, str) else value
        if not isinstance(data, dict) or not str(key).isdigit():
            continue
        rows.append(ShardRow(int(key), cid, str(data.get("status", "?")) if running else "down",
                             _float(data.get("latency")), _int(data.get("guilds")),
                             _float(data.get("last_event_age")), _age(now, _float(data.get("ts")))))
    rows.sort(key=lambda r: r.id)
    return rows


_LISTED: dict[str, tuple[int, ...] | None] = {}


def _listed_shards(text: Any) -> tuple[int, ...] | None:
    """A status hash's ``shard_ids`` JSON list (None when absent or malformed), memoised: the same few
    thousand texts come back on every read of a dashboard."""
    if not isinstance(text, str):
        return None
    if text in _LISTED:
        return _LISTED[text]
    listed = _json(text)
    try:
        ids = tuple(int(i) for i in listed) if isinstance(listed, list) else None
    except (TypeError, ValueError, OverflowError):
        ids = None
    if len(_LISTED) >= 8192:
        _LISTED.clear()
    _LISTED[text] = ids
    return ids


def _cluster_row(cid: int, grant: Grant | None, status: dict[str, str], shards_raw: dict[str, Any] | int,
                 layout: LayoutRecord | None, now: float) -> ClusterRow:
    """Join one cluster's grant, status and shard reports (a dict of reports, or only their READY count)."""
    host, epoch = (grant.host, grant.epoch) if grant else (None, None)
    state = (status.get("state") or "pending") if host else "unassigned"
    listed = _listed_shards(status.get("shard_ids"))
    ids = list(listed) if listed is not None else list(layout.shards_of(cid)) if layout else []
    interval = layout.heartbeat_interval if layout else 2.0
    beat_age = _age(now, _float(status.get("last_heartbeat")))
    if state in RUNNING_STATES and beat_age is not None and beat_age > STALE_AFTER_INTERVALS * interval:
        state = "stale"
    running = state in RUNNING_STATES
    shards = _shard_rows(cid, shards_raw, running, now) if isinstance(shards_raw, dict) else []
    if not running:
        ready = 0
    elif isinstance(shards_raw, int):
        ready = shards_raw
    else:
        ready = sum(1 for s in shards if s.status == "ready")
    started = _float(status.get("started_at"))
    next_restart = _float(status.get("next_restart_at"))
    error = str(status.get("last_error") or "")
    return ClusterRow(
        id=cid, host=host, epoch=epoch, state=state,
        shard_range=status.get("shard_range") or format_range(ids), shard_ids=ids,
        pid=_int(status.get("pid")), restarts=_int(status.get("restarts")) or 0,
        uptime=_age(now, started) if running else None,
        cpu_percent=_float(status.get("cpu_percent")), rss=_int(status.get("rss")),
        pss=_int(status.get("pss")) or None, uss=_int(status.get("uss")) or None,
        guilds=_int(status.get("guilds")), latency=_float(status.get("latency")),
        heartbeat_age=beat_age,
        heartbeat_colour=heartbeat_colour(beat_age, interval) if running else "red",
        last_error=error.splitlines()[0] if error else "",
        reason=str(status.get("reason") or ""), exit_code=_int(status.get("exit_code")),
        next_restart_in=None if next_restart is None else max(0.0, next_restart - now),
        shards_ready=ready, log_errors=_int(status.get("log_errors")) or 0, shards=shards,
    )


async def read_snapshot(redis: aioredis.Redis, keys: Keys, *, now: float | None = None,
                        events: int = 200, events_after: str | None = None, shards: bool = False) -> Snapshot:
    """Read the deployment in two rounds of pipelined requests; raises ``RedisError``/``OSError`` when unreachable.

    ``now`` (epoch seconds, default the wall clock) is the instant ages are computed against; ``events`` how
    many of the newest events to load (errors of the last 10 minutes are counted among them); ``shards``
    also builds every :class:`ShardRow` (otherwise only the READY counts, much cheaper at 16,000 shards).
    ``events_after`` (a stream id) loads only newer events: a dashboard keeps its own history and counts its
    errors with :func:`count_errors`.
    """
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.layout)
    pipe.smembers(keys.hosts)
    pipe.get(keys.leader)
    pipe.hgetall(keys.broker)
    pipe.xrevrange(keys.events, min=f"({events_after}" if events_after else "-", count=events)
    pipe.hgetall(keys.identify("budget"))
    pipe.hgetall(keys.handover)
    (layout_raw, members, leader_id, broker, entries, budget_raw, handover_raw), grants = await asyncio.gather(
        pipe.execute(), read_assignment(redis, keys))
    layout = LayoutRecord.for_display(layout_raw or {})

    cluster_ids = sorted(set(layout.cluster_ids if layout else ()) | grants.keys())
    host_ids = set(members or ())
    host_ids.update(grant.host for grant in grants.values() if grant)
    handovers, handover_problems = HandoverRecord.parse_all(handover_raw or {}, key=keys.handover)
    host_ids.update(r.host for r in handovers.values())
    hosts_sorted = sorted(host_ids)

    pipe = redis.pipeline(transaction=False)
    buckets = layout.max_concurrency if layout else 0
    for bucket in range(buckets):
        pipe.zcard(keys.identify(f"queue:{bucket}"))
    depths, host_data, packed = await asyncio.gather(
        pipe.execute(), read_hosts(redis, keys, hosts_sorted), read_clusters(redis, keys, cluster_ids, shards))

    by_host: dict[str, list[int]] = {h: [] for h in hosts_sorted}
    for cid, grant in sorted(grants.items()):
        if grant and grant.host in by_host:
            by_host[grant.host].append(cid)
    hosts = [_host_row(h, data, pttl, layout, by_host[h], now)
             for h, (data, pttl) in zip(hosts_sorted, host_data, strict=True)]
    # a host's timestamps are read on its own clock: ``now`` there is ``now + its offset to Redis TIME``
    offsets = {h.id: h.clock_offset for h in hosts if h.clock_offset is not None}
    depth = sum(int(n or 0) for n in depths)
    clusters = [_cluster_row(cid, grants.get(cid), status, shard_map, layout,
                             now + offsets.get(_host_of(grants.get(cid)), 0.0))
                for cid, (status, shard_map) in zip(cluster_ids, packed, strict=True)]
    reports = {h: _successor_reports(h, data) for h, (data, _) in zip(hosts_sorted, host_data, strict=True)}
    for row, (status, _) in zip(clusters, packed, strict=True):
        record = handovers.get(row.id)
        if record is not None:
            row.handover = _handover_info(record, status, reports.get(record.host, {}).get(row.id), now)

    event_list = [Event.from_stream(str(eid), dict(data)) for eid, data in entries or []]
    errors = count_errors(event_list, now)
    broker = broker or {}
    standbys = _json(broker.get("standbys"))
    leader = LeaderInfo(
        id=leader_id, state=broker.get("state") if leader_id else None,
        since=_float(broker.get("since")), heartbeat_age=_age(now, _float(broker.get("heartbeat_at"))),
        identify_depth=_int(broker.get("identify_depth")),
        standbys=[str(s) for s in standbys] if isinstance(standbys, list) else [],
        operation=_operation(broker.get(OPERATION_FIELD)) if leader_id else None,
    )
    warnings = _warnings(keys, layout_raw or {}, hosts) + [str(problem) for problem in handover_problems]
    return Snapshot(keys.ns, now, layout, leader, hosts, clusters, event_list, depth, errors, _budget(budget_raw),
                    warnings)


def _successor_reports(host_id: str, data: dict[str, str]) -> dict[int, SuccessorReport]:
    """A host record's successor reports (none when the field is unreadable: its row lists it as invalid)."""
    try:
        return parse_successors(data.get(SUCCESSORS_FIELD), key=f"host {host_id}")
    except RecordError:
        return {}


def _operation(raw: Any) -> dict[str, Any] | None:
    """The broker's ``operation`` field as a JSON object (None when absent or unreadable)."""
    value = _json(raw)
    return value if isinstance(value, dict) else None


def _budget(raw: dict[str, str] | None) -> dict[str, float] | None:
    """The identify budget hash as numbers, or None when nobody has fetched it from Discord yet."""
    values = {name: _float((raw or {}).get(name)) for name in ("total", "remaining", "reset_at")}
    if values["total"] is None or values["remaining"] is None:
        return None
    return {name: value for name, value in values.items() if value is not None}


# ------------------------------------------------------------------------------------------ cluster detail


@dataclass(slots=True)
class ClusterDetail:
    """One cluster in depth: its row, shards, recent errors, restart history and metric samples."""

    cluster: ClusterRow
    errors: list[dict[str, Any]]
    restarts: list[dict[str, Any]]
    metrics: list[dict[str, Any]]

    @property
    def cpu_series(self) -> list[float]:
        """CPU % samples, oldest first."""
        return [_float(m.get("cpu")) or 0.0 for m in reversed(self.metrics)]

    @property
    def rss_series(self) -> list[float]:
        """RSS samples in bytes, oldest first."""
        return [_float(m.get("rss")) or 0.0 for m in reversed(self.metrics)]


def _json_list(items: list[str] | None) -> list[dict[str, Any]]:
    parsed = (_json(item) for item in items or [])
    return [item for item in parsed if isinstance(item, dict)]


async def read_cluster_detail(redis: aioredis.Redis, keys: Keys, cluster_id: int, *,
                              now: float | None = None) -> ClusterDetail:
    """Read one cluster's status, shards, errors (newest first), restarts and metrics in one round trip."""
    now = time.time() if now is None else now
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(keys.layout)
    pipe.hget(keys.assignment, str(cluster_id))
    pipe.hgetall(keys.cluster_status(cluster_id))
    pipe.hgetall(keys.shard_status(cluster_id))
    pipe.lrange(keys.cluster_errors(cluster_id), 0, 19)
    pipe.lrange(keys.cluster_restarts(cluster_id), 0, 49)
    pipe.lrange(keys.cluster_metrics(cluster_id), 0, 119)
    pipe.hget(keys.handover, str(cluster_id))
    layout_raw, grant_raw, status, shards, errors, restarts, metrics, handover_raw = await pipe.execute()
    layout = LayoutRecord.for_display(layout_raw or {})
    row = _cluster_row(cluster_id, _grant(grant_raw, keys, cluster_id), status or {}, shards or {}, layout, now)
    if handover_raw:
        try:
            record = HandoverRecord.from_json(cluster_id, handover_raw, key=keys.handover)
        except RecordError:
            record = None
        if record is not None:
            raw_reports = await redis.hget(keys.host(record.host), SUCCESSORS_FIELD)  # type: ignore[misc]
            report = _successor_reports(record.host, {SUCCESSORS_FIELD: str(raw_reports)} if raw_reports else {})
            row.handover = _handover_info(record, status or {}, report.get(cluster_id), now)
    return ClusterDetail(row, _json_list(errors), _json_list(restarts), _json_list(metrics))
