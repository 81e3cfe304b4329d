"""Discord's gateway opcodes (one definition for the product, which speaks them on its replay connections, and
the simulator, which serves them)."""

from __future__ import annotations

from enum import IntEnum


class GatewayOp(IntEnum):
    """Gateway opcodes (API v10)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
