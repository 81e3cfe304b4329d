"""The config documents. Three share their building blocks (no field is defined twice):

* :class:`~letsfrag.config.common.CommonSettings` – redis, namespace, secret, limits, discord (every kind);
* :class:`BrokerSettings` – the layout, leases and identify pacing (broker and local);
* :class:`HostSettings` – host identity, the bot program, restart policy, limits, logs (host and local);
* :class:`LocalSettings` – the embedded redis-server (local only);
* :class:`BrokerConfig`, :class:`HostConfig` and :class:`LocalConfig` combine them.

Import them from :mod:`letsfrag.config`. Durations are floats of seconds, sizes ints of bytes.
"""

from __future__ import annotations

import shlex
import socket
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator

from letsfrag.claims import DEFAULT_CLAIM_EVENTS, check_claim_events
from letsfrag.config.common import (
    CommonSettings,
    Duration,
    Int,
    MetricsSettings,
    Name,
    Number,
    OptionalSecret,
    RedisSettings,
    Size,
    StrictModel,
    mask_env,
    non_empty_secret,
)
from letsfrag.config.source import KeyProblems, Loc

# ------------------------------------------------------------------------------------------------ broker


def _int_or_auto(value: Any) -> int | str:
    """Accept a whole number >= 1 or the word ``auto``."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        shown = repr(value) if isinstance(value, str) else "null" if value is None else str(value).lower()
        raise ValueError(f"expected a whole number >= 1 or 'auto', found {shown}")
    return value


IntOrAuto = Annotated[int | Literal["auto"], BeforeValidator(_int_or_auto)]


class HostsSettings(StrictModel):
    """How many hosts the broker waits for before the first assignment."""

    expected: Int = Field(default=1, ge=0, description="hosts to wait for before assigning clusters on a cold start")
    startup_grace: Duration = Field(default=10.0, ge=0, description="longest wait for `expected` hosts")


class LeaseSettings(StrictModel):
    """Host leases: a host's clusters move only after its lease expired plus grace."""

    ttl: Duration = Field(default=10.0, gt=0, description="lifetime of a host lease, renewed every heartbeat_interval")
    grace: Duration = Field(default=2.0, ge=0, description="extra wait after a lease expired before reassigning")


class ReshardSettings(StrictModel):
    """Automatic resharding (opt-in): the leader reshards when a shard holds too many guilds."""

    auto: bool = Field(default=False, description="reshard by itself when a shard holds more than "
                       "max_guilds_per_shard guilds (to the /gateway/bot count if more, else twice the shards)")
    max_guilds_per_shard: Int = Field(default=1500, ge=1, le=2500, description="guilds a shard may hold before an "
                                      "automatic reshard (Discord closes a shard past 2,500 with 4011)")
    check_interval: Duration = Field(default=28800.0, gt=0, description="how often the leader checks the guild "
                                     "counts the clusters report")


class BrokerSettings(StrictModel):
    """Keys of the broker (also part of a local config)."""

    shards: IntOrAuto = Field(default="auto", description="total shard count, or 'auto' to ask Discord (needs token)")
    shards_per_cluster: Int = Field(default=8, ge=1, description="shards per cluster process (contiguous blocks)")
    max_concurrency: IntOrAuto = Field(
        default=1, description="IDENTIFY buckets, or 'auto' to ask Discord (needs token)"
    )
    token: OptionalSecret = Field(
        default=None, description="bot token for 'auto' lookups; local: defaults to bot.token"
    )
    hosts: HostsSettings = Field(default_factory=HostsSettings, description="cold-start wait for hosts")
    lease: LeaseSettings = Field(default_factory=LeaseSettings, description="host lease timing")
    heartbeat_interval: Duration = Field(default=2.0, gt=0, description="lease renewal period; must be < lease.ttl / 2")
    rebalance: Literal["on-join", "manual"] = Field(
        default="on-join", description="'on-join': move clusters to a host that joins; 'manual': only on request"
    )
    identify_window: Duration = Field(default=5.0, gt=0, description="Discord's IDENTIFY rate window per bucket")
    identify_reserve: Number = Field(default=0.1, ge=0, le=1, description="share of the daily session budget kept back")
    leader_ttl: Duration = Field(default=10.0, gt=0, description="lifetime of the broker leader lock")
    handover_timeout: Duration = Field(
        default=120.0, gt=0, description="how long a planned handover's successor may take to be READY before it "
        "is rolled back"
    )
    reshard: ReshardSettings = Field(default_factory=ReshardSettings, description="automatic resharding")
    broker_id: str | None = Field(default=None, description="id of this broker process; unset: hostname and pid")

    def effective_token(self) -> SecretStr | None:
        """The token used for ``auto`` lookups."""
        return self.token

    @model_validator(mode="after")
    def _cross_checks(self) -> BrokerSettings:
        problems: list[tuple[Loc, str]] = []
        half = self.lease.ttl / 2
        if self.heartbeat_interval >= half:
            problems.append((("heartbeat_interval",), (
                f"expected less than lease.ttl / 2 = {half:g}s (hosts renew at least twice per lease), "
                f"found {self.heartbeat_interval:g}s"
            )))
        autos = [name for name in ("shards", "max_concurrency") if getattr(self, name) == "auto"]
        if autos and self.effective_token() is None:
            verb = "is" if len(autos) == 1 else "are"
            problems.append((("token",), (
                f"required key is missing: {' and '.join(autos)} {verb} 'auto' (set token, or give a number)"
            )))
        if problems:
            raise KeyProblems(problems)
        return self


