"""The contract's StrEnums are the very strings on the wires: JSON on the bus and the pipe, fields in Redis."""

from __future__ import annotations

import json

from redis.connection import Encoder

from letsfrag import ipc
from letsfrag.contract.actions import BrokerAction, HostAction
from letsfrag.contract.ipc_ops import IpcOp
from letsfrag.contract.states import BrokerState, HostRecordState


def test_the_values_are_the_wire_strings() -> None:
    assert [a.value for a in BrokerAction] == ["drain", "undrain", "rebalance", "restart", "rolling_restart",
                                               "reshard"]
    assert [a.value for a in HostAction] == ["restart", "restart_all", "rolling_restart"]
    assert [o.value for o in IpcOp] == ["hello", "heartbeat", "ready", "fatal", "fenced", "error", "stop",
                                        "promote"]
    assert [s.value for s in HostRecordState] == ["up", "draining", "leaving", "lost"]
    assert [s.value for s in BrokerState] == ["starting", "waiting_for_hosts", "running"]


def test_a_member_is_written_exactly_as_its_string() -> None:
    assert json.dumps({"action": BrokerAction.ROLLING_RESTART}) == json.dumps({"action": "rolling_restart"})
    assert f"{HostAction.RESTART_ALL}" == str(HostAction.RESTART_ALL) == "restart_all"
    assert ipc.encode(IpcOp.READY) == ipc.encode("ready") == b'{"op":"ready"}\n'
    encoder = Encoder("utf-8", "strict", decode_responses=False)
    assert encoder.encode(HostRecordState.LEAVING) == b"leaving"
    assert encoder.encode(BrokerState.WAITING_FOR_HOSTS) == b"waiting_for_hosts"


def test_plain_strings_read_back_compare_equal() -> None:
    assert "draining" == HostRecordState.DRAINING and "stop" in (IpcOp.STOP, IpcOp.PROMOTE)
    assert {"up": 1}[HostRecordState.UP] == 1
