"""``letsfrag broker CONFIG [--broker-id ID]``: run one broker (leader or standby) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from redis.exceptions import AuthenticationError, RedisError, ResponseError

from letsfrag.config import BrokerConfig, RedisSettings, load_broker_config
from letsfrag.connection import create_redis, display_url
from letsfrag.errors import ConfigError

from .broker import ClusterBroker

__all__ = ["check_redis_credentials", "run", "serve"]

_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM")


async def check_redis_credentials(settings: RedisSettings) -> None:
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


async def serve(config: BrokerConfig, broker_id: str | None = None) -> int:
    """Run a broker with signal handling; return the exit code (0 after SIGINT/SIGTERM)."""
    await check_redis_credentials(config.redis)
    broker = ClusterBroker(config, broker_id=broker_id, handle_signals=True)
    await broker.serve_forever()
    return 0


def run(args: argparse.Namespace) -> int:
    """The CLI handler; a bad config raises ``ConfigError`` (printed by the CLI, exit code 2)."""
    config = load_broker_config(args.config)
    return asyncio.run(serve(config, getattr(args, "broker_id", None)))
