"""The leader's reconcile step: from one Redis snapshot to fenced grants, revokes, moves and events.

One :class:`Reconciler` lives for one leadership term. Each tick it judges membership, settles pending moves and
handovers, adopts claims, waits for hosts on a cold start, executes :func:`plan_assignment`, then starts the
operator's restarts and at most one planned move (drain or a leaving host first, then rebalance). Decisions come
from the pure modules (``assignment``, ``membership``, ``moves``, ``handovers``); this class only executes them
and reports every decision as an event.

A planned move to (or restart on) a host whose supervisor takes part in handovers (its record has a
``successors`` field) is a **handover** (:mod:`letsfrag.contract.handover`): the successor starts beside the running
process and the assignment switches to it once it is ready. A move to an older supervisor, and every unplanned
change (a lost host, a cluster over capacity), still revokes first and grants after the stop.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from letsfrag.clock import Clock
from letsfrag.config import BrokerConfig
from letsfrag.contract.handover import HANDOFF_BLOCKED_FIELD, OPERATION_FIELD, HandoverReason, HandoverRecord
from letsfrag.contract.records import Grant, LayoutRecord
from letsfrag.contract.reshard import ReshardRecord, ReshardState, retired_cluster_keys
from letsfrag.contract.states import BrokerState, HostRecordState
from letsfrag.errors import RecordError
from letsfrag.events import Severity

from .assignment import plan_assignment, plan_rebalance_step
from .handovers import HandoverAction, HandoverBook, budget_refusal, slot_refusal
from .membership import HostObservation, HostVerdict, Membership, Transition
from .moves import HostFacts, Move, Moves, pick_drain_move, planning_views
from .reshard_plan import (
    BudgetView,
    CurrentLayout,
    HostRoom,
    ReshardAction,
    ReshardPlan,
    ReshardRefusal,
    auto_reshard_reason,
    decide_reshard,
    new_layout,
    old_running,
    place,
    plan_reshard,
    ready_clusters,
    sharding_target,
)
from .store import BrokerSnapshot, HostRecord, Store

__all__ = ["Outcome", "Reconciler"]

log = logging.getLogger(__name__)

EventSink = Callable[..., Awaitable[None]]  # (severity, kind, message, **context)
Fire = Callable[..., None]  # (callback name, *args)
Notify = Callable[[set[str]], Awaitable[None]]  # hosts whose grants changed


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of an operator's restart request (``serial``) of ``cluster``.

    ``state``: ``started``, ``switched``, ``done``, ``rolled_back``, ``refused`` (a gate said no: ``message``
    names the numbers) or ``fallback`` (the cluster's host cannot hand over: restart it through the host)."""

    serial: int
    cluster: int
    state: str
    message: str
    epoch: int = 0
    host: str = ""
    seconds: float = 0.0

    @property
    def final(self) -> bool:
        """The request's command can answer (a switch is final: there is no rollback after it)."""
        return self.state in ("switched", "done", "rolled_back", "refused", "fallback")


