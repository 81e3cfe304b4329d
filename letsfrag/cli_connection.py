"""How a command-line tool finds the deployment: ``--config``, ``--redis``, ``--namespace``, ``--secret-env``.

Precedence: ``--redis`` and ``--namespace`` override the config file; the secret comes from the environment
variable named by ``--secret-env`` (default ``LETSFRAG_SECRET``), else from the config. For a local config
with ``redis: embedded`` the URL is the one the running ``letsfrag run`` wrote to ``<embedded.dir>/redis.url``
(looked up relative to the working directory, then to the config file's directory).
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from .config import LocalConfig, RedisSettings, load_config_file
from .config_common import check_redis_url
from .errors import ConfigError
from .logs import mask_urls, register_secrets_in

__all__ = ["DEFAULT_REDIS_URL", "connection_from_args", "embedded_url", "tool_node_id"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: the file ``letsfrag run`` writes the embedded server's URL to, inside ``embedded.dir``
EMBEDDED_URL_FILE = "redis.url"


def tool_node_id() -> str:
    """The bus node id of an operator tool: ``tool:{hostname}-{pid}`` (docs/redis.md)."""
    return f"tool:{socket.gethostname()}-{os.getpid()}"


def embedded_url(config: LocalConfig, config_path: str | Path) -> str:
    """The URL of the embedded Redis of a running ``letsfrag run``; ``ConfigError`` if none is running."""
    directory = Path(config.embedded.dir)
    candidates = [directory] if directory.is_absolute() else [Path.cwd() / directory,
                                                               Path(config_path).parent / directory]
    for candidate in candidates:
        url_file = candidate / EMBEDDED_URL_FILE
        try:
            url = url_file.read_text().strip()
        except OSError:
            continue
        if url:
            return url
    shown = ", ".join(str(c / EMBEDDED_URL_FILE) for c in candidates)
    raise ConfigError(
        f"{config_path}: redis is 'embedded' but no running `letsfrag run` was found (no {shown}); "
        "start `letsfrag run` first or pass --redis URL"
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
            if not getattr(args, "redis", None):
                assert isinstance(config, LocalConfig)
                redis = embedded_url(config, config_path)
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
