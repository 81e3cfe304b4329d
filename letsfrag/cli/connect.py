"""How a command-line tool finds the deployment: ``--config``, ``--redis``, ``--namespace``, ``--secret-env``.

Precedence: ``--redis`` and ``--namespace`` override the config file; the secret comes from the environment
variable named by ``--secret-env`` (default ``LETSFRAG_SECRET``), else from the config. For a local config
with ``redis: embedded`` the URL (and, when the config sets no secret, the per-run signing secret) are the ones
the running ``letsfrag run`` wrote to ``<embedded.dir>/redis.url`` and ``<embedded.dir>/secret`` (a relative
``embedded.dir`` is looked up relative to the working directory, as ``letsfrag run`` does).
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from ..config import LocalConfig, RedisSettings, load_config_file
from ..config.common import check_redis_url
from ..errors import ConfigError
from ..logs import mask_urls, register_secrets_in
from .embedded import EmbeddedDir

__all__ = ["DEFAULT_REDIS_URL", "connection_from_args", "embedded_url", "tool_node_id"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def tool_node_id() -> str:
    """The bus node id of an operator tool: ``tool:{hostname}-{pid}`` (docs/redis.md)."""
    return f"tool:{socket.gethostname()}-{os.getpid()}"


def embedded_url(config: LocalConfig, config_path: str | Path) -> str:
    """The URL of the embedded Redis of a running ``letsfrag run``; ``ConfigError`` if none is running."""
    state = EmbeddedDir.of(config)
    url = state.read(EmbeddedDir.URL)
    if url:
        return url
    raise ConfigError(
        f"{config_path}: redis is 'embedded' but no running `letsfrag run` was found (no readable "
        f"{state.path / EmbeddedDir.URL}); start `letsfrag run` first (in the same directory) or pass --redis URL"
    )


def connection_from_args(args: argparse.Namespace) -> tuple[RedisSettings | str, str, str | None]:
    """``(redis settings or URL, namespace, secret)`` from parsed arguments; raises ``ConfigError``."""
    config_path = getattr(args, "config", None)
    redis: RedisSettings | str = DEFAULT_REDIS_URL
    namespace = "letsfrag"
    secret: str | None = None
    if config_path:
        config = load_config_file(config_path)
        namespace = config.namespace
        secret = config.secret.get_secret_value() if config.secret is not None else None
        if config.redis.embedded:
            assert isinstance(config, LocalConfig)
            if not getattr(args, "redis", None):
                redis = embedded_url(config, config_path)
            secret = secret or EmbeddedDir.of(config).read(EmbeddedDir.SECRET)
        else:
            redis = config.redis
    if getattr(args, "redis", None):
        try:
            redis = check_redis_url(str(args.redis))
        except ValueError as exc:
            raise ConfigError(f"--redis: {mask_urls(str(exc))}") from None
    if getattr(args, "namespace", None):
        namespace = str(args.namespace)
    env_name = getattr(args, "secret_env", None) or "LETSFRAG_SECRET"
    secret = os.environ.get(env_name) or secret
    register_secrets_in({"secret": secret, "redis": redis})
    return redis, namespace, secret
