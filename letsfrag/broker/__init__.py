"""The ClusterBroker: layout, host leases, fenced assignment, failover, rebalance, standby brokers.

Callbacks (``broker.on(name, callback)``, sync or async):

* ``connect(host_id)`` – a host registered (its lease is up);
* ``disconnect(host_id, reason)`` – a host was lost (``"lease expired"``) or left (``"left"``);
* ``ready()`` – every cluster has a host, the first time;
* ``error(exc)`` – something needs attention (a lost host, an unassigned cluster, a failed tick);
* ``assign(cluster_id, host_id | None, epoch)`` – a grant (host) or a revoke (``None``);
* ``leader(is_leader)`` – this broker became the leader or a standby.
"""

from .broker import ClusterBroker

__all__ = ["ClusterBroker"]
