"""Exit codes with a meaning between a cluster process and its supervisor, and Discord's gateway close codes
(one definition for the product and the simulator, which sends them)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """How a cluster process tells its supervisor why it ended."""

    OK = 0
    #: generic failure (an exception): restart with backoff
    FAILURE = 1
    #: the cluster's epoch no longer owns its shards: do not restart, the broker moved them
    FENCED = 75
    #: Discord closed with a fatal code (4004 bad token, 4010-4014): restarting cannot help
    FATAL_GATEWAY = 77
    #: EX_CONFIG: the bot's configuration is wrong; restarting cannot help
    CONFIG = 78


#: exit codes after which a cluster goes straight to FAILED
NO_RESTART_CODES = frozenset({ExitCode.FATAL_GATEWAY, ExitCode.CONFIG})

class CloseCode(IntEnum):
    """Discord's gateway close event codes (the ones the simulator sends; 4006 is not used by Discord)."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    INVALID_SHARD = 4010
    SHARDING_REQUIRED = 4011
    INVALID_API_VERSION = 4012
    INVALID_INTENTS = 4013
    DISALLOWED_INTENTS = 4014

    @property
    def is_fatal(self) -> bool:
        """True for a code after which reconnecting cannot help (Discord: "do not reconnect")."""
        return self in FATAL_CLOSE_CODES


#: Discord gateway close codes that mean "do not reconnect" (plain ints compare equal to their members)
FATAL_CLOSE_CODES: frozenset[int] = frozenset({
    CloseCode.AUTHENTICATION_FAILED, CloseCode.INVALID_SHARD, CloseCode.SHARDING_REQUIRED,
    CloseCode.INVALID_API_VERSION, CloseCode.INVALID_INTENTS, CloseCode.DISALLOWED_INTENTS,
})
