"""``letsfrag broker CONFIG [--broker-id ID]``: run one broker (leader or standby) until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio

from letsfrag.broker.broker import ClusterBroker
from letsfrag.config import BrokerConfig, load_broker_config
from letsfrag.connection import check_redis_credentials

__all__ = ["run", "serve"]

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
