"""Every Redis key and channel name letsfrag uses, derived from the namespace.

Truth lives in keys; pub/sub channels are only doorbells (see ``docs/redis.md``).

Keys
    ``{ns}:layout``               hash  shard_count, shards_per_cluster, cluster_count, max_concurrency,
                                        identify_window, lease_ttl, lease_grace, heartbeat_interval (seconds),
                                        allow_eval (1/0: the broker's opt-in to ``broadcast_eval``), generation,
                                        cluster_base (see ``letsfrag.contract.reshard``; absent: 1 and 0)
    ``{ns}:hosts``                set   ids of registered hosts
    ``{ns}:host:{id}``            hash  host record (hostname, pid, version, capacity, state, cpu, rss, ...)
    ``{ns}:lease:{id}``           str   host lease, value = host incarnation, TTL = lease ttl
    ``{ns}:assignment``           hash  cluster id -> JSON {"host": id, "epoch": n}
    ``{ns}:epoch``                int   last epoch handed out (INCR)
    ``{ns}:status:cluster:{id}``  hash  cluster status written by its supervisor
    ``{ns}:status:shards:{id}``   hash  shard id -> JSON shard status written by the cluster
    ``{ns}:errors:cluster:{id}``  list  recent error texts (tracebacks) of a cluster, newest first
    ``{ns}:restarts:cluster:{id}`` list restart history of a cluster, newest first
    ``{ns}:metrics:cluster:{id}`` list  CPU/RSS samples of a cluster, newest first
    ``{ns}:events``               stream capped event log (time, severity, kind, message, ...)
    ``{ns}:leader``               str   broker leader lock, value = broker id, TTL = leader ttl
    ``{ns}:broker``               hash  leader broker info (id, since, identify depth, budget ...)
    ``{ns}:brokers:{id}``         str   every running broker's role (leader/standby), TTL = leader ttl
    ``{ns}:identify:*``           identify coordinator state (see ``letsfrag.broker.identify``)
    ``{ns}:replay:{receiver}:{id}`` str "1", PX = 2 × signature window: a state-changing message id accepted
                                        by ``receiver`` (its target name, e.g. ``host:h0``, ``cluster:3``,
                                        ``broker``); a second copy is refused even after a restart
    ``{ns}:claim:{event}:{id}``   str   claim of one handled event, value = pending:cluster/epoch while its
                                        handlers run, then done:cluster/epoch; TTL = 10 min
                                        (see ``letsfrag.claims``)
    ``{ns}:handover``             hash  cluster id -> JSON HandoverRecord of a planned handover in progress
                                        (see ``letsfrag.contract.handover``; written by the leader broker only)
    ``{ns}:reshard``              str   JSON ReshardRecord of the reshard in progress (``letsfrag.contract.reshard``;
                                        written by the leader broker only)
    ``{ns}:sessions:{id}``        hash  shard id -> JSON {session_id, resume_gateway_url, seq, epoch} of a
                                        cluster's gateway sessions (see ``letsfrag.cluster.session_records``)

Channels
    ``{ns}:cb``             broker inbox
    ``{ns}:cm:{host}``      host (supervisor) inbox
    ``{ns}:cluster:{id}``   cluster inbox
    ``{ns}:broadcast``      every cluster
    ``{ns}:reply:{node}``   replies to requests sent by ``node``
    ``{ns}:doorbell``       "state changed, look" for dashboards
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key and channel names for one namespace."""

    ns: str = "letsfrag"

    # keys
    @property
    def layout(self) -> str:
        return f"{self.ns}:layout"

    @property
    def hosts(self) -> str:
        return f"{self.ns}:hosts"

    def host(self, host_id: str) -> str:
        return f"{self.ns}:host:{host_id}"

    def lease(self, host_id: str) -> str:
        return f"{self.ns}:lease:{host_id}"

    @property
    def assignment(self) -> str:
        return f"{self.ns}:assignment"

    @property
    def handover(self) -> str:
        return f"{self.ns}:handover"

    @property
    def reshard(self) -> str:
        return f"{self.ns}:reshard"

    @property
    def epoch(self) -> str:
        return f"{self.ns}:epoch"

    def cluster_status(self, cluster_id: int) -> str:
        return f"{self.ns}:status:cluster:{cluster_id}"

    def shard_status(self, cluster_id: int) -> str:
        return f"{self.ns}:status:shards:{cluster_id}"

    def cluster_errors(self, cluster_id: int) -> str:
        return f"{self.ns}:errors:cluster:{cluster_id}"

    def cluster_restarts(self, cluster_id: int) -> str:
        return f"{self.ns}:restarts:cluster:{cluster_id}"

    def cluster_metrics(self, cluster_id: int) -> str:
        return f"{self.ns}:metrics:cluster:{cluster_id}"

    @property
    def events(self) -> str:
        return f"{self.ns}:events"

    @property
    def leader(self) -> str:
        return f"{self.ns}:leader"

    @property
    def broker(self) -> str:
        return f"{self.ns}:broker"

    def broker_role(self, broker_id: str) -> str:
        return f"{self.ns}:brokers:{broker_id}"

    def identify(self, suffix: str) -> str:
        return f"{self.ns}:identify:{suffix}"

    def replay(self, receiver: str, message_id: str) -> str:
        return f"{self.ns}:replay:{receiver}:{message_id}"

    def claim(self, identity: str) -> str:
        return f"{self.ns}:claim:{identity}"

    def session_records(self, cluster_id: int) -> str:
        return f"{self.ns}:sessions:{cluster_id}"

    # channels
    @property
    def broker_inbox(self) -> str:
        return f"{self.ns}:cb"

    def host_inbox(self, host_id: str) -> str:
        return f"{self.ns}:cm:{host_id}"

    def cluster_inbox(self, cluster_id: int) -> str:
        return f"{self.ns}:cluster:{cluster_id}"

    @property
    def broadcast(self) -> str:
        return f"{self.ns}:broadcast"

    def reply(self, node_id: str) -> str:
        return f"{self.ns}:reply:{node_id}"

    @property
    def doorbell(self) -> str:
        return f"{self.ns}:doorbell"
