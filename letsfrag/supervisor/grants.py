"""Grants and fencing for ``ClusterManager``: make the processes match ``{ns}:assignment``.

Runs inside the manager's decision loop. A grant naming this host with a newer epoch starts the cluster; a
cluster no longer granted here (or under another epoch) is stopped and confirmed with ``cluster_stopped``.
Self-fencing forgets every grant and stops everything within the rest of the lease. The grants and the layout
are fields of the shared :class:`HostState`; spawning and stopping are asked of the shell
(:class:`letsfrag.supervisor.shell.Shell`).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

from letsfrag.contract.envelope import MessageType
from letsfrag.contract.handover import HandoverRecord
from letsfrag.contract.records import LayoutRecord
from letsfrag.events import Severity
from letsfrag.supervisor import policy
from letsfrag.supervisor.state import FINAL_STOP_INTENTS, ClusterRecord, ClusterState, HostState, StopIntent

if TYPE_CHECKING:
    from letsfrag.supervisor.handoff import Handovers
    from letsfrag.supervisor.shell import Shell

__all__ = ["Grants"]

log = logging.getLogger(__name__)



class Grants:
    """Applies grants and fencing to the supervisor's records and successors; ``rng`` draws the restart jitter."""

    def __init__(self, state: HostState, shell: Shell, handovers: Handovers, rng: random.Random) -> None:
        self.state = state
        self.m = shell
        self.handovers = handovers
        self._rng = rng
        self._refused: tuple[int, int] | None = None

    async def apply(self, layout: LayoutRecord, grants: dict[int, int],
                    handovers: dict[int, HandoverRecord] | None = None) -> None:
        """Take the grants read from Redis (``{cluster id: epoch}`` naming this host) and the handover records,
        carry out the handovers (spawn, promote or roll back successors), then reconcile."""
        if self.state.closing:
            return
        layout = self._keep_geometry(layout)
        self.state.layout = layout
        valid = {cid: epoch for cid, epoch in grants.items() if layout.shards_of(cid)}
        for cid in grants.keys() - valid.keys():
            log.warning("cluster %d is granted to this host but is outside the layout; ignored", cid)
        self.state.desired = valid
        # before the reconcile: a grant naming a successor's epoch promotes it (nothing new is spawned for it)
        await self.handovers.apply(handovers or {}, valid)
        await self.reconcile()
        self.m.pulse()

    def _keep_geometry(self, layout: LayoutRecord) -> LayoutRecord:
        """A layout that changes the shard ranges while clusters run here is refused (the last one stays):
        two processes would run the same shard. It is reported once; it applies when nothing runs. A layout of a
        later generation (:mod:`letsfrag.contract.reshard`) is taken: its clusters have other ids."""
        current = self.state.layout
        if current is None or current.geometry == layout.geometry or layout.generation > current.generation:
            # a new generation (a reshard switched) numbers its clusters after the running ones: no range overlaps
            self._refused = None
            return layout
        alive = self.state.alive_clusters()
        if not alive:
            self._refused = None
            return layout
        if self._refused != layout.geometry:
            self._refused = layout.geometry
            key = self.m.bus.keys.layout
            text = (f"host {self.m.host_id}: refusing the layout {key} with {layout.shard_count} shards in clusters "
                    f"of {layout.shards_per_cluster} while clusters {alive} run {current.shard_count} shards in "
                    f"clusters of {current.shards_per_cluster} (their shard ranges would overlap)")
            log.error("%s", text)
            self.m.event(Severity.ERROR, "layout_refused", text, host=self.m.host_id, key=key,
                          field="shards_per_cluster" if layout.shards_per_cluster != current.shards_per_cluster
                          else "shard_count")
        return current

    def record(self, cluster_id: int) -> ClusterRecord:
        """The record of ``cluster_id``, created (with its restart tracker) on first use."""
        record = self.state.records.get(cluster_id)
        if record is None:
            restart = self.m.config.restart
            b = restart.backoff
            settings = policy.RestartSettings(
                policy=restart.policy, max_restarts=restart.max_restarts, window=restart.window,
                backoff=policy.BackoffSettings(initial=b.initial, factor=b.factor, max=b.max,
                                               jitter=min(b.jitter, 0.99), reset_after=b.reset_after))
            assert self.state.layout is not None
            record = ClusterRecord(cluster_id, self.state.layout.shards_of(cluster_id),
                                   policy.RestartTracker(settings, self._rng),
                                   policy.MemoryWatch(self.m.config.limits.max_memory))
            self.state.records[cluster_id] = record
        return record

    async def reconcile(self) -> None:
        """Make the processes match the grants: spawn newer epochs, stop what is no longer ours."""
        for cid, epoch in sorted(self.state.desired.items()):
            record = self.record(cid)
            if record.process is not None:
                if record.epoch != epoch and record.stop_intent not in FINAL_STOP_INTENTS:
                    self.m.begin_stop(record, StopIntent.REVOKE, f"epoch {record.epoch} replaced by {epoch}")
                continue
            if record.state is ClusterState.BACKOFF and record.epoch == epoch:
                continue
            if record.epoch is not None and epoch < record.epoch:
                continue  # a stale grant: epochs only grow
            if epoch == record.epoch and (record.state is ClusterState.FAILED or record.done_epoch == epoch):
                continue
            self.m.cancel_backoff(record)
            if self.state.layout is not None:
                record.shard_ids = self.state.layout.shards_of(cid)
            if record.epoch != epoch:
                record.restarts = 0
            self.m.set_state(record, ClusterState.PENDING, f"granted to this host (epoch {epoch})")
            await self.m.spawn(record, epoch)
        for cid, record in sorted(self.state.records.items()):
            if cid in self.state.desired:
                continue
            if record.process is not None:
                if record.stop_intent not in FINAL_STOP_INTENTS:
                    self.m.begin_stop(record, StopIntent.REVOKE, "no longer assigned to this host")
            elif record.state is ClusterState.BACKOFF:
                self.m.cancel_backoff(record)
                self.m.set_state(record, ClusterState.STOPPED, "revoked during backoff")
                self.confirm_stopped(record)

    def confirm_stopped(self, record: ClusterRecord) -> None:
        """A revoke is complete: update ``running`` in the host record, then tell the broker."""
        assert self.m.publisher is not None
        self.m.publisher.host_fields({"running": self.m.running_json()})
        self.m.publisher.message(MessageType.CLUSTER_STOPPED,
                                 {"host": self.m.host_id, "cluster": record.cluster_id, "epoch": record.epoch})

    def fence_all(self, reason: str) -> None:
        """This host may have lost its lease: stop everything now, within the rest of the lease."""
        log.error("host %s fenced itself: %s; stopping every cluster", self.m.host_id, reason)
        self.m.event(Severity.ERROR, "host_fenced", f"host {self.m.host_id} fenced itself: {reason}")
        self.state.desired = {}
        hb = self.state.layout.heartbeat_interval if self.state.layout else 1.0
        budget = max(hb, 1.0) / 2
        self.handovers.stop_all(f"fenced: {reason}", timeout=min(self.m.config.limits.stop_timeout, budget))
        for record in self.state.records.values():
            record.done_epoch = None
            if record.process is not None:
                self.m.begin_stop(record, StopIntent.FENCE, reason,
                                   timeout=min(self.m.config.limits.stop_timeout, budget))
            elif record.state is ClusterState.BACKOFF:
                self.m.cancel_backoff(record)
                self.m.set_state(record, ClusterState.STOPPED, f"fenced: {reason}")
