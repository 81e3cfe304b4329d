"""``letsfrag restart``, ``letsfrag drain`` and ``letsfrag rebalance``: send one command, print its outcome.

Exit codes: 0 the target reported success, 1 it reported failure or did not answer in time, 2 bad arguments
or Redis unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from .bus import Bus
from .cli_connection import connection_from_args, tool_node_id
from .connection import display_url
from .control import Control
from .errors import BusError, ConfigError
from .units import parse_duration

__all__ = ["run_drain", "run_rebalance", "run_restart"]

Action = Callable[[Control, float], Awaitable[dict[str, Any]]]


def _timeout(args: argparse.Namespace) -> float:
    raw = getattr(args, "timeout", "60s")
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"--timeout: {exc}") from None
    if value <= 0:
        raise ConfigError(f"--timeout: expected a positive duration, found {raw!r}")
    return value


async def _run(args: argparse.Namespace, describe: str, action: Action) -> int:
    try:
        redis, namespace, secret = connection_from_args(args)
        timeout = _timeout(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    bus = Bus(redis, node_id=tool_node_id(), namespace=namespace, secret=secret, request_timeout=timeout)
    try:
        await bus.redis.ping()  # fails fast (connection refused) where the subscriber would wait
        await bus.start(wait=5.0)
    except (BusError, RedisError, OSError):
        print(f"error: cannot reach Redis at {display_url(redis)}", file=sys.stderr)
        await bus.close()
        return 2
    try:
        print(f"{describe} …", file=sys.stderr)
        outcome = await action(Control(bus, timeout=timeout), timeout)
    finally:
        await bus.close()
    message = outcome.get("message") or ("done" if outcome.get("ok") else "failed")
    if outcome.get("ok"):
        print(f"ok: {message}")
        return 0
    print(f"failed: {message}", file=sys.stderr)
    return 1


async def run_restart(args: argparse.Namespace) -> int:
    """``letsfrag restart --cluster N`` or ``--host H [--rolling]``."""
    cluster = getattr(args, "cluster", None)
    host = getattr(args, "host", None)
    rolling = bool(getattr(args, "rolling", False))
    if cluster is not None:
        if rolling:
            print("error: --rolling applies to --host only", file=sys.stderr)
            return 2
        if cluster < 0:
            print(f"error: --cluster: expected a cluster id >= 0, found {cluster}", file=sys.stderr)
            return 2
        return await _run(args, f"restarting cluster {cluster}",
                          lambda c, t: c.restart_cluster(cluster, timeout=t))
    if not host:
        print("error: one of --cluster or --host is required", file=sys.stderr)
        return 2
    what = f"rolling restart of host {host}" if rolling else f"restarting every cluster of host {host}"
    return await _run(args, what, lambda c, t: c.restart_host(host, rolling=rolling, timeout=t))


async def run_drain(args: argparse.Namespace) -> int:
    """``letsfrag drain HOST``."""
    host = str(args.host)
    return await _run(args, f"draining host {host}", lambda c, t: c.drain(host, timeout=t))


async def run_rebalance(args: argparse.Namespace) -> int:
    """``letsfrag rebalance``."""
    return await _run(args, "rebalancing", lambda c, t: c.rebalance(timeout=t))
