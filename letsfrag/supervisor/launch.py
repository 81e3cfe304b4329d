"""How a cluster process is launched: its argv, its environment and the parent-death signal.

Secrets travel only in the environment (``LETSFRAG_TOKEN``, ``LETSFRAG_REDIS``, ``LETSFRAG_SECRET``), never in
argv, where ``ps`` would show them to every user of the machine.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr

from letsfrag.config import HostConfig
from letsfrag.environment import ClusterEnvironment
from letsfrag.ipc import ENV_IPC_FD
from letsfrag.logs import register_secret

__all__ = ["build_argv", "build_env", "cluster_environment", "parent_death_preexec", "plain_redis_settings"]

PR_SET_PDEATHSIG = 1


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
    """Mask the token, Redis passwords and the signing secret in every log line."""
    register_secret(config.bot.token.get_secret_value())
    if config.secret is not None:
        register_secret(config.secret.get_secret_value())
    if config.redis.password is not None:
        register_secret(config.redis.password.get_secret_value())
    if config.bot.redis_password is not None:
        register_secret(config.bot.redis_password.get_secret_value())
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
    broker_allows_eval: bool = False,
) -> ClusterEnvironment:
    """The environment contract of one cluster process (see :mod:`letsfrag.environment`).

    The cluster's bus gets this host's ``signature_window`` and ``max_message_bytes``; ``allow_eval`` is set only
    when both this host's config and the broker's (``broker_allows_eval``, from ``{ns}:layout``) allow it.
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


def parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the supervisor dies (None elsewhere).

    If the supervisor already died between fork and exec, the child terminates itself at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def _preexec() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return _preexec
