"""``letsfrag supervise CONFIG [--host-id ID] [--capacity N]``: run the host supervisor until SIGTERM/SIGINT.

With ``bot.launcher: fork`` (the default for ``bot.module``) the pre-fork launcher is started first thing, before
this process imports the supervisor and reads the config, so the launcher's imports (discord.py...) run beside
ours instead of after them; it is ended at once when the config turns out to want ``exec``. This module
therefore imports only light modules at its top.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
from typing import TYPE_CHECKING

from letsfrag.errors import ConfigError
from letsfrag.supervisor.launcher import fork_supported, start_launcher, stop_launcher

if TYPE_CHECKING:
    from letsfrag.config import HostConfig
    from letsfrag.supervisor.prefork import Launcher

__all__ = ["adopt_launcher", "run", "serve"]

_Started = tuple[subprocess.Popen[bytes], socket.socket]


def _overrides(args: argparse.Namespace) -> tuple[str | None, int | None]:
    from letsfrag.config.common import check_name

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


async def serve(config: HostConfig, *, host_id: str | None = None, capacity: int | None = None,
                launcher: _Started | None = None) -> int:
    """Run a supervisor with signal handling until it was asked to stop; return the exit code.

    ``launcher``: a pre-fork launcher already started (:func:`letsfrag.supervisor.launcher.start_launcher`); it is used
    with ``bot.launcher: fork`` and ended otherwise.
    """
    from letsfrag.connection import check_redis_credentials
    from letsfrag.supervisor.manager import ClusterManager

    try:
        await check_redis_credentials(config.redis)
    except BaseException:
        if launcher is not None:
            stop_launcher(*launcher)
        raise
    manager = ClusterManager(config, handle_signals=True, host_id=host_id, capacity=capacity,
                             launcher=adopt_launcher(config, launcher))
    try:
        await manager.serve_forever()
    finally:
        await manager.close()
    return 0


def adopt_launcher(config: HostConfig, launcher: _Started | None) -> Launcher | None:
    """The :class:`Launcher` around a launcher started early when ``config`` forks its clusters; otherwise
    end that launcher (``None``)."""
    from letsfrag.supervisor.prefork import Launcher, launcher_mode

    if launcher is None:
        return None
    if launcher_mode(config) == "fork":
        return Launcher(started=launcher)
    stop_launcher(*launcher)
    return None


def run(args: argparse.Namespace) -> int:
    """The ``supervise`` subcommand (see :data:`letsfrag.cli.main.HANDLERS`)."""
    launcher = start_launcher() if fork_supported() else None
    try:
        from letsfrag.config import load_host_config

        config = load_host_config(args.config, check_program=True)
        host_id, capacity = _overrides(args)
    except BaseException:
        if launcher is not None:
            stop_launcher(*launcher)
        raise
    import asyncio  # after the launcher's start, as the config's imports

    return asyncio.run(serve(config, host_id=host_id, capacity=capacity, launcher=launcher))
