"""Discord gateway protocol constants the simulator speaks (API v10, JSON encoding)."""

from __future__ import annotations

import enum


class Intent(enum.IntFlag):
    """The gateway intents the simulator looks at (the privileged ones)."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_PRESENCES = 1 << 8
    MESSAGE_CONTENT = 1 << 15


PRIVILEGED_INTENTS = Intent.GUILD_MEMBERS | Intent.GUILD_PRESENCES | Intent.MESSAGE_CONTENT
#: Every intent bit Discord defines (bits 0-16, 20, 21, 24, 25) — ``discord.Intents.all().value`` in 2.7.
VALID_INTENTS = 0b11_0011_0001_1111_1111_1111_1111

#: Gateway API versions the simulator accepts in the ``v`` query parameter.
SUPPORTED_API_VERSIONS = frozenset({"9", "10"})
#: Transport compressions the simulator accepts in the ``compress`` query parameter.
SUPPORTED_COMPRESSIONS = frozenset({"zlib-stream", "zstd-stream"})

#: Client close codes after which Discord forgets the session (anything else keeps it resumable).
NON_RESUMABLE_CLIENT_CLOSE = frozenset({1000, 1001})