class Reconciler:
    """Executes the broker's decisions while this broker is the leader.

    ``handover_timeout``: seconds a successor has to become ready before the handover is rolled back."""

    def __init__(self, config: BrokerConfig, layout: LayoutRecord, store: Store, *, event: EventSink, fire: Fire,
                 notify: Notify, move_timeout: float, clock: Clock, handover_timeout: float = 120.0) -> None:
        self.config = config
        self.clock = clock
        self.now = clock.monotonic()
        self.layout = layout
        #: the shard count and cluster size of this broker's config (the live layout may be a reshard's)
        self.configured_shards = layout.shard_count
        self._configured_per = layout.shards_per_cluster
        self.store = store
        self._event = event
        self._fire = fire
        self._notify = notify
        max_gap = max(config.lease.grace, 3 * config.heartbeat_interval)
        self.membership = Membership(config.lease.grace, max_gap=max_gap)
        self.moves = Moves(move_timeout)
        self.handovers = HandoverBook()
        self.handover_timeout = handover_timeout
        #: operator restarts waiting for the next tick: cluster -> (reason, serial)
        self.requests: dict[int, tuple[HandoverReason, int]] = {}
        #: the latest outcome of each operator request, by serial
        self.outcomes: dict[int, Outcome] = {}
        self._origin: dict[int, int] = {}  # cluster -> serial of the request whose handover runs
        self._serial = 0
        #: the rolling restart in progress (``{ns}:broker`` field ``operation``), or None
        self.operation: dict[str, object] | None = None
        self._rolling_clusters: list[int] = []
        self._rolling_serial = 0
        self.handoff_blocked: set[str] = set()
        #: draining/leaving hosts whose handover rolled back: not retried until the next drain command
        self.drain_failed: set[str] = set()
        self.budget_total: int | None = None
        self.budget_remaining: int | None = None
        self._refused_reported: set[str] = set()
        self.state = BrokerState.STARTING
        self.assignment: dict[int, Grant] = {}
        self.hosts: dict[str, HostRecord] = {}
        self.draining: set[str] = set()
        self.leave_signals: dict[str, str | None] = {}
        self.rebalance_requested = False
        self.rebalance_blocked = False
        self.drain_blocked: set[str] = set()
        #: why a draining host is blocked, when it is not "no other host has room"
        self.drain_why: dict[str, str] = {}
        self.ready = False
        self.max_epoch = 0
        self.identify_depth = 0
        self._startup_deadline: float | None = None
        self._startup_floor = 0.0
        self._reported_unassigned: set[int] = set()
        self._reported_values: set[str] = set()
        #: the startup wait is for claims of running clusters (Redis lost its data): the layout says
        #: ``adopting``, so a cluster missing from the assignment holds its events instead of fencing
        self._adopting = False
        self._changed = False
        #: the reshard in progress (``{ns}:reshard`` as read this tick), None when none
        self.reshard: ReshardRecord | None = None
        #: since when (Redis ``TIME``) no live host runs a cluster of the generation being retired
        self._retired_since: float | None = None
        #: what became of each operator reshard request, by serial: ``state`` (queued, refused, preparing,
        #: switched, done, rolled_back), ``message``, ``plan`` (its reply dict), ``steps`` (the progress lines),
        #: ``cluster`` (the one to blame)
        self.reshards: dict[int, dict[str, object]] = {}
        #: reshard requests waiting for the next tick: serial -> (plan arguments, timeout)
        self._reshard_requests: dict[int, tuple[dict[str, object], float]] = {}
        self._reshard_serial: dict[int, int] = {}  # generation -> serial of the request that started it
        self._reshard_progress = ""
        #: the shard count ``/gateway/bot`` recommends (set by the broker; ``None``: unknown)
        self.recommended: Callable[[], int | None] = lambda: None
        #: the generation a 4011 already started a reshard of (once per generation)
        self._sharding_generation = 0
        #: monotonic time of the next automatic-reshard check (``reshard.auto``)
        self._next_auto_check = self.now + float(config.reshard.check_interval)

    # term ---------------------------------------------------------------------------------------------

    async def begin_term(self, now: float, snap: BrokerSnapshot) -> None:
        """A new leadership term: forget timers and moves, write the layout, cold-start wait if needed."""
        self.membership.reset()
        self.moves.clear()
        self._adopting = False
        if not snap.assignment:
            self._cold_start(now, snap)
        await self._keep_stored_geometry(snap)
        await self._write_layout()
        self.handovers.load(snap.handovers)
        if self.handovers:
            await self._event(Severity.INFO, "handover_continued",
                              f"continuing {len(self.handovers)} handover(s) found in Redis: "
                              f"{sorted(self.handovers.records)}")
        # an operator's rolling restart belonged to the previous leader's command: it ends with it
        await self.store.fenced("HDEL", self.store.keys.broker, OPERATION_FIELD)
        self.operation = None
        self.state = BrokerState.WAITING_FOR_HOSTS if self._startup_deadline is not None else BrokerState.RUNNING

    def _cold_start(self, now: float, snap: BrokerSnapshot) -> None:
        """No assignment: wait for ``hosts.expected`` hosts (at most ``startup_grace``). When hosts still claim
        clusters (Redis lost its data) wait at least one lease ttl, so every live claimant re-registers and is
        adopted before anything is granted anew."""
        self._startup_deadline = now + self.config.hosts.startup_grace
        self._startup_floor = 0.0
        if self.ready or any(r.running for r in snap.hosts.values()):
            self._startup_floor = now + self.config.lease.ttl
            self._startup_deadline = max(self._startup_deadline, self._startup_floor)
            self._adopting = True

    async def _keep_stored_geometry(self, snap: BrokerSnapshot) -> None:
        """A running deployment (clusters assigned, or a later generation) keeps the stored layout's geometry:
        changing the shard count is a reshard, never a silent restart (see :mod:`letsfrag.contract.reshard`). When this
        broker's config names another count than the config the stored layout was written from, a reshard to it
        is queued for when every cluster is assigned; the same count as then keeps a reshard's count."""
        try:
            stored = LayoutRecord.from_hash(snap.layout, key=self.store.keys.layout) if snap.layout else None
        except RecordError:
            return
        if stored is None or not (snap.assignment or stored.generation > 1):
            return
        configured, key = self.configured_shards, self.store.keys.layout
        self.layout = dataclasses.replace(
            self.layout, generation=stored.generation, cluster_base=stored.cluster_base,
            shard_count=stored.shard_count, shards_per_cluster=stored.shards_per_cluster,
            cluster_count=stored.cluster_count)
        if self._configured_per != stored.shards_per_cluster:
            await self._event(Severity.ERROR, "layout_generation_kept",
                              f"{key} has clusters of {stored.shards_per_cluster} shards, the config "
                              f"{self._configured_per}: keeping {stored.shards_per_cluster} (a reshard keeps the "
                              "cluster size; change it with a cold start)")
            return
        if configured == stored.shard_count:
            return
        if self.config.shards == "auto" or configured == stored.configured_shards:
            await self._event(Severity.WARNING, "layout_generation_kept",
                              f"{key} is generation {stored.generation} with {stored.shard_count} shards; keeping it "
                              f"(the config's {configured} shards are what it was resharded from: use `letsfrag "
                              "reshard` to change the shard count)")
            return
        if any(s.get("from_config") for s in self.reshards.values() if s.get("state") == "queued"):
            return  # a new term of the same broker: already queued
        serial = self.request_reshard(self.handover_timeout, shards=configured, recommended=None,
                                      use_recommended=False)
        self.reshards[serial]["from_config"] = True
        await self._event(Severity.INFO, "reshard_from_config",
                          f"the config says {configured} shards, {key} has {stored.shard_count} (generation "
                          f"{stored.generation}, written from a config of {stored.configured_shards}): resharding "
                          f"to {configured} once every cluster is assigned")

    def layout_record(self) -> LayoutRecord:
        """The ``{ns}:layout`` record of this broker (the one every host must use): its config's, or the live
        generation's geometry of a resharded deployment, with the config's shard count in ``config_shards``."""
        return dataclasses.replace(self.layout, config_shards=self.configured_shards, updated_at=self.clock.time())

    async def _write_layout(self) -> None:
        fields = dict(self.layout_record().to_hash())
        if self._adopting:
            fields["adopting"] = "1"
        else:
            await self.store.fenced("HDEL", self.store.keys.layout, "adopting")
        await self.store.hset(self.store.keys.layout, fields)

    async def _check_values(self, snap: BrokerSnapshot) -> None:
        """The layout is this broker's: a changed or invalid one is rewritten at once; an epoch that is no
        number is raised back above every epoch seen; other bad values are reported once each."""
        keys = self.store.keys
        problem = snap.layout_problem(self.layout_record(), keys.layout)
        if problem is not None:
            await self._event(Severity.ERROR, "layout_repaired", f"{problem}; rewritten from the broker's config",
                              key=keys.layout)
            await self._write_layout()
        for p in snap.problems:
            if p.key == keys.epoch:
                floor = self._epoch_floor(snap)
                await self.store.raise_epoch(floor)
                await self._event(Severity.ERROR, "epoch_repaired",
                                  f"{p}; rewritten to {floor} (the highest epoch in the assignment and the host "
                                  "records)", key=keys.epoch)
        if snap.handover_invalid:
            # the leader's own key: an unreadable record would block that cluster's handovers for good, and no
            # supervisor acts on it; deleting it is a rollback (or, after a switch, the end) of that handover
            await self.store.fenced("HDEL", keys.handover, *snap.handover_invalid)
            await self._event(Severity.ERROR, "handover_repaired",
                              f"{keys.handover}: deleted unreadable field(s) {snap.handover_invalid}",
                              key=keys.handover)
        current = {str(p) for p in snap.problems if p.key not in (keys.epoch, keys.handover)}
        for p in snap.problems:
            if p.key not in (keys.epoch, keys.handover) and str(p) not in self._reported_values:
                await self._event(Severity.ERROR, "redis_value_invalid", f"{p}; the value is ignored",
                                  key=p.key, field=p.field)
        self._reported_values = current

    # one tick -----------------------------------------------------------------------------------------

    async def step(self, now: float, snap: BrokerSnapshot) -> bool:
        """Reconcile once; return True when something changed (for the dashboards' doorbell)."""
        self._changed = False
        self.now = now
        self.hosts = snap.hosts
        self.identify_depth = snap.identify_depth
        self.budget_total, self.budget_remaining = snap.budget_total, snap.budget_remaining
        if not snap.layout_present:
            await self._event(Severity.WARNING, "redis_data_lost",
                              "the layout key is gone (Redis lost its data?): rewriting it and re-adopting claims")
            self.membership.reset()
            self.moves.clear()
            if not snap.assignment:
                self._cold_start(now, snap)
            await self._write_layout()
        await self._check_values(snap)
        await self._keep_epoch(snap)
        self.assignment = dict(snap.assignment)
        verdicts = await self._judge(now, snap)
        alive = {h: v.alive for h, v in verdicts.items()}
        facts = {h: HostFacts(alive.get(h, False), r.running, r.successors) for h, r in snap.hosts.items()}
        await self._settle_moves(now, facts, alive)
        await self._settle_handovers(snap, facts)
        await self._settle_reshard(snap, facts)
        await self._adopt(snap, verdicts)
        if self._startup_deadline is not None:
            up = sum(1 for v in verdicts.values() if v is HostVerdict.UP)
            complete = all(c in self.assignment for c in self.layout.cluster_ids)  # e.g. everything adopted
            waiting = up < self.config.hosts.expected or now < self._startup_floor
            if waiting and now < self._startup_deadline and not complete:
                self.state = BrokerState.WAITING_FOR_HOSTS
                return self._changed
            self._startup_deadline = None
            self.state = BrokerState.RUNNING
            if self._adopting:
                self._adopting = False
                await self.store.fenced("HDEL", self.store.keys.layout, "adopting")
            await self._event(Severity.INFO, "startup", f"assigning clusters with {up} host(s) up")
        changed = await self._plan(snap, verdicts, alive)
        await self._react_to_4011(snap, alive)
        await self._check_auto_reshard()
        await self._start_reshards()
        await self._advance_operation()
        await self._start_requests(snap, alive)
        if not changed:
            await self._start_move(now, snap, verdicts, alive)
        await self._forget_left(verdicts)
        await self._check_ready()
        return self._changed

    def _epoch_floor(self, snap: BrokerSnapshot) -> int:
        seen = [g.epoch for g in snap.assignment.values()]
        seen += [e for h in snap.hosts.values() for e in h.running.values()]
        seen += [e for r in snap.handovers.values() for e in (r.epoch, r.from_epoch)]
        seen += [r.epoch for h in snap.hosts.values() for r in h.successors.values()]
        return max([self.max_epoch, *seen])

    async def _keep_epoch(self, snap: BrokerSnapshot) -> None:
        floor = self._epoch_floor(snap)
        if snap.epoch < floor and not snap.epoch_invalid:
            await self.store.raise_epoch(floor)
        self.max_epoch = max(floor, snap.epoch)

    # membership ---------------------------------------------------------------------------------------

    async def _judge(self, now: float, snap: BrokerSnapshot) -> dict[str, HostVerdict]:
        for host_id, signal in list(self.leave_signals.items()):
            record = snap.hosts.get(host_id)
            if record is None:
                del self.leave_signals[host_id]
            elif signal is None:
                self.leave_signals[host_id] = record.incarnation
            elif signal != record.incarnation:
                del self.leave_signals[host_id]  # it registered again
        observed = {h: self._observation(h, r) for h, r in snap.hosts.items()}
        for change in self.membership.observe(now, observed):
            await self._on_transition(change, snap)
        return dict(self.membership.verdicts)

    def _observation(self, host: str, record: HostRecord) -> HostObservation:
        """A host that takes part in handovers and said ``host_leave`` while its lease is valid is *leaving*
        (its clusters are handed to other hosts first); once its lease is gone it has left."""
        said = host in self.leave_signals
        if said and record.handovers and record.lease is not None:
            return HostObservation(lease=True, state=HostRecordState.LEAVING)
        return HostObservation(lease=record.lease is not None, state=record.state, said_leave=said)

    async def _on_transition(self, change: Transition, snap: BrokerSnapshot) -> None:
        host, before, after = change.host, change.before, change.after
        record = snap.hosts[host]
        self._changed = True
        if after in (HostVerdict.UP, HostVerdict.LEAVING) and before in (None, HostVerdict.LOST, HostVerdict.LEFT):
            self.rebalance_blocked = False
            self.handoff_blocked.discard(host)
            if record.handovers:  # a new run of its supervisor: a refusal of the previous run no longer holds
                await self.store.fenced("HDEL", self.store.keys.host(host), HANDOFF_BLOCKED_FIELD)
            await self._event(Severity.INFO, "host_joined",
                              f"host {host} is up (capacity {record.capacity})", host=host)
            self._fire("connect", host)
        elif after is HostVerdict.LEAVING:
            await self._event(Severity.INFO, "host_leaving", f"host {host} is leaving", host=host)
        elif after is HostVerdict.LATE:
            log.info("host %r: lease missing, waiting %.1fs grace before reassigning", host, self.config.lease.grace)
        elif after is HostVerdict.LOST:
            if record.state != HostRecordState.LOST:
                await self.store.hset(self.store.keys.host(host), {"state": HostRecordState.LOST})
            held = sorted(c for c, g in self.assignment.items() if g.host == host)
            await self._event(Severity.ERROR, "host_lost",
                              f"host {host} lost: its lease expired {self.config.lease.grace:g}s ago; "
                              f"moving its clusters {held}", host=host)
            self._fire("disconnect", host, "lease expired")
        elif after is HostVerdict.LEFT:
            await self._event(Severity.INFO, "host_left", f"host {host} left cleanly", host=host)
            self._fire("disconnect", host, "left")

    async def _forget_left(self, verdicts: dict[str, HostVerdict]) -> None:
        for host, verdict in verdicts.items():
            holds = any(g.host == host for g in self.assignment.values())
            if verdict is HostVerdict.LEFT and not holds:
                await self.store.fenced("SREM", self.store.keys.hosts, host)
                self.leave_signals.pop(host, None)
                self.draining.discard(host)

    # moves ---------------------------------------------------------------------------------------------

    def _frozen(self, verdicts: dict[str, HostVerdict]) -> set[str]:
        drain = {h for h, r in self.hosts.items() if r.state == HostRecordState.DRAINING} | self.draining
        return {h for h in drain if h in self.hosts} | {h for h, v in verdicts.items() if v is HostVerdict.LEAVING}

    async def _settle_moves(self, now: float, facts: dict[str, HostFacts], alive: dict[str, bool]) -> None:
        done, expired = self.moves.settle(now, facts)
        for move in done:
            target = move.target
            if target is not None and self._has_room(target, alive) and move.cluster not in self.assignment:
                await self._grant([(move.cluster, target)], kind="cluster_moved", source=move.source,
                                  why=move.reason)
            else:
                await self._event(Severity.INFO, "move_released",
                                  f"cluster {move.cluster} stopped on {move.source}; the planner places it",
                                  cluster=move.cluster, host=move.source)
        for move in expired:
            self.rebalance_blocked = True
            await self._event(Severity.ERROR, "move_timeout",
                              f"host {move.source} did not confirm stopping cluster {move.cluster} within "
                              f"{self.moves.timeout:g}s; {move.reason} move given up, cluster returned to it",
                              cluster=move.cluster, host=move.source)
            if move.cluster not in self.assignment:
                await self._grant([(move.cluster, move.source)], kind="cluster_granted", why="move given up")

    def _has_room(self, host: str, alive: dict[str, bool]) -> bool:
        record = self.hosts.get(host)
        if record is None or not alive.get(host) or host in self._frozen(self.membership.verdicts):
            return False
        held = sum(1 for g in self.assignment.values() if g.host == host)
        held += sum(1 for m in self.moves.pending.values() if m.source == host)
        return bool(held < record.capacity)

    def _current(self) -> dict[int, str | None]:
        current: dict[int, str | None] = {c: g.host for c, g in self.assignment.items()}
        for cluster, move in self.moves.pending.items():
            current[cluster] = move.source
        return current

    def _planned(self) -> dict[int, str | None]:
        """:meth:`_current` with every preparing handover counted at its target (where it is going)."""
        current = self._current()
        for record in self.handovers.preparing():
            current[record.cluster] = record.host
        return current

    def _held(self, host: str) -> int:
        return sum(1 for h in self._planned().values() if h == host)

    async def _start_move(self, now: float, snap: BrokerSnapshot, verdicts: dict[str, HostVerdict],
                          alive: dict[str, bool]) -> None:
        """At most one planned move: out of a draining or leaving host first, else a rebalance step. To a host
        that takes part in handovers it is a handover (one per target at a time), else revoke-then-grant (one
        at a time)."""
        if self.moves.pending or self.reshard is not None:
            return  # an older supervisor's move waits alone, as it always did; a reshard too
        current = self._planned()
        frozen = self._frozen(verdicts)
        capacities = {h: r.capacity for h, r in snap.hosts.items()}
        draining = sorted(h for h in frozen if any(v == h for v in current.values()))
        busy = {r.host for r in self.handovers.preparing()}
        move: tuple[int, str, str] | None = None
        reason = "drain"
        if draining:
            eligible = {h for h, ok in alive.items() if ok and h not in frozen}
            retry = [h for h in draining if h not in self.drain_failed]
            move = pick_drain_move(retry, capacities, eligible - busy, current) if retry else None
            if move is None and pick_drain_move(draining, capacities, eligible, current) is None:
                for host in set(draining) - self.drain_blocked:
                    await self._event(Severity.ERROR, "drain_blocked",
                                      f"cannot drain host {host}: no other host has room", host=host)
                    await self._block_leaving(host, f"no other host has room for the clusters of {host}")
                self.drain_blocked |= set(draining)
            if move is not None and self._move_blocked(move):
                return
        if move is None and not self.handovers and (
                self.rebalance_requested or (self.config.rebalance == "on-join" and not self.rebalance_blocked)):
            reason = "rebalance"
            views = planning_views(capacities, alive, frozen, current)
            move = plan_rebalance_step(self.layout.cluster_ids, views, current)
            if move is None and self.rebalance_requested:
                self.rebalance_requested = False
                await self._event(Severity.INFO, "rebalance_done", "clusters are balanced")
        if move is None:
            return
        cluster, source, target = move
        if reason == "drain" and verdicts.get(source) is HostVerdict.LEAVING:
            reason = "leave"
        target_record = self.hosts.get(target)
        if target_record is not None and target_record.handovers:
            await self._begin_planned(cluster, source, target, reason)
            return
        if self.handovers:
            return  # an older supervisor's move waits for every other move to finish
        grant = self.assignment.pop(cluster)
        await self.store.revoke([cluster])
        self.moves.begin(Move(cluster, source, target, reason, now, grant.epoch))
        self._changed = True
        kind = "drain" if reason in ("drain", "leave") else "rebalance_step"
        await self._event(Severity.INFO, kind, f"{reason}: moving cluster {cluster} from {source} to {target} "
                          "(revoked; waiting for it to stop)", cluster=cluster, host=source, to=target)
        self._fire("assign", cluster, None, grant.epoch)
        await self._notify({source})

    def _move_blocked(self, move: tuple[int, str, str]) -> bool:
        """A drain/leave move already refused by the identify budget (reported once, retried when it changes)."""
        return f"budget:{move[0]}" in self._refused_reported and self._budget_refusal(move[0]) is not None

    async def _block_leaving(self, host: str, sentence: str) -> None:
        """A leaving host's clusters can go nowhere: tell its supervisor (``handoff_blocked``) and the stream."""
        if self.membership.verdicts.get(host) is not HostVerdict.LEAVING or host in self.handoff_blocked:
            return
        self.handoff_blocked.add(host)
        await self.store.hset(self.store.keys.host(host), {HANDOFF_BLOCKED_FIELD: sentence})
        await self._event(Severity.ERROR, "handoff_blocked",
                          f"host {host} is leaving but its clusters cannot be handed over: {sentence}; "
                          "it stops them itself (lossy)", host=host)

    def _budget_refusal(self, cluster: int) -> str | None:
        shards = len(self.layout.shards_of(cluster))
        return budget_refusal(cluster, shards, total=self.budget_total, remaining=self.budget_remaining,
                              reserve_fraction=float(self.config.identify_reserve))

    def _refusal(self, cluster: int, target: str, *, in_place: bool) -> str | None:
        """Why a handover of ``cluster`` to ``target`` must not start now (one sentence with the numbers)."""
        record = self.hosts.get(target)
        capacity = record.capacity if record is not None else 0
        refused = slot_refusal(cluster, target, capacity=capacity, held=self._held(target), in_place=in_place,
                               busy=self.handovers.targeting(target))
        return refused or self._budget_refusal(cluster)

    async def _begin_planned(self, cluster: int, source: str, target: str, reason: str) -> None:
        refused = self._refusal(cluster, target, in_place=False)
        if refused is not None:
            key = f"budget:{cluster}" if "identify budget" in refused else f"slot:{cluster}:{target}"
            if key not in self._refused_reported:
                self._refused_reported.add(key)
                await self._event(Severity.WARNING, "handover_refused", f"{reason} of cluster {cluster}: {refused}",
                                  cluster=cluster, host=source, to=target)
            if reason == "leave":
                await self._block_leaving(source, refused)
            if reason in ("drain", "leave"):
                self.drain_blocked.add(source)
                self.drain_why[source] = refused
            elif reason == "rebalance":
                self.rebalance_requested = False
                self.rebalance_blocked = True
            return
        await self._begin(cluster, target, HandoverReason(reason), serial=0)

    async def _begin(self, cluster: int, target: str, reason: HandoverReason, *, serial: int) -> HandoverRecord | None:
        """Write the ``preparing`` record (fenced) and ring the target; ``None`` when the assignment changed."""
        grant = self.assignment.get(cluster)
        if grant is None:
            return None
        record = await self.store.begin_handover(cluster, target, grant, str(reason), self.handover_timeout,
                                                 self.max_epoch)
        if record is None:
            return None
        self.handovers.put(record)
        self.max_epoch = max(self.max_epoch, record.epoch)
        self._changed = True
        if serial:
            self._origin[cluster] = serial
        where = "in place" if target == grant.host else f"from {grant.host} to {target}"
        await self._event(Severity.INFO, "handover_started",
                          f"{reason}: handing cluster {cluster} over {where} (epoch {grant.epoch} -> {record.epoch}, "
                          f"ready within {self.handover_timeout:g}s)", cluster=cluster, host=grant.host, to=target,
                          epoch=record.epoch, reason=str(reason))
        await self._notify({target})
        return record

    async def _settle_handovers(self, snap: BrokerSnapshot, facts: dict[str, HostFacts]) -> None:
        """Switch, finish or roll back the records of ``{ns}:handover`` (as read this tick)."""
        self.handovers.load(snap.handovers)
        assigned = {c: (g.host, g.epoch) for c, g in self.assignment.items()}
        for step in self.handovers.steps(snap.time, facts, assigned):
            record = step.record
            if step.action is HandoverAction.SWITCH:
                switched = await self.store.switch_handover(record, self.moves.timeout)
                if switched is None:
                    await self._end(record, snap.time, "rolled_back", "the switch was refused: the assignment or "
                                    "the record changed")
                    continue
                self.handovers.put(switched)
                self.assignment[record.cluster] = Grant(record.host, record.epoch)
                self._changed = True
                seconds = max(0.0, snap.time - record.started)
                await self._event(Severity.INFO, "handover_switched",
                                  f"cluster {record.cluster} switched to {record.host} (epoch {record.epoch}) "
                                  f"{seconds:.1f}s after the successor started; {record.from_host} stops epoch "
                                  f"{record.from_epoch}", cluster=record.cluster, host=record.host,
                                  epoch=record.epoch, overlap=f"{seconds:.3f}", reason=record.reason)
                self._fire("assign", record.cluster, record.host, record.epoch)
                self._outcome(record, "switched", f"cluster {record.cluster}: switched to {record.host} "
                              f"(epoch {record.epoch}) in {seconds:.1f} s", seconds)
                await self._notify({record.host, record.from_host})
            elif step.action is HandoverAction.ROLLBACK:
                await self._end(record, snap.time, "rolled_back", step.reason)
            else:
                await self._end(record, snap.time, "done", step.reason)

    async def _end(self, record: HandoverRecord, now: float, state: str, reason: str) -> None:
        await self.store.end_handover(record)
        self.handovers.forget(record.cluster)
        self._changed = True
        seconds = max(0.0, now - record.started)
        if state == "done":
            severity = Severity.WARNING if "in time" in reason else Severity.INFO
            await self._event(severity, "handover_done",
                              f"cluster {record.cluster}: handover to {record.host} (epoch {record.epoch}) done: "
                              f"{reason}; {seconds:.1f}s with two processes", cluster=record.cluster,
                              host=record.host, epoch=record.epoch, overlap=f"{seconds:.3f}", reason=record.reason)
            self._outcome(record, "done", f"cluster {record.cluster}: handed over to {record.host} "
                          f"(epoch {record.epoch})", seconds)
        else:
            await self._event(Severity.ERROR, "handover_rolled_back",
                              f"cluster {record.cluster}: handover to {record.host} (epoch {record.epoch}) rolled "
                              f"back: {reason}; {record.from_host} keeps serving it (epoch {record.from_epoch})",
                              cluster=record.cluster, host=record.host, epoch=record.epoch, why=reason,
                              reason=record.reason)
            self._outcome(record, "rolled_back", f"cluster {record.cluster}: rolled back ({reason}); "
                          f"{record.from_host} keeps serving it", seconds)
            if record.reason in ("drain", "leave"):
                self.drain_blocked.add(record.from_host)
                self.drain_failed.add(record.from_host)
                self.drain_why[record.from_host] = f"the handover of cluster {record.cluster} rolled back: {reason}"
                await self._block_leaving(record.from_host, f"the handover of cluster {record.cluster} failed: "
                                          f"{reason}")
            elif record.reason == "rebalance":
                self.rebalance_requested = False
                self.rebalance_blocked = True
        self._origin.pop(record.cluster, None)
        await self._notify({record.host})

    def _outcome(self, record: HandoverRecord, state: str, message: str, seconds: float) -> None:
        serial = self._origin.get(record.cluster)
        if not serial or serial not in self.outcomes:
            return  # no request, or its command has read the outcome already
        previous = self.outcomes.get(serial)
        if state == "done" and previous is not None and previous.state == "switched":
            return  # the command answered at the switch
        self.outcomes[serial] = Outcome(serial, record.cluster, state, message, record.epoch, record.host, seconds)

    # operator restarts -------------------------------------------------------------------------------------

    def request_restart(self, cluster: int, reason: HandoverReason = HandoverReason.RESTART) -> int:
        """Queue a restart in place of ``cluster`` for the next tick; return the serial its outcome carries."""
        self._serial += 1
        if cluster in self.requests:
            self.outcomes[self._serial] = Outcome(self._serial, cluster, "refused",
                                                  f"cluster {cluster}: a restart of it is already queued")
            return self._serial
        self.requests[cluster] = (reason, self._serial)
        self.outcomes[self._serial] = Outcome(self._serial, cluster, "queued", f"cluster {cluster}: queued")
        return self._serial

    async def _start_requests(self, snap: BrokerSnapshot, alive: dict[str, bool]) -> None:
        for cluster, (reason, serial) in sorted(self.requests.items()):
            if self.requests.get(cluster) != (reason, serial):
                continue  # replaced by a newer request while this loop awaited: that one goes next tick
            del self.requests[cluster]
            grant = self.assignment.get(cluster)
            if cluster not in self.layout.cluster_ids:
                self._refuse(serial, cluster, "refused", f"cluster {cluster} is not in the layout "
                             f"(clusters {self.layout.cluster_base}-{self.layout.next_cluster_base - 1})")
                continue
            if grant is None:
                self._refuse(serial, cluster, "refused", f"cluster {cluster} is not assigned to any host")
                continue
            record = self.hosts.get(grant.host)
            if self.reshard is not None:
                self._refuse(serial, cluster, "refused", f"a reshard to generation {self.reshard.generation} is in "
                             "progress; restart once it finished")
                continue
            if cluster in self.handovers:
                busy = self.handovers.records[cluster]
                self._refuse(serial, cluster, "refused", f"cluster {cluster} is already being handed over to "
                             f"{busy.host} (epoch {busy.epoch})")
                continue
            if record is None or not record.handovers or record.running.get(cluster) != grant.epoch:
                why = ("its host does not take part in handovers" if record is None or not record.handovers
                       else f"host {grant.host} does not run it at epoch {grant.epoch}")
                self._refuse(serial, cluster, "fallback", f"cluster {cluster}: {why}; restart it through host "
                             f"{grant.host}", host=grant.host)
                continue
            if not alive.get(grant.host):
                self._refuse(serial, cluster, "refused", f"host {grant.host} of cluster {cluster} is not alive")
                continue
            refused = self._refusal(cluster, grant.host, in_place=True)
            if refused is not None:
                self._refuse(serial, cluster, "refused", f"cannot restart cluster {cluster}: {refused}")
                await self._event(Severity.WARNING, "handover_refused", f"{reason} of cluster {cluster}: {refused}",
                                  cluster=cluster, host=grant.host)
                continue
            started = await self._begin(cluster, grant.host, reason, serial=serial)
            if started is None:
                self._refuse(serial, cluster, "refused", f"cluster {cluster}: the assignment changed; try again")
                continue
            self.outcomes[serial] = Outcome(serial, cluster, "started", f"cluster {cluster}: handing over to "
                                            f"{started.host} (epoch {started.epoch})", started.epoch, started.host)

    def _refuse(self, serial: int, cluster: int, state: str, message: str, host: str = "") -> None:
        self.outcomes[serial] = Outcome(serial, cluster, state, message, host=host)

    def start_rolling(self, host: str) -> str | None:
        """Begin a rolling restart of ``host`` (its clusters one at a time, each after the previous switch);
        return why not (one sentence) or ``None``."""
        if self.operation is not None:
            return (f"a rolling restart of host {self.operation['host']} is in progress "
                    f"({self.operation['done']} of {self.operation['total']})")
        clusters = sorted(c for c, g in self.assignment.items() if g.host == host)
        if not clusters:
            return f"host {host} runs no cluster"
        self._rolling_clusters = clusters
        self._rolling_serial = 0
        self.operation = {"kind": "rolling", "host": host, "done": 0, "total": len(clusters), "cluster": None,
                          "state": "running", "message": "", "steps": [], "skipped": []}
        return None

    async def _advance_operation(self) -> None:
        """One step of the rolling restart: when the current cluster switched, queue the next."""
        op = self.operation
        if op is None or op["state"] != "running":
            return
        before = json.dumps(op, sort_keys=True)
        if self._rolling_serial:
            outcome = self.outcomes.get(self._rolling_serial)
            if outcome is not None and outcome.final:
                del self.outcomes[self._rolling_serial]
                steps = op["steps"]
                assert isinstance(steps, list)
                if outcome.state in ("switched", "done"):
                    op["done"] = int(str(op["done"])) + 1
                    steps.append(f"{outcome.message} ({op['done']} of {op['total']})")
                    self._rolling_serial = 0
                elif outcome.state == "fallback":  # e.g. FAILED: not running, nothing to hand over
                    skipped = op["skipped"]
                    assert isinstance(skipped, list)
                    skipped.append(outcome.cluster)
                    steps.append(f"{outcome.message}: skipped")
                    self._rolling_serial = 0
                else:
                    op["state"] = "failed"
                    op["message"] = outcome.message
        if op["state"] == "running" and not self._rolling_serial:
            if self._rolling_clusters:
                cluster = self._rolling_clusters.pop(0)
                op["cluster"] = cluster
                self._rolling_serial = self.request_restart(cluster, HandoverReason.ROLLING)
            else:
                op["state"] = "done"
                op["cluster"] = None
        if json.dumps(op, sort_keys=True) != before or op["state"] != "running":
            await self._write_operation()

    async def _write_operation(self) -> None:
        op = self.operation
        if op is None or op["state"] != "running":
            await self.store.fenced("HDEL", self.store.keys.broker, OPERATION_FIELD)
            return
        data = {k: op[k] for k in ("kind", "host", "done", "total", "cluster")}
        await self.store.hset(self.store.keys.broker, {OPERATION_FIELD: json.dumps(data, separators=(",", ":"))})

    def finish_operation(self) -> None:
        """The command read the final state of the rolling restart."""
        if self.operation is not None and self.operation["state"] != "running":
            self.operation = None

    # planning ------------------------------------------------------------------------------------------

    async def _adopt(self, snap: BrokerSnapshot, verdicts: dict[str, HostVerdict]) -> None:
        in_layout = set(self.layout.cluster_ids)
        claims: dict[int, Grant] = {}
        for host_id in sorted(snap.hosts):
            if verdicts.get(host_id) is not HostVerdict.UP or snap.hosts[host_id].lease is None:
                continue
            for cluster, epoch in snap.hosts[host_id].running.items():
                if cluster not in in_layout or cluster in self.assignment or cluster in self.moves:
                    continue
                best = claims.get(cluster)
                if best is None or epoch > best.epoch:
                    claims[cluster] = Grant(host_id, epoch)
        for cluster, grant in sorted(claims.items()):
            if await self.store.adopt(cluster, grant):
                self.assignment[cluster] = grant
                self.max_epoch = max(self.max_epoch, grant.epoch)
                self._changed = True
                await self._event(Severity.INFO, "cluster_adopted",
                                  f"adopted cluster {cluster} on {grant.host} (epoch {grant.epoch}) from its claim",
                                  cluster=cluster, host=grant.host, epoch=grant.epoch)
                self._fire("assign", cluster, grant.host, grant.epoch)

    async def _plan(self, snap: BrokerSnapshot, verdicts: dict[str, HostVerdict], alive: dict[str, bool]) -> bool:
        current = self._planned()
        frozen = self._frozen(verdicts)
        capacities = {h: r.capacity for h, r in snap.hosts.items()}
        views = planning_views(capacities, alive, frozen, current)
        plan = plan_assignment(self.layout.cluster_ids, views, current)
        revoke_now: list[int] = []
        notify: set[str] = set()
        for cluster, host in plan.revoked.items():
            if cluster in self.moves or (cluster in self.handovers and plan.reasons.get(cluster) != "not in layout"):
                continue
            reason = plan.reasons.get(cluster, "")
            grant = self.assignment.pop(cluster, None)
            revoke_now.append(cluster)
            notify.add(host)
            if reason == "over capacity" and alive.get(host):
                self.moves.begin(Move(cluster, host, plan.assignment.get(cluster), reason, self.now,
                                      grant.epoch if grant else 0))
            await self._event(Severity.WARNING if reason != "not in layout" else Severity.INFO, "cluster_revoked",
                              f"revoked cluster {cluster} from {host} ({reason})", cluster=cluster, host=host)
            self._fire("assign", cluster, None, grant.epoch if grant else 0)
        if revoke_now:
            await self.store.revoke(revoke_now)
            self._changed = True
        grants = [(c, h) for c, h in plan.granted.items() if c not in self.moves and c not in self.handovers]
        if grants:
            sources = {c: plan.revoked.get(c) for c, _ in grants}
            await self._grant(grants, kind="cluster_granted", sources=sources)
        if notify:
            await self._notify(notify)
        await self._report_unassigned(plan.unassigned)
        return plan.changed

    async def _grant(self, grants: list[tuple[int, str]], *, kind: str, source: str | None = None,
                     sources: dict[int, str | None] | None = None, why: str = "") -> None:
        epochs = await self.store.grant_many(grants, self.max_epoch)
        self._changed = True
        for (cluster, host), epoch in zip(grants, epochs, strict=True):
            self.assignment[cluster] = Grant(host, epoch)
            self.max_epoch = max(self.max_epoch, epoch)
            old = source if source is not None else (sources or {}).get(cluster)
            event_kind = "cluster_moved" if old else kind
            text = f"cluster {cluster} moved from {old} to {host}" if old else f"cluster {cluster} granted to {host}"
            await self._event(Severity.INFO, event_kind, f"{text} (epoch {epoch}{', ' + why if why else ''})",
                              cluster=cluster, host=host, epoch=epoch)
            self._fire("assign", cluster, host, epoch)
        await self._notify({h for _, h in grants})

    async def _check_ready(self) -> None:
        if not self.ready and all(c in self.assignment for c in self.layout.cluster_ids):
            self.ready = True
            await self._event(Severity.INFO, "ready", f"all {self.layout.cluster_count} clusters are assigned")
            self._fire("ready")

    async def _report_unassigned(self, unassigned: list[int]) -> None:
        fresh = [c for c in unassigned if c not in self._reported_unassigned and c not in self.moves]
        if fresh:
            await self._event(Severity.ERROR, "cluster_unassigned",
                              f"no host has room for cluster(s) {fresh}: they stay unassigned until capacity "
                              "appears", clusters=json.dumps(fresh))
        self._reported_unassigned = set(unassigned)

    # info -----------------------------------------------------------------------------------------------

    @property
    def unassigned(self) -> int:
        """Clusters of the layout without a host."""
        return sum(1 for c in self.layout.cluster_ids if c not in self.assignment)

    def plan_reshard(self, *, shards: int | None = None, recommended: int | None = None,
                     use_recommended: bool = False) -> ReshardPlan | ReshardRefusal:
        """The plan of a reshard from this tick's layout, hosts and identify budget (see :mod:`.reshard`).

        A reshard, a handover (its successor already uses the host's extra slot) or a rolling restart in progress
        is a refusal."""
        if self.reshard is not None:
            return ReshardRefusal(f"a reshard to generation {self.reshard.generation} is in progress "
                                  f"({self.reshard.state})")
        if self.handovers:
            return ReshardRefusal(f"{len(self.handovers)} handover(s) in progress (cluster(s) "
                                  f"{sorted(self.handovers.records)}); reshard once they finished")
        if self.operation is not None:
            return ReshardRefusal("a rolling restart is in progress; reshard once it finished")
        lay = self.layout
        current = CurrentLayout(generation=lay.generation, shard_count=lay.shard_count,
                                shards_per_cluster=lay.shards_per_cluster,
                                max_concurrency=lay.max_concurrency,
                                identify_window=float(self.config.identify_window))
        verdicts = self.membership.verdicts
        frozen = self._frozen(verdicts)
        rooms = {h: HostRoom(capacity=r.capacity, held=len(self.held_by(h)),
                             alive=h in verdicts and verdicts[h].alive, draining=h in frozen, handovers=r.handovers)
                 for h, r in self.hosts.items()}
        budget = BudgetView(self.budget_total, self.budget_remaining, float(self.config.identify_reserve))
        return plan_reshard(current, rooms, budget, shards=shards, recommended=recommended,
                            use_recommended=use_recommended)

    def held_by(self, host: str) -> list[int]:
        """Clusters assigned to (or still stopping on) ``host``."""
        held = {c for c, h in self._current().items() if h == host}
        return sorted(held | set(self.handovers.sources(host)))



    # reshards (letsfrag.contract.reshard) -----------------------------------------------------------------------

    def request_reshard(self, timeout: float, **plan_args: object) -> int:
        """Queue a reshard for the next tick (``plan_args`` as :meth:`plan_reshard` takes them; its generation must
        be ready within ``timeout`` seconds); return the serial of its entry in :attr:`reshards`."""
        self._serial += 1
        self._reshard_requests[self._serial] = (plan_args, timeout)
        self.reshards[self._serial] = {"state": "queued", "message": "queued", "steps": []}
        return self._serial

    async def _react_to_4011(self, snap: BrokerSnapshot, alive: dict[str, bool]) -> None:
        """A live host reports a cluster of the live generation closed with 4011: reshard (once per generation) to
        :func:`~.reshard.sharding_target` (see :mod:`letsfrag.contract.reshard`)."""
        live = self.layout.cluster_ids
        oversized = sorted({c for h, r in snap.hosts.items() if alive.get(h) for c in r.sharding_required
                            if c in live})
        if not oversized or self.reshard is not None or self._sharding_generation == self.layout.generation:
            return
        self._sharding_generation = self.layout.generation
        target = sharding_target(self.layout.shard_count, self.layout.max_concurrency, self.recommended())
        serial = self.request_reshard(self.handover_timeout, shards=target, recommended=None, use_recommended=False)
        self.reshards[serial]["from_4011"] = True
        await self._event(Severity.ERROR, "sharding_required",
                          f"Discord closed cluster(s) {oversized} with 4011 (sharding required: a shard holds too "
                          f"many guilds); resharding {self.layout.shard_count} -> {target} shards (generation "
                          f"{self.layout.generation + 1}); their guilds are offline until it switches",
                          clusters=json.dumps(oversized))

    async def _check_auto_reshard(self) -> None:
        """``reshard.auto``: every ``check_interval``, reshard when a shard of the live generation holds more than
        ``max_guilds_per_shard`` guilds (to :func:`~.reshard.sharding_target`); only when every cluster is assigned
        and nothing else is moving, and only as far as the plan allows (the identify budget, the room)."""
        settings = self.config.reshard
        if not settings.auto or self.now < self._next_auto_check:
            return
        self._next_auto_check = self.now + float(settings.check_interval)
        if not self.ready or self.unassigned or self.reshard is not None or self.handovers or self._reshard_requests:
            return
        reason = auto_reshard_reason(await self.store.shard_guilds(self.layout.cluster_ids),
                                     settings.max_guilds_per_shard)
        if reason is None:
            return
        target = sharding_target(self.layout.shard_count, self.layout.max_concurrency, self.recommended())
        serial = self.request_reshard(self.handover_timeout, shards=target, recommended=None, use_recommended=False)
        self.reshards[serial]["from_auto"] = True
        await self._event(Severity.INFO, "reshard_auto", f"{reason}: resharding {self.layout.shard_count} -> {target} "
                          f"shards (generation {self.layout.generation + 1}, reshard.auto)")

    async def _start_reshards(self) -> None:
        for serial, (plan_args, timeout) in sorted(self._reshard_requests.items()):
            entry = self.reshards.get(serial)
            if entry is not None and entry.get("from_config") and (not self.ready or self.unassigned
                                                                   or self.reshard is not None):
                continue  # a config's reshard waits until every cluster is assigned
            del self._reshard_requests[serial]
            if entry is None:
                continue
            plan = self.plan_reshard(**plan_args)  # type: ignore[arg-type]
            entry["plan"] = plan.to_dict()
            if isinstance(plan, ReshardRefusal):
                entry.update(state="refused", message=plan.message)
                if any(entry.get(flag) for flag in ("from_config", "from_4011", "from_auto")):
                    await self._event(Severity.ERROR, "reshard_refused", f"the reshard is refused: {plan.message}")
                continue
            started = await self.start_reshard(plan, timeout, serial=serial)
            if isinstance(started, str):
                entry.update(state="refused", message=started)

    async def start_reshard(self, plan: ReshardPlan, timeout: float, *,
                            serial: int | None = None) -> ReshardRecord | str:
        """Prepare ``plan``'s generation: its clusters start beside the live ones, gated, and must all be ready
        within ``timeout`` seconds; return the record, or why not (one sentence). ``plan`` comes from
        :meth:`plan_reshard` in the same tick; ``serial``: the request whose entry in :attr:`reshards` follows it."""
        layout = new_layout(self.layout_record(), plan)
        targets = place(layout, plan)
        record = await self.store.begin_reshard(self.layout, layout, targets, timeout, self.max_epoch)
        if record is None:
            return "the layout or the handover records changed meanwhile (another reshard?); try again"
        self.reshard = record
        self._retired_since = None
        self.max_epoch = max([self.max_epoch, *(g.epoch for g in record.clusters.values())])
        self._changed = True
        placed = ", ".join(f"{h}: {sorted(c for c, t in targets.items() if t == h)}"
                           for h in sorted(set(targets.values())))
        if serial is not None:
            self._reshard_serial[record.generation] = serial
        self._reshard_note(record, "preparing", f"generation {record.generation}: starting {len(targets)} cluster(s) "
                           f"({layout.shard_count} shards) beside generation {record.from_generation} ({placed})")
        await self._event(Severity.INFO, "reshard_started",
                          f"reshard to generation {record.generation}: {self.layout.shard_count} -> "
                          f"{layout.shard_count} shards, clusters {list(layout.cluster_ids)} on {placed}; ready "
                          f"within {timeout:g}s", generation=record.generation)
        await self._write_reshard_progress(record, 0)
        await self._notify(set(targets.values()))
        return record

    def _reshard_note(self, record: ReshardRecord, state: str, line: str, cluster: int | None = None) -> None:
        """A step of ``record``'s reshard, for the entry of the request that started it (if any)."""
        serial = self._reshard_serial.get(record.generation)
        entry = self.reshards.get(serial) if serial is not None else None
        if entry is None:
            return
        steps = entry["steps"]
        assert isinstance(steps, list)
        steps.append(line)
        entry.update(state=state, message=line)
        if cluster is not None:
            entry["cluster"] = cluster

    async def _write_reshard_progress(self, record: ReshardRecord | None, ready: int) -> None:
        if record is None:
            if self._reshard_progress:
                self._reshard_progress = ""
                await self.store.fenced("HDEL", self.store.keys.broker, OPERATION_FIELD)
            return
        value = json.dumps({**record.progress(ready), "done": ready}, separators=(",", ":"))
        if value != self._reshard_progress:
            self._reshard_progress = value
            await self.store.hset(self.store.keys.broker, {OPERATION_FIELD: value})

    async def _settle_reshard(self, snap: BrokerSnapshot, facts: dict[str, HostFacts]) -> None:
        """Switch, finish or roll back the reshard of ``{ns}:reshard`` (as read this tick)."""
        if snap.reshard_invalid is not None:
            await self.store.fenced("DEL", self.store.keys.reshard)
            await self._event(Severity.ERROR, "reshard_repaired", f"{snap.reshard_invalid}; deleted",
                              key=self.store.keys.reshard)
        record = self.reshard = snap.reshard
        if record is None:
            await self._write_reshard_progress(None, 0)
            return
        if record.state is ReshardState.SWITCHED and self.layout.generation < record.generation:
            self.layout = dataclasses.replace(record.new_layout, updated_at=None)  # a new leader after the switch
        running = old_running(record, facts)
        if record.state is not ReshardState.SWITCHED or running:
            self._retired_since = None
        elif self._retired_since is None:
            self._retired_since = snap.time
        step = decide_reshard(record, snap.time, facts, stopped_since=self._retired_since,
                              settle=float(self.config.heartbeat_interval))
        ready = ready_clusters(record, facts)
        if step.action is ReshardAction.WAIT:
            before = self._reshard_progress
            await self._write_reshard_progress(record, len(ready) if record.state is ReshardState.PREPARING
                                               else len(record.clusters))
            if before != self._reshard_progress and record.state is ReshardState.PREPARING and ready:
                self._reshard_note(record, "preparing", f"generation {record.generation}: {len(ready)} of "
                                   f"{len(record.clusters)} cluster(s) ready")
            return
        if step.action is ReshardAction.SWITCH:
            await self._switch_reshard(record, snap)
        elif step.action is ReshardAction.ROLLBACK:
            await self._end_reshard(record, "rolled_back", step.reason, step.cluster)
        else:
            await self._end_reshard(record, "done", step.reason)

    async def _switch_reshard(self, record: ReshardRecord, snap: BrokerSnapshot) -> None:
        switched = await self.store.switch_reshard(record, self.moves.timeout)
        if switched is None:
            await self._end_reshard(record, "rolled_back", "the switch was refused: a new cluster's handover record "
                                    "changed")
            return
        self.reshard = switched
        self.layout = dataclasses.replace(switched.new_layout, updated_at=None)
        for cid in switched.retiring:
            self.assignment.pop(cid, None)
        for cid, grant in switched.clusters.items():
            self.assignment[cid] = grant
            self._fire("assign", cid, grant.host, grant.epoch)
        self._changed = True
        seconds = max(0.0, snap.time - record.started)
        line = (f"switched to generation {record.generation} ({self.layout.shard_count} shards) {seconds:.1f}s after "
                f"its clusters started; retiring generation {record.from_generation}'s clusters "
                f"{list(record.retiring)}")
        self._reshard_note(switched, "switched", line)
        await self._event(Severity.INFO, "reshard_switched", line, generation=record.generation,
                          overlap=f"{seconds:.3f}")
        await self._write_reshard_progress(switched, len(switched.clusters))
        await self._notify(set(self.hosts))

    async def _end_reshard(self, record: ReshardRecord, state: str, reason: str, cluster: int | None = None) -> None:
        """Done: the old generation's keys go; rolled back: the new generation's records and keys go."""
        doomed = record.retiring if state == "done" else tuple(record.clusters)
        await self.store.end_reshard(record, retired_cluster_keys(self.store.keys, list(doomed)))
        self.reshard = None
        self._retired_since = None
        self._changed = True
        if state == "done":
            line = (f"generation {record.generation} serves alone: {reason}; generation {record.from_generation}'s "
                    "keys removed")
            await self._event(Severity.INFO, "reshard_done", line, generation=record.generation)
        else:
            line = (f"rolled back: {reason}; generation {record.generation}'s clusters stopped, generation "
                    f"{record.from_generation} keeps serving")
            await self._event(Severity.ERROR, "reshard_rolled_back", line, generation=record.generation,
                              **({"cluster": cluster} if cluster is not None else {}))
        self._reshard_note(record, state, line, cluster)
        await self._write_reshard_progress(None, 0)
        await self._notify(set(self.hosts))
