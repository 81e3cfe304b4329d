"""The leader's reconcile step: from one Redis snapshot to fenced grants, revokes, moves and events.

One :class:`Reconciler` lives for one leadership term. Each tick it judges membership, settles pending moves,
adopts claims, waits for hosts on a cold start, executes :func:`plan_assignment`, then starts at most one move
(drain first, then rebalance). Decisions come from the pure modules (``assignment``, ``membership``,
``moves``); this class only executes them and reports every decision as an event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from letsfrag.clock import Clock
from letsfrag.config import BrokerConfig
from letsfrag.events import Severity
from letsfrag.records import LayoutRecord

from .assignment import plan_assignment, plan_rebalance_step
from .layout import Layout
from .membership import HostObservation, Membership, Transition, Verdict
from .moves import HostFacts, Move, Moves, pick_drain_move, planning_views
from .store import Grant, HostRecord, Snapshot, Store

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

EventSink = Callable[..., Awaitable[None]]  # (severity, kind, message, **context)
Fire = Callable[..., None]  # (callback name, *args)
Notify = Callable[[set[str]], Awaitable[None]]  # hosts whose grants changed


class Reconciler:
    """Executes the broker's decisions while this broker is the leader."""

    def __init__(self, config: BrokerConfig, layout: Layout, store: Store, *, event: EventSink, fire: Fire,
                 notify: Notify, move_timeout: float, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.now = clock.monotonic()
        self.layout = layout
        self.store = store
        self._event = event
        self._fire = fire
        self._notify = notify
        max_gap = max(config.lease.grace, 3 * config.heartbeat_interval)
        self.membership = Membership(config.lease.grace, max_gap=max_gap)
        self.moves = Moves(move_timeout)
        self.state = "starting"
        self.assignment: dict[int, Grant] = {}
        self.hosts: dict[str, HostRecord] = {}
        self.draining: set[str] = set()
        self.leave_signals: dict[str, str | None] = {}
        self.rebalance_requested = False
        self.rebalance_blocked = False
        self.drain_blocked: set[str] = set()
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

    # term ---------------------------------------------------------------------------------------------

    async def begin_term(self, now: float, snap: Snapshot) -> None:
        """A new leadership term: forget timers and moves, write the layout, cold-start wait if needed."""
        self.membership.reset()
        self.moves.clear()
        self._adopting = False
        if not snap.assignment:
            self._cold_start(now, snap)
        await self._write_layout()
        self.state = "waiting_for_hosts" if self._startup_deadline is not None else "running"

    def _cold_start(self, now: float, snap: Snapshot) -> None:
        """No assignment: wait for ``hosts.expected`` hosts (at most ``startup_grace``). When hosts still claim
        clusters (Redis lost its data) wait at least one lease ttl, so every live claimant re-registers and is
        adopted before anything is granted anew."""
        self._startup_deadline = now + self.config.hosts.startup_grace
        self._startup_floor = 0.0
        if self.ready or any(r.running for r in snap.hosts.values()):
            self._startup_floor = now + self.config.lease.ttl
            self._startup_deadline = max(self._startup_deadline, self._startup_floor)
            self._adopting = True

    def layout_record(self) -> LayoutRecord:
        """The ``{ns}:layout`` record of this broker's config (the one every host must use)."""
        c, lay = self.config, self.layout
        return LayoutRecord(
            shard_count=lay.shard_count, shards_per_cluster=lay.shards_per_cluster, cluster_count=len(lay.clusters),
            max_concurrency=lay.max_concurrency, identify_window=float(c.identify_window),
            lease_ttl=float(c.lease.ttl), lease_grace=float(c.lease.grace),
            heartbeat_interval=float(c.heartbeat_interval), allow_eval=c.allow_eval, updated_at=self.clock.time())

    async def _write_layout(self) -> None:
        fields = dict(self.layout_record().to_hash())
        if self._adopting:
            fields["adopting"] = "1"
        else:
            await self.store.fenced("HDEL", self.store.keys.layout, "adopting")
        await self.store.hset(self.store.keys.layout, fields)

    async def _check_values(self, snap: Snapshot) -> None:
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
        current = {str(p) for p in snap.problems if p.key != keys.epoch}
        for p in snap.problems:
            if p.key != keys.epoch and str(p) not in self._reported_values:
                await self._event(Severity.ERROR, "redis_value_invalid", f"{p}; the value is ignored",
                                  key=p.key, field=p.field)
        self._reported_values = current

    # one tick -----------------------------------------------------------------------------------------

    async def step(self, now: float, snap: Snapshot) -> bool:
        """Reconcile once; return True when something changed (for the dashboards' doorbell)."""
        self._changed = False
        self.now = now
        self.hosts = snap.hosts
        self.identify_depth = snap.identify_depth
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
        await self._settle_moves(now, snap, alive)
        await self._adopt(snap, verdicts)
        if self._startup_deadline is not None:
            up = sum(1 for v in verdicts.values() if v is Verdict.UP)
            complete = all(c in self.assignment for c in self.layout.cluster_ids)  # e.g. everything adopted
            waiting = up < self.config.hosts.expected or now < self._startup_floor
            if waiting and now < self._startup_deadline and not complete:
                self.state = "waiting_for_hosts"
                return self._changed
            self._startup_deadline = None
            self.state = "running"
            if self._adopting:
                self._adopting = False
                await self.store.fenced("HDEL", self.store.keys.layout, "adopting")
            await self._event(Severity.INFO, "startup", f"assigning clusters with {up} host(s) up")
        changed = await self._plan(snap, verdicts, alive)
        if not changed and not self.moves.pending:
            await self._start_move(now, snap, verdicts, alive)
        await self._forget_left(verdicts)
        await self._check_ready()
        return self._changed

    def _epoch_floor(self, snap: Snapshot) -> int:
        seen = [g.epoch for g in snap.assignment.values()]
        seen += [e for h in snap.hosts.values() for e in h.running.values()]
        return max([self.max_epoch, *seen])

    async def _keep_epoch(self, snap: Snapshot) -> None:
        floor = self._epoch_floor(snap)
        if snap.epoch < floor and not snap.epoch_invalid:
            await self.store.raise_epoch(floor)
        self.max_epoch = max(floor, snap.epoch)

    # membership ---------------------------------------------------------------------------------------

    async def _judge(self, now: float, snap: Snapshot) -> dict[str, Verdict]:
        for host_id, signal in list(self.leave_signals.items()):
            record = snap.hosts.get(host_id)
            if record is None:
                del self.leave_signals[host_id]
            elif signal is None:
                self.leave_signals[host_id] = record.incarnation
            elif signal != record.incarnation:
                del self.leave_signals[host_id]  # it registered again
        observed = {
            h: HostObservation(lease=r.lease is not None, state=r.state, said_leave=h in self.leave_signals)
            for h, r in snap.hosts.items()
        }
        for change in self.membership.observe(now, observed):
            await self._on_transition(change, snap)
        return dict(self.membership.verdicts)

    async def _on_transition(self, change: Transition, snap: Snapshot) -> None:
        host, before, after = change.host, change.before, change.after
        record = snap.hosts[host]
        self._changed = True
        if after in (Verdict.UP, Verdict.LEAVING) and before in (None, Verdict.LOST, Verdict.LEFT):
            self.rebalance_blocked = False
            await self._event(Severity.INFO, "host_joined",
                              f"host {host} is up (capacity {record.capacity})", host=host)
            self._fire("connect", host)
        elif after is Verdict.LEAVING:
            await self._event(Severity.INFO, "host_leaving", f"host {host} is leaving", host=host)
        elif after is Verdict.LATE:
            log.info("host %r: lease missing, waiting %.1fs grace before reassigning", host, self.config.lease.grace)
        elif after is Verdict.LOST:
            if record.state != "lost":
                await self.store.hset(self.store.keys.host(host), {"state": "lost"})
            held = sorted(c for c, g in self.assignment.items() if g.host == host)
            await self._event(Severity.ERROR, "host_lost",
                              f"host {host} lost: its lease expired {self.config.lease.grace:g}s ago; "
                              f"moving its clusters {held}", host=host)
            self._fire("disconnect", host, "lease expired")
        elif after is Verdict.LEFT:
            await self._event(Severity.INFO, "host_left", f"host {host} left cleanly", host=host)
            self._fire("disconnect", host, "left")

    async def _forget_left(self, verdicts: dict[str, Verdict]) -> None:
        for host, verdict in verdicts.items():
            holds = any(g.host == host for g in self.assignment.values())
            if verdict is Verdict.LEFT and not holds:
                await self.store.fenced("SREM", self.store.keys.hosts, host)
                self.leave_signals.pop(host, None)
                self.draining.discard(host)

    # moves ---------------------------------------------------------------------------------------------

    def _frozen(self, verdicts: dict[str, Verdict]) -> set[str]:
        drain = {h for h, r in self.hosts.items() if r.state == "draining"} | self.draining
        return {h for h in drain if h in self.hosts} | {h for h, v in verdicts.items() if v is Verdict.LEAVING}

    async def _settle_moves(self, now: float, snap: Snapshot, alive: dict[str, bool]) -> None:
        facts = {h: HostFacts(alive.get(h, False), frozenset(r.running)) for h, r in snap.hosts.items()}
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

    async def _start_move(self, now: float, snap: Snapshot, verdicts: dict[str, Verdict],
                          alive: dict[str, bool]) -> None:
        current = self._current()
        frozen = self._frozen(verdicts)
        capacities = {h: r.capacity for h, r in snap.hosts.items()}
        draining = sorted(h for h in frozen if any(v == h for v in current.values()))
        move: tuple[int, str, str] | None = None
        reason = "drain"
        if draining:
            eligible = {h for h, ok in alive.items() if ok and h not in frozen}
            move = pick_drain_move(draining, capacities, eligible, current)
            if move is None:
                for host in set(draining) - self.drain_blocked:
                    await self._event(Severity.ERROR, "drain_blocked",
                                      f"cannot drain host {host}: no other host has room", host=host)
                self.drain_blocked |= set(draining)
        if move is None and (self.rebalance_requested or
                             (self.config.rebalance == "on-join" and not self.rebalance_blocked)):
            reason = "rebalance"
            views = planning_views(capacities, alive, frozen, current)
            move = plan_rebalance_step(self.layout.cluster_ids, views, current)
            if move is None and self.rebalance_requested:
                self.rebalance_requested = False
                await self._event(Severity.INFO, "rebalance_done", "clusters are balanced")
        if move is None:
            return
        cluster, source, target = move
        grant = self.assignment.pop(cluster)
        await self.store.revoke([cluster])
        self.moves.begin(Move(cluster, source, target, reason, now, grant.epoch))
        self._changed = True
        kind = "drain" if reason == "drain" else "rebalance_step"
        await self._event(Severity.INFO, kind, f"{reason}: moving cluster {cluster} from {source} to {target} "
                          "(revoked; waiting for it to stop)", cluster=cluster, host=source, to=target)
        self._fire("assign", cluster, None, grant.epoch)
        await self._notify({source})

    # planning ------------------------------------------------------------------------------------------

    async def _adopt(self, snap: Snapshot, verdicts: dict[str, Verdict]) -> None:
        in_layout = set(self.layout.cluster_ids)
        claims: dict[int, Grant] = {}
        for host_id in sorted(snap.hosts):
            if verdicts.get(host_id) is not Verdict.UP or snap.hosts[host_id].lease is None:
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

    async def _plan(self, snap: Snapshot, verdicts: dict[str, Verdict], alive: dict[str, bool]) -> bool:
        current = self._current()
        frozen = self._frozen(verdicts)
        capacities = {h: r.capacity for h, r in snap.hosts.items()}
        views = planning_views(capacities, alive, frozen, current)
        plan = plan_assignment(self.layout.cluster_ids, views, current)
        revoke_now: list[int] = []
        notify: set[str] = set()
        for cluster, host in plan.revoked.items():
            if cluster in self.moves:
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
        grants = [(c, h) for c, h in plan.granted.items() if c not in self.moves]
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
            await self._event(Severity.INFO, "ready", f"all {len(self.layout.clusters)} clusters are assigned")
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

    def held_by(self, host: str) -> list[int]:
        """Clusters assigned to (or still stopping on) ``host``."""
        return sorted(c for c, h in self._current().items() if h == host)


