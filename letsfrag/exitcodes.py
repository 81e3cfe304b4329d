"""Exit codes with a meaning between a cluster process and its supervisor."""

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

#: Discord gateway close codes that mean "do not reconnect"
FATAL_CLOSE_CODES = frozenset({4004, 4010, 4011, 4012, 4013, 4014})
