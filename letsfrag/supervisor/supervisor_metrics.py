"""What a host supervisor shows on ``/metrics``, ``/healthz`` and ``/readyz`` (see :mod:`letsfrag.metrics`).

Read at each scrape from the manager's public state (:attr:`ClusterManager.clusters`, ``assigned``,
``loops_alive``, the bus's drop counters) and from Redis: the shard hashes the cluster processes write every
heartbeat (``{ns}:status:shards:{cid}``) and this host's lease. Gateway latency is also a histogram, observed
once per new shard report seen at a scrape.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError

from letsfrag.contract.records import lenient_float
from letsfrag.metrics import Families, Probe, bus_drops, liveness
from letsfrag.supervisor.state import ClusterState

if TYPE_CHECKING:
    from letsfrag.bus import Bus
    from letsfrag.supervisor.state import ClusterView

__all__ = ["HostMetrics", "MeasuredHost"]

#: gateway latency buckets (seconds): Discord's heartbeat ACK round trip
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class MeasuredHost(Protocol):
    """What the metrics read of a supervisor (implemented by :class:`ClusterManager`)."""

    host_id: str
    capacity: int

    @property
    def bus(self) -> Bus:
        """The supervisor's bus connection."""

    @property
    def clusters(self) -> dict[int, ClusterView]:
        """A snapshot of every cluster this host ran or runs."""

    @property
    def assigned(self) -> dict[int, int]:
        """``{cluster id: epoch}`` granted to this host."""

    def dead_loops(self) -> list[str]:
        """Names of the core loops that ended."""


class HostMetrics:
    """The :class:`~letsfrag.metrics.MetricsSource` of one :class:`ClusterManager`."""

    def __init__(self, manager: MeasuredHost) -> None:
        self.manager = manager
        self._families = Families()
        self.registry = self._families.registry
        self._latency = Histogram(
            "letsfrag_gateway_latency_seconds", "Gateway heartbeat round trip of the shards, per cluster",
            ["cluster"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        #: (cluster, shard) -> ts of the last report observed into the histogram
        self._observed: dict[tuple[int, int], float] = {}

    async def _shard_reports(self, cluster_ids: list[int]) -> dict[int, dict[int, dict[str, Any]]]:
        bus = self.manager.bus
        reports: dict[int, dict[int, dict[str, Any]]] = {}
        async with bus.redis.pipeline(transaction=False) as pipe:
            for cid in cluster_ids:
                pipe.hgetall(bus.keys.shard_status(cid))
            raw = await pipe.execute()
        for cid, values in zip(cluster_ids, raw, strict=True):
            shards: dict[int, dict[str, Any]] = {}
            for sid_text, text in (values or {}).items():
                try:
                    sid = int(sid_text)
                    report = json.loads(text)
                except (TypeError, ValueError):
                    continue
                if isinstance(report, dict):
                    shards[sid] = report
            reports[cid] = shards
        return reports

    async def refresh(self) -> None:
        manager = self.manager
        host = manager.host_id
        views = manager.clusters
        running = [cid for cid, view in views.items() if view.pid is not None]
        try:
            reports = await self._shard_reports(running)
            lease_ms = await manager.bus.redis.pttl(manager.bus.keys.lease(host))
        except (RedisError, OSError):
            reports, lease_ms = {}, None
        families: list[Metric] = []

        up = GaugeMetricFamily("letsfrag_host_capacity", "Most clusters this host runs at once", labels=["host"])
        up.add_metric([host], manager.capacity)
        families.append(up)
        lease = GaugeMetricFamily("letsfrag_host_lease_remaining_seconds",
                                  "Time left on this host's lease in Redis (-1: no lease)", labels=["host"])
        lease.add_metric([host], lease_ms / 1000 if isinstance(lease_ms, int) and lease_ms >= 0 else -1.0)
        families.append(lease)
        granted = GaugeMetricFamily("letsfrag_host_clusters_granted", "Clusters the broker granted this host",
                                    labels=["host"])
        granted.add_metric([host], len(manager.assigned))
        families.append(granted)

        state = GaugeMetricFamily("letsfrag_cluster_state", "1 for the cluster's current state", labels=["cluster",
                                                                                                       "state"])
        epoch = GaugeMetricFamily("letsfrag_cluster_epoch", "Epoch of the cluster's current run", labels=["cluster"])
        restarts = CounterMetricFamily("letsfrag_cluster_restarts", "Restarts counted by the restart policy",
                                       labels=["cluster"])
        spawns = CounterMetricFamily("letsfrag_cluster_spawns", "Processes started for the cluster",
                                     labels=["cluster"])
        cpu = GaugeMetricFamily("letsfrag_cluster_cpu_percent", "CPU of the cluster's process tree",
                                labels=["cluster"])
        rss = GaugeMetricFamily("letsfrag_cluster_rss_bytes", "RSS of the cluster's process tree", labels=["cluster"])
        guilds = GaugeMetricFamily("letsfrag_cluster_guilds", "Guilds in the cluster's cache", labels=["cluster"])
        for cid, view in views.items():
            label = str(cid)
            for each in ClusterState:
                state.add_metric([label, str(each)], 1.0 if view.state is each else 0.0)
            if view.epoch is not None:
                epoch.add_metric([label], view.epoch)
            restarts.add_metric([label], view.restarts)
            spawns.add_metric([label], view.spawns)
            cpu.add_metric([label], view.cpu_percent)
            rss.add_metric([label], view.rss)
            if view.guilds is not None:
                guilds.add_metric([label], view.guilds)
        families += [state, epoch, restarts, spawns, cpu, rss, guilds]

        ready = GaugeMetricFamily("letsfrag_shard_ready", "1 when the shard's session is READY",
                                  labels=["shard", "cluster"])
        latency = GaugeMetricFamily("letsfrag_shard_latency_seconds", "Gateway heartbeat round trip of the shard",
                                    labels=["shard", "cluster"])
        messages = CounterMetricFamily("letsfrag_shard_gateway_messages",
                                       "Gateway messages received by the shard's current process "
                                       "(rate() gives events per second)", labels=["shard", "cluster"])
        seen: set[tuple[int, int]] = set()
        for cid, shards in reports.items():
            for sid, report in sorted(shards.items()):
                labels = [str(sid), str(cid)]
                ready.add_metric(labels, 1.0 if report.get("status") == "ready" else 0.0)
                value = lenient_float(report.get("latency"))
                if value is not None:
                    latency.add_metric(labels, value)
                    ts = lenient_float(report.get("ts")) or 0.0
                    if self._observed.get((cid, sid)) != ts:
                        self._observed[(cid, sid)] = ts
                        self._latency.labels(cluster=str(cid)).observe(value)
                count = lenient_float(report.get("messages"))
                if count is not None:
                    messages.add_metric(labels, count)
                seen.add((cid, sid))
        for gone in set(self._observed) - seen:
            del self._observed[gone]
        families += [ready, latency, messages]

        families.append(bus_drops(manager.bus.dropped))
        self._families.replace(families)

    async def health(self) -> Probe:
        return await liveness(self.manager.dead_loops(), self.manager.bus.redis)

    async def readiness(self) -> Probe:
        health = await self.health()
        if not health.ok:
            return health
        views = self.manager.clusters
        waiting = sorted(cid for cid, epoch in self.manager.assigned.items()
                         if cid not in views or views[cid].state is not ClusterState.READY
                         or views[cid].epoch != epoch)
        if waiting:
            return Probe(False, f"clusters not READY yet: {', '.join(map(str, waiting))}")
        return Probe(True, f"{len(self.manager.assigned)} granted cluster(s) READY")