# -------------------------------------------------------------------------------------------------- host


def _command(value: Any) -> Any:
    """Accept a command as a list, or as one string split like a shell would."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"expected a command line, found {value!r} ({exc})") from None
    return value


def _module_path(value: str) -> str:
    if not all(part.isidentifier() for part in value.split(".")):
        raise ValueError(f"expected a Python module path like examples.bot, found {value!r}")
    return value


class HostIdentity(StrictModel):
    """Who this host is and how many clusters it runs."""

    id: Name = Field(
        default_factory=socket.gethostname,
        description="host id in Redis (letters, digits, '_', '.', '-')",
        json_schema_extra={"default_text": "the machine's hostname"},
    )
    capacity: Int = Field(default=4, ge=0, description="most clusters run at once (0: a standby host)")


class BotSettings(StrictModel):
    """The bot program each cluster process runs: exactly one of ``command`` or ``module``."""

    command: Annotated[list[str], BeforeValidator(_command), Field(min_length=1)] | None = Field(
        default=None, description="program and arguments (a list, or one shell-like string)"
    )
    module: Annotated[str, AfterValidator(_module_path)] | None = Field(
        default=None, description="Python module run as `python -m module` with the supervisor's Python"
    )
    launcher: Literal["fork", "exec"] | None = Field(
        default=None, description="`fork`: clusters forked from a pre-loaded launcher (`module` only); `exec`: a "
        "fresh interpreter each; unset: `fork` for `module`, `exec` for `command` (docs/launcher.md)"
    )
    cwd: str | None = Field(default=None, description="working directory of cluster processes; unset: current")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra environment variables of cluster processes (quote numbers and yes/no/on/off)",
    )
    token: Annotated[SecretStr, AfterValidator(non_empty_secret)] = Field(
        description="the bot token (required; write ${BOT_TOKEN})"
    )
    redis_username: str | None = Field(
        default=None, description="Redis ACL user of cluster processes (unset: the host's own; docs/security.md)"
    )
    redis_password: OptionalSecret = Field(default=None, description="password of `bot.redis_username`")

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_env(value) if name == "env" else value

    @model_validator(mode="after")
    def _one_program(self) -> BotSettings:
        if self.command is not None and self.module is not None:
            raise KeyProblems([((), "expected exactly one of command or module, found both")])
        if self.command is None and self.module is None:
            raise KeyProblems([((), "expected exactly one of command or module, found neither")])
        if self.launcher == "fork" and self.command is not None:
            raise KeyProblems([(("launcher",), "fork needs bot.module (bot.command is always exec'd)")])
        if self.redis_password is not None and self.redis_username is None:
            raise KeyProblems([(("redis_password",), "needs bot.redis_username (the ACL user it belongs to)")])
        return self


class BackoffSettings(StrictModel):
    """Delay between restarts of a crashed cluster: initial × factor^n, capped at max, with jitter."""

    initial: Duration = Field(default=1.0, ge=0, description="first restart delay")
    factor: Number = Field(default=2.0, ge=1, description="multiplier per consecutive failure")
    max: Duration = Field(default=60.0, ge=0, description="largest delay")
    jitter: Number = Field(default=0.2, ge=0, le=1, description="random spread as a fraction (0.2 = ±20 %)")
    reset_after: Duration = Field(default=600.0, ge=0, description="healthy time after which delays start over")

    @model_validator(mode="after")
    def _ordered(self) -> BackoffSettings:
        if self.max < self.initial:
            raise KeyProblems([(("max",), f"expected at least initial ({self.initial:g}s), found {self.max:g}s")])
        return self


class RestartSettings(StrictModel):
    """When a cluster process is restarted, and when its supervisor gives up (state FAILED)."""

    policy: Literal["always", "on-failure", "never"] = Field(
        default="always", description="restart after any exit, only after a failure, or never"
    )
    backoff: BackoffSettings = Field(default_factory=BackoffSettings, description="restart delays")
    max_restarts: Int = Field(default=5, ge=0, description="restarts allowed within `window` before giving up")
    window: Duration = Field(default=600.0, gt=0, description="sliding window counted by max_restarts")


class LimitsSettings(StrictModel):
    """Health limits of a cluster process."""

    max_memory: Size | None = Field(default=None, description="restart when RSS is above this on 3 samples in a row")
    hang_timeout: Duration = Field(default=30.0, gt=0, description="restart when the event loop sent no heartbeat")
    stop_timeout: Duration = Field(default=10.0, gt=0, description="wait after a stop request before SIGTERM/SIGKILL")
    leave_timeout: Duration = Field(
        default=60.0, ge=0, description="on SIGTERM, wait up to this long for the broker to hand this host's "
        "clusters to other hosts before stopping what is left (0: stop at once)")


class LogsSettings(StrictModel):
    """Log files of the cluster processes (their stdout and stderr)."""

    dir: str = Field(default="logs", description="directory of the log files (relative: to the working directory)")
    max_bytes: Size = Field(default=10 * 1024 * 1024, ge=1, description="rotate a log file at this size")
    backups: Int = Field(default=3, ge=0, description="rotated files kept per cluster")


class HostSettings(StrictModel):
    """Keys of the host supervisor (also part of a local config)."""

    host: HostIdentity = Field(default_factory=HostIdentity, description="this host")
    bot: BotSettings = Field(description="the bot program (required)")
    restart: RestartSettings = Field(default_factory=RestartSettings, description="restart policy")
    limits: LimitsSettings = Field(default_factory=LimitsSettings, description="health limits")
    logs: LogsSettings = Field(default_factory=LogsSettings, description="log files")
    sample_interval: Duration = Field(default=2.0, gt=0, description="how often CPU and memory are sampled")
    claim_events: Annotated[list[str], AfterValidator(lambda names: list(check_claim_events(names)))] = Field(
        default=list(DEFAULT_CLAIM_EVENTS),
        description="gateway events a cluster claims in Redis before handling (each handled once); [] for none",
    )


# ------------------------------------------------------------------------------------------ the documents


class EmbeddedSettings(StrictModel):
    """The private redis-server of ``letsfrag run`` when ``redis: embedded``."""

    dir: str = Field(default=".letsfrag", description="private (0700) directory of its unix socket, data, lock, "
                     "URL and secret files; relative: to the working directory")
    port: Int = Field(default=0, ge=0, le=65535, description="also listen on this TCP port of 127.0.0.1, "
                      "with a random password; 0: the unix socket only")


class LocalSettings(StrictModel):
    """Keys only a local config has."""

    embedded: EmbeddedSettings = Field(
        default_factory=EmbeddedSettings, description="the redis-server started for redis: embedded"
    )


class BrokerConfig(BrokerSettings, CommonSettings):
    """A broker document (``letsfrag broker -c broker.yaml``)."""


class HostConfig(HostSettings, CommonSettings):
    """A host document (``letsfrag supervise -c host.yaml``)."""


class LocalConfig(LocalSettings, HostSettings, BrokerSettings, CommonSettings):
    """Broker and one host in one flat document (``letsfrag run -c local.yaml``); redis defaults to embedded."""

    _allow_embedded: ClassVar[bool] = True
    redis: RedisSettings = Field(
        default_factory=RedisSettings.for_embedded,
        description="'embedded' (start a private redis-server), a URL, or a mapping",
    )

    def effective_token(self) -> SecretStr | None:
        """The broker token, falling back to ``bot.token``."""
        return self.token or self.bot.token

    def broker_config(self, redis: RedisSettings | str | None = None) -> BrokerConfig:
        """The broker part (token defaults to bot.token); ``redis`` replaces an embedded server's settings."""
        data = {name: getattr(self, name) for name in BrokerConfig.model_fields}
        data["token"] = self.effective_token()
        data["metrics"] = MetricsSettings()  # a local config's listener is the host's
        if redis is not None:
            data["redis"] = redis
        return BrokerConfig.model_validate(data)

    def host_config(self, redis: RedisSettings | str | None = None) -> HostConfig:
        """The host part; ``redis`` replaces an embedded server's settings once its URL is known."""
        data = {name: getattr(self, name) for name in HostConfig.model_fields}
        if redis is not None:
            data["redis"] = redis
        return HostConfig.model_validate(data)
