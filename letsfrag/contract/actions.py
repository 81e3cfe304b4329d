"""The operator's actions: the ``action`` of a command on the broker's inbox (``{ns}:cb``) and on a host's
(``{ns}:cm:{host}``). StrEnums, so a member is the very string on the wire (``BrokerAction.DRAIN == "drain"``)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BrokerAction", "HostAction"]


class BrokerAction(StrEnum):
    """What the leader broker does on the operator's command (see :mod:`letsfrag.broker.broker_commands`)."""

    #: move every cluster off a host and give it none until ``undrain``
    DRAIN = "drain"
    UNDRAIN = "undrain"
    #: move clusters so that the hosts are even
    REBALANCE = "rebalance"
    #: restart one cluster in place, by a handover
    RESTART = "restart"
    #: restart every cluster of a host, one handover at a time
    ROLLING_RESTART = "rolling_restart"
    #: plan or run a new shard count
    RESHARD = "reshard"


class HostAction(StrEnum):
    """What a supervisor does on the operator's command (see :mod:`letsfrag.supervisor.supervisor_commands`)."""

    #: restart one cluster
    RESTART = "restart"
    #: restart every cluster of the host at once
    RESTART_ALL = "restart_all"
    #: restart every cluster of the host, the next once the previous is READY
    ROLLING_RESTART = "rolling_restart"
