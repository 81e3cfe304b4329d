"""``letsfrag run``: broker and host supervisor in one command for a single machine.

With ``redis: embedded`` (the default of ``configs/local.yaml``) a private ``redis-server`` is started in
``embedded.dir`` (relative: to the working directory; see :mod:`letsfrag.cli.embedded`), listening only on a unix
socket in that 0700 directory, with its data in an append-only file, so a restart of ``letsfrag run`` recovers
its state. A lock on the directory makes a second ``letsfrag run`` there fail (exit 2) instead of starting a
second writer of the same file. The URL is written to ``<embedded.dir>/redis.url`` for ``letsfrag status -c``
and ``letsfrag-top -c``; without a configured ``secret`` a per-run signing secret is generated and written to
``<embedded.dir>/secret`` (both 0600; the cluster processes get it in their environment). The server dies with
``letsfrag run``, even when that is SIGKILLed. ``letsfrag run`` creates every file private to its user (umask
077: cluster logs too; the bot's processes inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal

from pydantic import SecretStr

from ..config import LocalConfig, RedisSettings, load_local_config
from ..logs import register_secret
from ..redis_server import RedisServer
from ..samples import default_local_config
from .embedded import EmbeddedDir

log = logging.getLogger(__name__)


class EmbeddedRedis:
    """The private redis-server of one ``letsfrag run``: its locked directory, the server and its files."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.dir = EmbeddedDir.of(config)
        self.server: RedisServer | None = None
        self.url = ""
        self._lock: int | None = None

    def start(self) -> None:
        """Lock the directory and start the server (call it from the thread that outlives the server: the
        parent-death signal is tied to the calling thread); ``ConfigError`` if the directory is taken."""
        self.dir.prepare()
        self._lock = self.dir.acquire()
        try:
            port = self.config.embedded.port
            # a TCP listener is reachable by every local user: then the server needs a password
            password = secrets.token_urlsafe(24) if port else None
            register_secret(password)
            self.server = RedisServer(port=port, data_dir=self.dir.data_dir, persist=True,
                                      unix_socket=self.dir.socket_path, password=password,
                                      die_with_parent=True, pass_fds=(self._lock,))
            self.server.start()
            self.url = self.dir.url(password)
            self.dir.write_private(EmbeddedDir.URL, self.url + "\n")
        except BaseException:
            self.stop()
            raise
        log.info("embedded redis-server on %s%s (data in %s)", self.dir.url(),
                 f" and 127.0.0.1:{port}" if port else "", self.server.data_dir)

    def write_secret(self, secret: str) -> None:
        """Record the run's generated signing secret for the tools (0600)."""
        self.dir.write_private(EmbeddedDir.SECRET, secret + "\n")

    def stop(self) -> None:
        """Stop the server, remove the URL and secret files, release the lock."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.dir.clear()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


async def run_local(config: LocalConfig, *, progress: bool = True, stop: asyncio.Event | None = None) -> int:
    """Run broker and supervisor until ``stop`` is set (or SIGINT/SIGTERM/SIGHUP); return the exit code."""
    from ..broker import ClusterBroker
    from ..supervisor import ClusterManager

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    embedded: EmbeddedRedis | None = None
    redis: RedisSettings | str | None = None
    if config.redis.embedded:
        embedded = EmbeddedRedis(config)
        embedded.start()  # in the loop's thread, which outlives the server (see EmbeddedRedis.start)
        redis = embedded.url
    try:
        if embedded is not None and config.secret is None:
            secret = secrets.token_hex(32)
            register_secret(secret)
            embedded.write_secret(secret)
            config = config.model_copy(update={"secret": SecretStr(secret)})
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
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``letsfrag run CONFIG``."""
    config = load_local_config(args.config if args.config is not None else default_local_config(),
                               check_program=True)
    os.umask(0o077)
    return asyncio.run(run_local(config, progress=not args.no_progress))
