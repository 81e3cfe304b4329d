"""How a cluster process is launched: its argv, its environment and the parent-death signal (from lifeline).

Secrets travel only in the environment (``LETSFRAG_TOKEN``, ``LETSFRAG_REDIS``, ``LETSFRAG_SECRET``), never in
argv, where ``ps`` would show them to every user of the machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from letsfrag.config import HostConfig
from letsfrag.environment import ClusterEnvironment
from letsfrag.ipc import ENV_IPC_FD
from letsfrag.lifeline import parent_death_preexec  # the cluster's preexec_fn (re-exported)
from letsfrag.logs import register_secret

__all__ = ["build_argv", "build_env", "cluster_environment", "parent_death_preexec", "plain_redis_settings"]


def build_argv(config: HostConfig) -> list[str]:
    """``bot.command`` as given, or ``[python, -m, bot.module]`` with the supervisor's interpreter."""
    if config.bot.command:
        return list(config.bot.command)
    assert config.bot.module is not None  # the config model requires exactly one of the two
    return [sys.executable, "-m", config.bot.module]


def _unwrap(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_unwrap(v) for v in value]
    return value


def plain_redis_settings(config: HostConfig) -> dict[str, Any]:
    """The Redis settings as plain JSON-able data, passwords included (for the child's environment only)."""
    data = _unwrap(config.redis.model_dump())
    assert isinstance(data, dict)
    return data


def register_config_secrets(config: HostConfig) -> None:
    """Mask the token, Redis passwords and the signing secret in every log line."""
    register_secret(config.bot.token.get_secret_value())
    if config.secret is not None:
        register_secret(config.secret.get_secret_value())
    if config.redis.password is not None:
        register_secret(config.redis.password.get_secret_value())
    if config.redis.sentinel is not None and config.redis.sentinel.password is not None:
        register_secret(config.redis.sentinel.password.get_secret_value())


def cluster_environment(
    config: HostConfig,
    *,
    cluster_id: int,
    shard_ids: tuple[int, ...],
    shard_count: int,
    host_id: str,
    incarnation: str,
    epoch: int,
    heartbeat_interval: float,
    lease_ttl: float,
    max_concurrency: int,
    identify_window: float,
) -> ClusterEnvironment:
    """The environment contract of one cluster process (see :mod:`letsfrag.environment`)."""
    return ClusterEnvironment(
        cluster_id=cluster_id,
        shard_ids=shard_ids,
        shard_count=shard_count,
        host_id=host_id,
        host_incarnation=incarnation,
        epoch=epoch,
        redis=plain_redis_settings(config),
        namespace=config.namespace,
        token=config.bot.token.get_secret_value(),
        secret=config.secret.get_secret_value() if config.secret is not None else None,
        discord_api_url=config.discord.api_url,
        discord_gateway_url=config.discord.gateway_url,
        heartbeat_interval=heartbeat_interval,
        lease_ttl=lease_ttl,
        max_concurrency=max_concurrency,
        identify_window=identify_window,
        allow_eval=config.allow_eval,
    )


def build_env(config: HostConfig, environment: ClusterEnvironment, ipc_fd: int,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` + the letsfrag contract + ``bot.env`` + ``LETSFRAG_IPC_FD``."""
    env = dict(os.environ if base is None else base)
    env.update(environment.to_env())
    env.update(config.bot.env)
    env[ENV_IPC_FD] = str(ipc_fd)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
