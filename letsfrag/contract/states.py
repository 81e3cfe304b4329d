"""The states a host and a broker write for the others to read. StrEnums, so a member is the very string in
Redis (``HostRecordState.UP == "up"``); a field read back stays a plain string (a newer writer may know more
states than this reader)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BrokerState", "HostRecordState"]


class HostRecordState(StrEnum):
    """The ``state`` field of a host record (``{ns}:host:{id}``)."""

    #: takes clusters (also what a record without the field means)
    UP = "up"
    #: the operator drained it: it keeps what it runs until moved, and gets nothing new
    DRAINING = "draining"
    #: its supervisor is shutting down and hands its clusters to other hosts
    LEAVING = "leaving"
    #: the broker judged it lost (its lease expired beyond the grace)
    LOST = "lost"


class BrokerState(StrEnum):
    """The leader broker's ``state`` in its status (``{ns}:broker``)."""

    STARTING = "starting"
    #: at a cold start, waiting up to the startup window for the hosts to register
    WAITING_FOR_HOSTS = "waiting_for_hosts"
    RUNNING = "running"
