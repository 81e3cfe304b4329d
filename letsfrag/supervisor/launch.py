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
from letsfrag.config.common import is_secret_env_name
from letsfrag.environment import ClusterEnvironment
from letsfrag.ipc import ENV_IPC_FD
from letsfrag.lifeline import parent_death_preexec  # the cluster's preexec_fn (re-exported)
from letsfrag.logs import active_log_format, register_secret, register_secrets_in

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
    """The Redis settings of cluster processes as plain JSON-able data, passwords included (for the child's
    environment only): the host's, with ``bot.redis_username``/``bot.redis_password`` when set."""
    data = _unwrap(config.redis.model_dump())
    assert isinstance(data, dict)
    if config.bot.redis_username is not None:
        data["username"] = config.bot.redis_username
        data.pop("password", None)
        if config.bot.redis_password is not None:
            data["password"] = config.bot.redis_password.get_secret_value()
    return data


def register_config_secrets(config: HostConfig) -> None:
    """Mask the token, Redis passwords (also one inside ``redis.url``), the signing secret and the values of
    secret-looking ``bot.env`` names in every log line and everything written to Redis."""
    register_secrets_in(config)
    if config.bot.redis_password is not None:
        register_secret(config.bot.redis_password.get_secret_value())
    for name, value in config.bot.env.items():
        if is_secret_env_name(name):
            register_secret(value)


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
    broker_allows_eval: bool = False,
    handover: bool = False,
    run: str = "",
    dead_runs: tuple[str, ...] = (),
) -> ClusterEnvironment:
    """The environment contract of one cluster process (see :mod:`letsfrag.environment`).

    The cluster's bus gets this host's ``signature_window`` and ``max_message_bytes``; ``allow_eval`` is set only
    when both this host's config and the broker's (``broker_allows_eval``, from ``{ns}:layout``) allow it.
    ``run`` / ``dead_runs``: this process run's identity and the earlier runs of the cluster and epoch that were
    reaped (:func:`run_identity`).
    """
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
        signature_window=config.signature_window,
        max_message_bytes=config.max_message_bytes,
        claim_events=tuple(config.claim_events),
        allow_eval=config.allow_eval and broker_allows_eval,
        handover=handover,
        run=run,
        dead_runs=dead_runs,
        log_format="json" if active_log_format() == "json" else "plain",
    )


def run_identity(prefix: str, token: int) -> str:
    """The identity of one process run (``LETSFRAG_RUN``): the supervisor run's ``prefix`` and the run's token."""
    return f"{prefix}.{token}"


def build_env(config: HostConfig, environment: ClusterEnvironment, ipc_fd: int,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``os.environ`` + the letsfrag contract + ``bot.env`` + ``LETSFRAG_IPC_FD``."""
    env = dict(os.environ if base is None else base)
    env.update(environment.to_env())
    env.update(config.bot.env)
    env[ENV_IPC_FD] = str(ipc_fd)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
