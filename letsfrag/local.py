"""``letsfrag run``: broker and host supervisor in one command for a single machine.

With ``redis: embedded`` (the default of ``configs/local.yaml``) a private ``redis-server`` is started on
127.0.0.1 with its data in ``embedded.dir`` (append-only file), so a restart of ``letsfrag run`` recovers its
state; its URL is written to ``<embedded.dir>/redis.url`` for ``letsfrag status -c`` and ``letsfrag-top -c``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from .config import LocalConfig, RedisSettings, load_local_config
from .redis_server import RedisServer
from .samples import default_local_config

log = logging.getLogger(__name__)

URL_FILE = "redis.url"


def start_embedded_redis(config: LocalConfig) -> RedisServer:
    """Start the private redis-server of a local config and record its URL."""
    folder = Path(config.embedded.dir)
    folder.mkdir(parents=True, exist_ok=True)
    server = RedisServer(port=config.embedded.port or None, data_dir=folder / "redis", persist=True)
    server.start()
    (folder / URL_FILE).write_text(server.url + "\n")
    log.info("embedded redis-server on %s (data in %s)", server.url, server.data_dir)
    return server


async def run_local(config: LocalConfig, *, progress: bool = True, stop: asyncio.Event | None = None) -> int:
    """Run broker and supervisor until ``stop`` is set (or SIGINT/SIGTERM/SIGHUP); return the exit code."""
    from .broker import ClusterBroker
    from .supervisor import ClusterManager

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    server: RedisServer | None = None
    redis: RedisSettings | str | None = None
    if config.redis.embedded:
        server = await asyncio.to_thread(start_embedded_redis, config)
        redis = server.url
    try:
        broker = ClusterBroker(config.broker_config(redis))
        manager = ClusterManager(config.host_config(redis))
        async with broker, manager:
            if progress:
                from .progress import show_progress

                await show_progress(manager.bus.redis, manager.bus.keys, stop)
            else:
                await stop.wait()
        return 0
    finally:
        if server is not None:
            await asyncio.to_thread(server.stop)
            with contextlib.suppress(OSError):
                (Path(config.embedded.dir) / URL_FILE).unlink()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``letsfrag run CONFIG``."""
    config = load_local_config(args.config if args.config is not None else default_local_config())
    return asyncio.run(run_local(config, progress=not args.no_progress))
