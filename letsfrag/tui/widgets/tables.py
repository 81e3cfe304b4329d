"""The dashboard's tables: hosts, clusters, events and a cluster's shards."""

from __future__ import annotations

from ...snapshot.render import CLUSTER_COLUMNS, HOST_COLUMNS
from .keyed_table import KeyedTable


class HostsTable(KeyedTable):
    """One row per host (key: host id)."""

    COLUMNS = HOST_COLUMNS


class ClustersTable(KeyedTable):
    """One row per cluster, unassigned ones included (key: cluster id)."""

    COLUMNS = CLUSTER_COLUMNS


class EventsTable(KeyedTable):
    """The newest events first (key: stream id)."""

    COLUMNS = (("time", "Time"), ("severity", "Severity"), ("source", "Source"),
               ("message", "Message"))


class ShardsTable(KeyedTable):
    """One row per shard of a cluster (key: shard id)."""

    COLUMNS = (("id", "Shard"), ("status", "Status"), ("latency", "Latency"), ("guilds", "Guilds"),
               ("event", "Last event"), ("report", "Reported"))


class RestartsTable(KeyedTable):
    """A cluster's restart history, newest first."""

    COLUMNS = (("n", "#"), ("when", "When"), ("reason", "Reason"), ("exit", "Exit"), ("delay", "Delay"))
