"""Creating redis-py asyncio clients from letsfrag's Redis settings (URL, ACL, TLS, Sentinel)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import RedisSettings

#: socket timeouts keep every command bounded while Redis is unreachable
CLIENT_DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "health_check_interval": 0,
    "decode_responses": True,
}


def _retry() -> Retry:
    """Retry a command once or twice on a stale pooled connection (e.g. right after a Redis restart)."""
    return Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)



def create_redis(settings: RedisSettings | str, **overrides: Any) -> aioredis.Redis:
    """Return an asyncio Redis client for ``settings`` (a URL or a ``RedisSettings``).

    With ``sentinel`` configured the client follows the current master through the sentinels.
    """
    kwargs = dict(CLIENT_DEFAULTS)
    kwargs["retry"] = _retry()
    kwargs["retry_on_error"] = [RedisConnectionError, RedisTimeoutError, ConnectionResetError]
    kwargs.update(overrides)
    if isinstance(settings, str):
        return aioredis.Redis.from_url(settings, **kwargs)
    kwargs.update(settings.client_kwargs())
    kwargs.update(overrides)
    if settings.sentinel is not None:
        nodes = []
        for node in settings.sentinel.nodes:
            host, _, port = node.rpartition(":")
            nodes.append((host or "127.0.0.1", int(port)))
        sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": kwargs["socket_connect_timeout"]}
        if settings.sentinel.password is not None:
            sentinel_kwargs["password"] = settings.sentinel.password.get_secret_value()
        sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs, **kwargs)
        return sentinel.master_for(settings.sentinel.master)
    return aioredis.Redis.from_url(settings.url, **kwargs)


def display_url(settings: RedisSettings | str) -> str:
    """The Redis address without any password, for logs and dashboards."""
    if isinstance(settings, str):
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(settings)
        if parts.password:
            netloc = parts.netloc.rsplit("@", 1)[1]
            user = parts.username or ""
            netloc = f"{user}:***@{netloc}" if user else f"***@{netloc}"
            return urlunsplit(parts._replace(netloc=netloc))
        return settings
    return settings.display_url()


_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM")


async def check_redis_credentials(settings: RedisSettings | str) -> None:
    """Raise ``ConfigError`` (exit 2) when Redis rejects the configured user/password.

    An unreachable Redis is not an error here: components wait for it. Wrong credentials never heal, so they
    fail at once with one line (the password is never part of it)."""
    client = create_redis(settings)
    try:
        await client.ping()
    except (AuthenticationError, ResponseError) as exc:
        if isinstance(exc, ResponseError) and not str(exc).upper().startswith(_AUTH_REPLIES):
            return
        raise ConfigError(f"redis: authentication failed at {display_url(settings)} ({exc}); "
                          "check redis.username and redis.password") from None
    except (RedisError, OSError):
        return
    finally:
        await client.aclose()
