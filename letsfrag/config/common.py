"""Building blocks shared by every config document: value types, Redis and Discord settings, common keys.

Import them from :mod:`letsfrag.config`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)

from letsfrag.config.source import KeyProblems, describe, mask_url
from letsfrag.units import parse_duration, parse_listen, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; accepts ``500ms``, ``10s``, ``5m``, ``1h``, ``2d`` or a bare number of seconds."""
Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes; accepts ``512MiB``, ``2GiB``, ``100MB`` or a bare number of bytes."""

_SECRET_ENV_WORDS = ("TOKEN", "PASSWORD", "PASSWD", "SECRET", "KEY", "CREDENTIAL")


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, and so are infinite or NaN numbers.

    Validators are built on first use (``defer_build``), so importing :mod:`letsfrag.config` stays cheap and a
    process builds only the documents it reads (a broker never builds the host models).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, defer_build=True)


def _whole_number(value: Any) -> Any:
    """YAML 1.1 reads an unquoted ``yes``/``on`` as true; a count must not quietly become 1."""
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, found {describe(value)}")
    return value


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, found {describe(value)}")
    return value


def _flag(value: Any) -> bool:
    """``true``/``false`` only (also as text, from ``${VAR}``); not 1, 0, ``"yes"`` or ``"on"``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, found {describe(value)}")


Int = Annotated[int, BeforeValidator(_whole_number)]
"""A whole number; booleans (YAML's unquoted ``yes``, ``on``...) are refused."""
Number = Annotated[float, BeforeValidator(_number)]
"""A finite number; booleans are refused."""
Flag = Annotated[bool, BeforeValidator(_flag)]
"""``true`` or ``false`` (numbers and words like ``on`` are refused)."""


def check_name(value: str) -> str:
    """``value`` if it is a usable id or namespace (letters, digits, ``_``, ``.``, ``-``); else ``ValueError``."""
    if not value or not all(c.isascii() and (c.isalnum() or c in "_.-") for c in value):
        raise ValueError(f"expected letters, digits, '_', '.' or '-' only, found {value!r}")
    return value


def _optional_secret(value: Any) -> Any:
    """An empty string (``${VAR:-}``) means "not set"."""
    return None if value == "" else value


def non_empty_secret(value: SecretStr) -> SecretStr:
    """Reject an empty secret (for required secrets such as ``bot.token``)."""
    if not value.get_secret_value():
        raise ValueError("expected a non-empty value, found an empty string")
    return value


Name = Annotated[str, AfterValidator(check_name)]
OptionalSecret = Annotated[SecretStr | None, BeforeValidator(_optional_secret)]


# ------------------------------------------------------------------------------------------------- redis


def _host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, found {value!r}")
    return value


def check_redis_url(value: str) -> str:
    """``value`` if it is a usable Redis URL (scheme, port 1-65535, database number); else ``ValueError``."""
    shown = repr(mask_url(value))
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"expected a URL starting with redis://, rediss:// or unix://, found {shown}")
    parts = urlsplit(value)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"expected a socket path like unix:///run/redis.sock, found {shown}")
        return value
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or parts.netloc.endswith(":"):
        raise ValueError(f"expected a port from 1 to 65535 after the host (redis://host:6379/0), found {shown}")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"expected a database number after the host (redis://host:6379/0), found {shown}")
    return value


class TlsSettings(StrictModel):
    """TLS for the Redis connection (needs a ``rediss://`` URL)."""

    ca_file: str | None = Field(default=None, description="CA bundle to verify the server; default: system CAs")
    cert_file: str | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: str | None = Field(default=None, description="client private key (mutual TLS)")
    verify: Flag = Field(default=True, description="verify the server certificate and host name")


class SentinelSettings(StrictModel):
    """Find the Redis master through Redis Sentinel."""

    master: str = Field(description="name of the monitored master (required)")
    nodes: list[Annotated[str, AfterValidator(_host_port)]] = Field(
        min_length=1, description="sentinel addresses as host:port (at least one)"
    )
    password: OptionalSecret = Field(default=None, description="password of the sentinels (not of the master)")

    def addresses(self) -> list[tuple[str, int]]:
        """``nodes`` as ``(host, port)`` pairs for ``redis.asyncio.Sentinel``."""
        return [(host, int(port)) for host, _, port in (node.rpartition(":") for node in self.nodes)]


