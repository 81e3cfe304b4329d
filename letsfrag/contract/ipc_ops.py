"""The ``op`` of a message on the pipe between a supervisor and one cluster process (:mod:`letsfrag.ipc`).
A StrEnum, so a member is the very string on the wire (``IpcOp.READY == "ready"``)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["IpcOp"]


class IpcOp(StrEnum):
    """Every op on the pipe; the fields of each are listed in :mod:`letsfrag.ipc`."""

    # child -> supervisor
    HELLO = "hello"
    HEARTBEAT = "heartbeat"
    READY = "ready"
    #: a fatal gateway close: do not restart
    FATAL = "fatal"
    FENCED = "fenced"
    #: an unhandled exception, with its traceback
    ERROR = "error"
    # supervisor -> child
    STOP = "stop"
    #: to a handover successor: the switch happened, check ownership now (a hint; the check decides)
    PROMOTE = "promote"
