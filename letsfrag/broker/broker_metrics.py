"""What a broker shows on ``/metrics``, ``/healthz`` and ``/readyz`` (see :mod:`letsfrag.metrics`).

Read at each scrape from the broker's public state (leader or standby, the assignment as it last saw it, the
hosts of its last snapshot), through the small :class:`MeasuredBroker` interface that :class:`ClusterBroker`
implements (the metrics do not import the broker), and from Redis: the identify coordinator's counters
(``{ns}:identify:granted``, the bucket queues), Discord's identify budget (``{ns}:identify:budget``) and the last
epoch handed out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from redis.exceptions import RedisError

from letsfrag.contract.records import lenient_float
from letsfrag.metrics import Families, Probe, bus_drops, liveness

if TYPE_CHECKING:
    from letsfrag.broker.assignment import ClusterSpec
    from letsfrag.broker.reconcile import Reconciler
    from letsfrag.bus import Bus
    from letsfrag.contract.keys import Keys

__all__ = ["BrokerMetrics", "MeasuredBroker"]


class MeasuredBroker(Protocol):
    """What the metrics read of a broker (implemented by :class:`ClusterBroker`)."""

    broker_id: str
    bus: Bus
    keys: Keys

    @property
    def is_leader(self) -> bool:
        """True while the broker holds the leader lock."""

    @property
    def layout(self) -> list[ClusterSpec]:
        """The clusters of the live generation."""

    @property
    def assignment(self) -> dict[int, str | None]:
        """Cluster id -> host id (``None``: unassigned), as the broker last saw or wrote it."""

    @property
    def buckets(self) -> int:
        """IDENTIFY buckets of the layout."""

    @property
    def synced(self) -> bool:
        """True once started and while Redis answered the last tick."""

    @property
    def reconciler(self) -> Reconciler | None:
        """The decision state (None before the broker started)."""

    def dead_loops(self) -> list[str]:
        """Names of the broker's loops that ended."""


class BrokerMetrics:
    """The :class:`~letsfrag.metrics.MetricsSource` of one broker (a :class:`ClusterBroker`)."""

    def __init__(self, broker: MeasuredBroker) -> None:
        self.broker = broker
        self._families = Families()
        self.registry = self._families.registry

    async def refresh(self) -> None:
        broker = self.broker
        keys = broker.keys
        layout = broker.layout
        buckets = broker.buckets
        try:
            async with broker.bus.redis.pipeline(transaction=False) as pipe:
                pipe.get(keys.identify("granted"))
                pipe.hgetall(keys.identify("budget"))
                pipe.get(keys.epoch)
                for bucket in range(buckets):
                    pipe.zcard(keys.identify(f"queue:{bucket}"))
                raw = await pipe.execute()
            granted_raw, budget, last_epoch, *depths = raw
        except (RedisError, OSError):
            granted_raw, budget, last_epoch, depths = None, {}, None, []
        families: list[Metric] = []
        me = broker.broker_id

        leader = GaugeMetricFamily("letsfrag_broker_leader", "1 while this broker holds the leader lock",
                                   labels=["broker"])
        leader.add_metric([me], 1.0 if broker.is_leader else 0.0)
        families.append(leader)

        assignment = broker.assignment
        clusters = GaugeMetricFamily("letsfrag_clusters", "Clusters of the layout, by where they are",
                                     labels=["placement"])
        clusters.add_metric(["assigned"], sum(1 for host in assignment.values() if host is not None))
        clusters.add_metric(["unassigned"], sum(1 for host in assignment.values() if host is None))
        families.append(clusters)
        shards = GaugeMetricFamily("letsfrag_layout_shards", "Shards of the layout")
        shards.add_metric([], sum(len(spec.shard_ids) for spec in layout))
        families.append(shards)

        per_host = GaugeMetricFamily("letsfrag_host_clusters", "Clusters assigned to each host", labels=["host"])
        counts: dict[str, int] = {}
        for host in assignment.values():
            if host is not None:
                counts[host] = counts.get(host, 0) + 1
        rec = broker.reconciler
        hosts = rec.hosts if rec is not None else {}
        for host_id in sorted(set(hosts) | set(counts)):
            per_host.add_metric([host_id], counts.get(host_id, 0))
        families.append(per_host)
        host_up = GaugeMetricFamily("letsfrag_host_lease_held", "1 when the host's lease exists in Redis",
                                    labels=["host"])
        for host_id, record in sorted(hosts.items()):
            host_up.add_metric([host_id], 1.0 if record.lease else 0.0)
        families.append(host_up)

        epoch = GaugeMetricFamily("letsfrag_epoch", "Last epoch handed out (grows with every grant)")
        value = lenient_float(last_epoch)
        if value is not None:
            epoch.add_metric([], value)
        families.append(epoch)

        identified = CounterMetricFamily("letsfrag_identify_granted", "IDENTIFY windows granted (ever)")
        value = lenient_float(granted_raw)
        identified.add_metric([], value if value is not None else 0.0)
        families.append(identified)
        depth = GaugeMetricFamily("letsfrag_identify_queue_depth", "Shards waiting for an IDENTIFY window",
                                  labels=["bucket"])
        for bucket, count in enumerate(depths):
            depth.add_metric([str(bucket)], float(count or 0))
        families.append(depth)
        remaining = GaugeMetricFamily("letsfrag_identify_budget", "Discord's session start budget",
                                      labels=["kind"])
        for kind in ("remaining", "total"):
            value = lenient_float((budget or {}).get(kind))
            if value is not None:
                remaining.add_metric([kind], value)
        families.append(remaining)

        families.append(bus_drops(broker.bus.dropped))
        self._families.replace(families)

    async def health(self) -> Probe:
        return await liveness(self.broker.dead_loops(), self.broker.bus.redis)

    async def readiness(self) -> Probe:
        health = await self.health()
        if not health.ok:
            return health
        if not self.broker.synced:
            return Probe(False, "not in sync with Redis yet")
        return Probe(True, "leader" if self.broker.is_leader else "standby, in sync")
