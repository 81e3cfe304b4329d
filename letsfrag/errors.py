"""The one exception root of letsfrag and its short tree.

``LetsfragError``
    ``ConfigError`` – a configuration file or argument is wrong (exit code 2).
    ``ProtocolError`` – a Redis message could not be decoded or verified.
    ``RecordError`` – a value read from a Redis key is missing, malformed or out of bounds.
    ``BusError`` – the Redis transport failed.
        ``RequestTimeout`` – a request got no reply before its deadline.
        ``RemoteError`` – the other side answered with an error.
    ``NotInClusterError`` – a cluster client was started outside a supervisor.
    ``FencedError`` – this process no longer owns its shards.
    ``DiscordSetupError`` – Discord (or the simulator) refused a setup call.
"""

from __future__ import annotations


class LetsfragError(Exception):
    """Base class of every error letsfrag raises on purpose."""


class ConfigError(LetsfragError):
    """A configuration is invalid; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__("\n".join(self.problems))


class ProtocolError(LetsfragError):
    """A wire message was malformed, oversized, unsigned, forged or stale."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class RecordError(LetsfragError, ValueError):
    """A value read from Redis is unusable; ``key`` and ``field`` say where (``field`` is ``value`` for a string
    key)."""

    def __init__(self, key: str, field: str, problem: str) -> None:
        self.key = key
        self.field = field
        self.problem = problem
        super().__init__(f"{key} field {field!r} {problem}")


class BusError(LetsfragError):
    """The Redis transport failed."""


class RequestTimeout(BusError):
    """A request got no reply before its deadline."""


class RemoteError(BusError):
    """The target answered a request with an error."""

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message
        super().__init__(f"{error_type}: {message}")


class NotInClusterError(LetsfragError):
    """A cluster client was constructed without the supervisor's environment."""


class FencedError(LetsfragError):
    """This process's epoch no longer owns its shards; it must stop at once."""


class DiscordSetupError(LetsfragError):
    """Discord (or the simulator) refused a call needed to set up the deployment."""
