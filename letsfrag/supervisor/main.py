"""``letsfrag supervise CONFIG [--host-id ID] [--capacity N]``: run the host supervisor until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio

from letsfrag.config import HostConfig, load_host_config
from letsfrag.config.common import check_name
from letsfrag.connection import check_redis_credentials
from letsfrag.errors import ConfigError
from letsfrag.supervisor.manager import ClusterManager

__all__ = ["run", "serve"]

def _overrides(args: argparse.Namespace) -> tuple[str | None, int | None]:
    host_id = getattr(args, "host_id", None)
    capacity = getattr(args, "capacity", None)
    if host_id is not None:
        try:
            check_name(host_id)
        except ValueError as exc:
            raise ConfigError(f"--host-id: {exc}") from None
    if capacity is not None and capacity < 0:
        raise ConfigError(f"--capacity: expected a whole number >= 0, found {capacity}")
    return host_id, capacity


async def serve(config: HostConfig, *, host_id: str | None = None, capacity: int | None = None) -> int:
    """Run a supervisor with signal handling until it was asked to stop; return the exit code."""
    await check_redis_credentials(config.redis)
    manager = ClusterManager(config, handle_signals=True, host_id=host_id, capacity=capacity)
    try:
        await manager.serve_forever()
    finally:
        await manager.close()
    return 0


def run(args: argparse.Namespace) -> int:
    """The ``supervise`` subcommand (see :data:`letsfrag.cli.HANDLERS`)."""
    config = load_host_config(args.config, check_program=True)
    host_id, capacity = _overrides(args)
    return asyncio.run(serve(config, host_id=host_id, capacity=capacity))
