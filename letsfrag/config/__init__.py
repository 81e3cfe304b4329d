"""Configuration of the broker, the host supervisor and ``letsfrag run`` (local).

Files are YAML with unknown keys forbidden; string values may use ``${VAR}`` and ``${VAR:-default}``.
Loading collects every problem and raises :class:`letsfrag.errors.ConfigError`, one line per problem:
``configs/host.yaml:12: restart.backoff.factor: expected a number >= 1, found 0.5``.
Models: :mod:`letsfrag.config.common` and :mod:`letsfrag.config.models`; reading: :mod:`letsfrag.config.source`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from letsfrag.config.common import (
    CommonSettings,
    DiscordSettings,
    Duration,
    RedisSettings,
    SentinelSettings,
    Size,
    TlsSettings,
)
from letsfrag.config.models import (
    BackoffSettings,
    BotSettings,
    BrokerConfig,
    BrokerSettings,
    EmbeddedSettings,
    HostConfig,
    HostIdentity,
    HostSettings,
    HostsSettings,
    LeaseSettings,
    LimitsSettings,
    LocalConfig,
    LocalSettings,
    LogsSettings,
    RestartSettings,
)
from letsfrag.config.program import program_problems
from letsfrag.config.reference import reference_markdown
from letsfrag.config.source import read_source, validate
from letsfrag.errors import ConfigError

__all__ = [
    "BackoffSettings", "BotSettings", "BrokerConfig", "BrokerSettings", "CommonSettings", "ConfigKind",
    "DiscordSettings", "Duration", "EmbeddedSettings", "HostConfig", "HostIdentity", "HostSettings",
    "HostsSettings", "LeaseSettings", "LimitsSettings", "LocalConfig", "LocalSettings", "LogsSettings",
    "RedisSettings", "RestartSettings", "SentinelSettings", "Size", "TlsSettings", "check_config_file",
    "config_reference_markdown", "detect_kind", "kind_of", "load_broker_config", "load_config_file",
    "load_host_config", "load_local_config",
]

ConfigKind = Literal["broker", "host", "local"]
AnyConfig = BrokerConfig | HostConfig | LocalConfig

_MODELS: dict[ConfigKind, type[AnyConfig]] = {"broker": BrokerConfig, "host": HostConfig, "local": LocalConfig}


def detect_kind(data: Mapping[str, Any]) -> ConfigKind:
    """``local`` if ``bot`` plus a broker-only or local-only key (or ``redis: embedded``); ``host`` if ``bot``
    or ``host``; else ``broker``."""
    broker_only = set(BrokerSettings.model_fields) | set(LocalSettings.model_fields)
    if "bot" in data and (broker_only & set(data) or data.get("redis") == "embedded"):
        return "local"
    if "bot" in data or "host" in data:
        return "host"
    return "broker"


def _load(kind: ConfigKind | None, path: str | Path, env: Mapping[str, str] | None,
          check_program: bool = False) -> AnyConfig:
    source = read_source(path, env)
    detected = detect_kind(source.data)
    try:
        result = validate(_MODELS[kind or detected], source)
    except ConfigError as exc:
        if kind is not None and detected != kind:
            exc.problems.append(f"{source.name}: hint: this looks like a {detected} config, not a {kind} config")
            exc.args = ("\n".join(exc.problems),)
        raise
    assert isinstance(result, BrokerConfig | HostConfig | LocalConfig)
    if check_program and isinstance(result, HostConfig | LocalConfig):
        for loc, message in program_problems(result.bot):
            source.add(loc, message)
        if source.problems:
            raise ConfigError(source.formatted_problems(), source.name)
    return result


def load_broker_config(path: str | Path, env: Mapping[str, str] | None = None) -> BrokerConfig:
    """Load a broker config; ``env`` replaces ``os.environ`` for ``${VAR}``. Raises ConfigError."""
    result = _load("broker", path, env)
    assert isinstance(result, BrokerConfig)
    return result


def load_host_config(path: str | Path, env: Mapping[str, str] | None = None, *,
                     check_program: bool = False) -> HostConfig:
    """Load a host config; ``env`` replaces ``os.environ`` for ``${VAR}``. Raises ConfigError.

    ``check_program``: also require the bot program on this machine (:mod:`letsfrag.config.program`).
    """
    result = _load("host", path, env, check_program)
    assert isinstance(result, HostConfig)
    return result


def load_local_config(path: str | Path, env: Mapping[str, str] | None = None, *,
                      check_program: bool = False) -> LocalConfig:
    """Load a local config; ``env`` replaces ``os.environ`` for ``${VAR}``. Raises ConfigError.

    ``check_program``: also require the bot program on this machine (:mod:`letsfrag.config.program`).
    """
    result = _load("local", path, env, check_program)
    assert isinstance(result, LocalConfig)
    return result


def load_config_file(path: str | Path, env: Mapping[str, str] | None = None) -> AnyConfig:
    """Load a config of whichever kind the file is (see :func:`detect_kind`). Raises ConfigError."""
    return _load(None, path, env)


def kind_of(config: CommonSettings) -> ConfigKind:
    """``broker``, ``host`` or ``local`` for a loaded config."""
    for kind, model in _MODELS.items():
        if type(config) is model:
            return kind
    raise TypeError(f"not a letsfrag config: {type(config).__name__}")


def check_config_file(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """``(0, header + effective config as YAML, secrets masked)`` or ``(2, one line per problem)``.

    Beyond loading, a host or local config's bot program must exist on this machine
    (:func:`letsfrag.config.program.program_problems`).
    """
    try:
        config = _load(None, path, env, check_program=True)
    except ConfigError as exc:
        return 2, "\n".join(exc.problems)
    body = yaml.safe_dump(config.masked_dict(), sort_keys=False, allow_unicode=True)
    return 0, f"{path}: valid {kind_of(config)} config\n{body}"


def config_reference_markdown() -> str:
    """The reference of every key; ``docs/config.md`` is exactly this text (a test keeps it so)."""
    return reference_markdown([
        ("Common keys (broker, host and local)", CommonSettings),
        ("Broker keys (broker and local)", BrokerSettings),
        ("Host keys (host and local)", HostSettings),
        ("Local-only keys", LocalSettings),
    ])