class RedisSettings(StrictModel):
    """Where Redis is. In a file: a URL string (shorthand for ``{url: ...}``), a mapping, or ``embedded``."""

    url: Annotated[str, AfterValidator(check_redis_url)] = Field(
        default="redis://127.0.0.1:6379/0", description="redis://, rediss:// (TLS) or unix:// URL"
    )
    username: str | None = Field(default=None, description="ACL user name")
    password: OptionalSecret = Field(default=None, description="password (overrides one inside the URL)")
    tls: TlsSettings | None = Field(default=None, description="TLS files and verification (with rediss://)")
    sentinel: SentinelSettings | None = Field(default=None, description="use Sentinel to find the master")
    _embedded: bool = False

    @classmethod
    def for_embedded(cls) -> RedisSettings:
        """Settings meaning "start a private redis-server" (the literal ``embedded`` in a local config)."""
        settings = cls()
        settings._embedded = True
        return settings

    @property
    def embedded(self) -> bool:
        """True only when the config said ``redis: embedded``."""
        return self._embedded

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> RedisSettings:
        if self.tls is not None and not self.url.startswith("rediss://"):
            raise KeyProblems([(("tls",), f"needs a rediss:// url, found url {mask_url(self.url)!r}")])
        return self

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "url" else value

    @field_serializer("url")
    def _serialize_url(self, url: str, info: SerializationInfo) -> str:
        return mask_url(url) if (info.context or {}).get("mask") else url

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.asyncio.Redis.from_url(self.url, **kwargs)``."""
        kwargs: dict[str, Any] = {}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if self.tls is not None:
            kwargs["ssl_cert_reqs"] = "required" if self.tls.verify else "none"
            kwargs["ssl_check_hostname"] = self.tls.verify
            for key, value in (
                ("ssl_ca_certs", self.tls.ca_file),
                ("ssl_certfile", self.tls.cert_file),
                ("ssl_keyfile", self.tls.key_file),
            ):
                if value is not None:
                    kwargs[key] = value
        return kwargs

    def display_url(self) -> str:
        """Where Redis is, for logs and the TUI; never shows a password."""
        if self.embedded:
            return "embedded"
        if self.sentinel is not None:
            return f"sentinel://{','.join(self.sentinel.nodes)}/{self.sentinel.master}"
        return mask_url(self.url)


class DiscordSettings(StrictModel):
    """Discord endpoints; leave both unset for the real Discord, set both to use the simulator."""

    api_url: str | None = Field(default=None, description="REST base URL, e.g. http://127.0.0.1:8080/api/v10")
    gateway_url: str | None = Field(default=None, description="gateway URL, e.g. ws://127.0.0.1:8080/")

    @field_validator("api_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, found {mask_url(value)!r}")
        return value

    @field_validator("gateway_url")
    @classmethod
    def _ws(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise ValueError(f"expected a ws:// or wss:// URL, found {mask_url(value)!r}")
        return value


class MetricsSettings(StrictModel):
    """The Prometheus endpoint and probes of a broker or a supervisor (``/metrics``, ``/healthz``, ``/readyz``)."""

    listen: str | None = Field(
        default=None, description="HOST:PORT to serve /metrics, /healthz and /readyz on; unset: no listener"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value


# ------------------------------------------------------------------------------------------------ common


def is_secret_env_name(name: str) -> bool:
    """True for a secret-looking environment variable name (``*TOKEN*``, ``*PASSWORD*``, ``*KEY*``...)."""
    return any(word in name.upper() for word in _SECRET_ENV_WORDS)


def mask_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with the values of secret-looking names (:func:`is_secret_env_name`) as ``***``."""
    return {k: "***" if is_secret_env_name(k) else v for k, v in env.items()}


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "***"
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


class CommonSettings(StrictModel):
    """Keys every config has."""

    _allow_embedded: ClassVar[bool] = False

    redis: RedisSettings = Field(
        default_factory=RedisSettings,
        description="a redis://, rediss:// or unix:// URL, or a mapping; local config: also `embedded` (default)",
    )
    namespace: Name = Field(default="letsfrag", description="prefix of every Redis key and channel")
    secret: OptionalSecret = Field(default=None, description="HMAC key signing bus messages; unset: unsigned")
    signature_window: Duration = Field(default=30.0, gt=0, description="signed messages older than this are rejected")
    max_message_bytes: Size = Field(default=1024 * 1024, ge=1, description="largest bus message accepted")
    allow_eval: Flag = Field(default=False, description="allow remote code evaluation in clusters (dangerous)")
    discord: DiscordSettings = Field(default_factory=DiscordSettings, description="Discord endpoints")
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Prometheus metrics and health probes (local: the host's)"
    )

    @field_validator("redis", mode="before")
    @classmethod
    def _redis_shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip() == "embedded":
                if not cls._allow_embedded:
                    raise ValueError(
                        "'embedded' is only allowed in a local config (letsfrag run); "
                        "expected a redis://, rediss:// or unix:// URL, found 'embedded'"
                    )
                return RedisSettings.for_embedded()
            return {"url": value}
        return value

    @field_serializer("redis", mode="wrap")
    def _serialize_redis(self, value: RedisSettings, handler: SerializerFunctionWrapHandler) -> Any:
        return "embedded" if value.embedded else handler(value)

    def masked_dict(self) -> dict[str, Any]:
        """The effective config as plain data, secrets (and URL passwords, secret-looking env) as ``***``."""
        data = _mask(self.model_dump(context={"mask": True}))
        bot = data.get("bot")
        if isinstance(bot, dict) and isinstance(bot.get("env"), dict):
            bot["env"] = mask_env(bot["env"])
        assert isinstance(data, dict)
        return data
