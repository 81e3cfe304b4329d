"""Settings of the simulated Discord, validated once at construction."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from letsfrag.errors import ConfigError

ViolationMode = Literal["close", "invalid", "count"]
VIOLATION_MODES: tuple[str, ...] = ("close", "invalid", "count")


@dataclass
class SimulatorOptions:
    """Everything the simulator can be told; all durations are seconds.

    ``on_violation`` decides what an IDENTIFY that breaks the per-bucket identify window gets:
    ``close`` closes the socket with 4008, ``invalid`` answers INVALID_SESSION(false), ``count`` lets it
    through and only counts it. Sessions of any shard count may identify (several counts at once during a
    reshard); ``shards`` is the count the guild ids are generated for and the one ``/gateway/bot`` recommends
    unless ``guilds_per_shard`` is set. ``reject_when_exhausted`` refuses an IDENTIFY once
    ``session_start_limit.remaining`` is 0 by closing the socket with 4008 (reason "session start limit
    exhausted"); without it the budget only goes down to 0 and is reported.
    """

    host: str = "127.0.0.1"
    port: int = 0
    shards: int = 8
    guilds: int = 100
    max_concurrency: int = 1
    identify_window: float = 5.0
    token: str | None = None
    ack_delay: float = 0.02
    heartbeat_interval: float = 41.25
    on_violation: ViolationMode = "count"
    resume_window: float = 60.0
    session_start_total: int = 1000
    reject_when_exhausted: bool = False
    members_per_guild: int = 5
    privileged_intents_allowed: bool = True
    #: a message sent by the handling referee counts as unanswered once it is older than this
    answer_timeout: float = 5.0
    #: dispatches kept per session for RESUME replay (plus one per guild of the shard, for its GUILD_CREATEs)
    resume_buffer: int = 1000
    #: a connection with no heartbeat for ``zombie_factor * heartbeat_interval`` is closed with 4009
    zombie_factor: float = 1.5
    #: gateway commands a connection may send per 60 s before it counts as rate limited (Discord: 120)
    gateway_rate_limit: int = 120
    #: background ``!ping`` traffic started with the server, messages per second (0 = none)
    traffic_rate: float = 0.0
    #: an announced handover overlap (two live sessions of a shard, one a letsfrag successor's) may last this long
    handover_deadline: float = 120.0
    #: ``/gateway/bot`` recommends ``ceil(guilds / guilds_per_shard)`` shards (rounded up to a multiple of
    #: ``max_concurrency``; Discord: about 1000); None = recommend ``shards``
    guilds_per_shard: int | None = None
    #: a shard that would hold more guilds than this is closed with 4011 (at IDENTIFY, or live when guilds are
    #: added); 0 = no limit (Discord: 2500)
    max_guilds_per_shard: int = 2500
    #: seed of the random choices (chaos, traffic guild order); None = not reproducible
    seed: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []

        def need(condition: bool, text: str) -> None:
            if not condition:
                problems.append(text)

        need(bool(self.host), "host: must not be empty")
        need(0 <= self.port <= 65535, f"port: must be 0..65535, found {self.port}")
        need(self.shards >= 1, f"shards: must be at least 1, found {self.shards}")
        need(self.guilds >= 0, f"guilds: cannot be negative, found {self.guilds}")
        need(self.max_concurrency >= 1, f"max_concurrency: must be at least 1, found {self.max_concurrency}")
        need(self.identify_window >= 0, f"identify_window: cannot be negative, found {self.identify_window}")
        need(self.token is None or bool(self.token), "token: must be None or a non-empty string")
        need(self.ack_delay >= 0, f"ack_delay: cannot be negative, found {self.ack_delay}")
        need(self.heartbeat_interval > 0, f"heartbeat_interval: must be positive, found {self.heartbeat_interval}")
        need(
            self.on_violation in VIOLATION_MODES,
            f"on_violation: must be one of {', '.join(VIOLATION_MODES)}, found {self.on_violation!r}",
        )
        need(self.resume_window >= 0, f"resume_window: cannot be negative, found {self.resume_window}")
        need(
            self.session_start_total >= 0,
            f"session_start_total: cannot be negative, found {self.session_start_total}",
        )
        need(self.members_per_guild >= 0, f"members_per_guild: cannot be negative, found {self.members_per_guild}")
        need(self.answer_timeout > 0, f"answer_timeout: must be positive, found {self.answer_timeout}")
        need(self.resume_buffer >= 1, f"resume_buffer: must be at least 1, found {self.resume_buffer}")
        need(self.zombie_factor >= 1, f"zombie_factor: must be at least 1, found {self.zombie_factor}")
        need(self.gateway_rate_limit >= 1, f"gateway_rate_limit: must be at least 1, found {self.gateway_rate_limit}")
        need(self.handover_deadline > 0, f"handover_deadline: must be positive, found {self.handover_deadline}")
        need(self.traffic_rate >= 0, f"traffic_rate: cannot be negative, found {self.traffic_rate}")
        need(
            self.guilds_per_shard is None or self.guilds_per_shard >= 1,
            f"guilds_per_shard: must be at least 1 (or None), found {self.guilds_per_shard}",
        )
        need(self.max_guilds_per_shard >= 0,
             f"max_guilds_per_shard: cannot be negative (0 = no limit), found {self.max_guilds_per_shard}")
        if problems:
            raise ConfigError(problems, source="simulator options")

    def replace(self, **changes: object) -> SimulatorOptions:
        """Return a validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def zombie_timeout(self) -> float:
        """Seconds without a heartbeat after which a connection is reaped (close 4009)."""
        return self.heartbeat_interval * self.zombie_factor
