"""The ``letsfrag`` command line: one parser, subcommands implemented in their own modules.

Exit codes: 0 success, 1 a runtime failure (or "degraded" for ``status``), 2 bad usage or configuration
(or "Redis unreachable" for ``status``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .errors import ConfigError, LetsfragError
from .logs import setup_logging

#: subcommand -> "module:function" taking the parsed args and returning an exit code
HANDLERS: dict[str, str] = {
    "broker": "letsfrag.broker.main:run",
    "supervise": "letsfrag.supervisor.main:run",
    "run": "letsfrag.local:run",
    "demo": "letsfrag.demo:run",
    "status": "letsfrag.status:run",
    "top": "letsfrag.tui.app:run_from_args",
    "sim": "letsfrag.sim.cli:run",
    "config check": "letsfrag.config_check:run",
    "restart": "letsfrag.commands:run_restart",
    "drain": "letsfrag.commands:run_drain",
    "rebalance": "letsfrag.commands:run_rebalance",
    "bench": "letsfrag.bench:run",
    "init": "letsfrag.samples:run_init",
}


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--redis``/``--namespace``: how a tool finds the deployment."""
    group = parser.add_argument_group("connection")
    group.add_argument("-c", "--config", metavar="FILE",
                       help="a broker, host or local config to take redis, namespace and secret from")
    group.add_argument("--redis", metavar="URL", help="Redis URL (overrides the config; default redis://127.0.0.1:6379/0)")
    group.add_argument("--namespace", metavar="NS", help="key and channel prefix (default letsfrag)")
    group.add_argument("--secret-env", metavar="VAR", default="LETSFRAG_SECRET",
                       help="environment variable holding the signing secret (default LETSFRAG_SECRET)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="letsfrag",
        description="Run one discord.py bot across many processes and machines, coordinated through Redis.",
    )
    parser.add_argument("--version", action="version", version=f"letsfrag {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: discord.py too)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--log-format", choices=["auto", "rich", "plain", "json"], default="auto",
                        help="log output: rich on a terminal, plain otherwise (auto), or JSON lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("broker", help="run the ClusterBroker (layout, leases, assignment, failover)")
    p.add_argument("config", metavar="CONFIG", help="broker config, e.g. configs/broker.yaml")
    p.add_argument("--broker-id", help="this broker's id among standbys (default hostname-pid)")

    p = sub.add_parser("supervise", help="run the host supervisor: spawn and watch this host's clusters")
    p.add_argument("config", metavar="CONFIG", help="host config, e.g. configs/host.yaml")
    p.add_argument("--host-id", help="override host.id")
    p.add_argument("--capacity", type=int, help="override host.capacity (clusters)")

    p = sub.add_parser("run", help="broker and supervisor in one command for a single machine")
    p.add_argument("config", metavar="CONFIG", nargs="?",
                   help="local config (both roles); default configs/local.yaml, else the packaged sample")
    p.add_argument("--no-progress", action="store_true", help="no live progress line, only logs")

    p = sub.add_parser("demo", help="everything on this machine: embedded Redis, simulated Discord, N hosts")
    p.add_argument("--hosts", type=int, default=2, help="host supervisors to start (default 2)")
    p.add_argument("--shards", type=int, default=16, help="shard count (default 16)")
    p.add_argument("--shards-per-cluster", type=int, default=4, help="shards per cluster (default 4)")
    p.add_argument("--headless", action="store_true",
                   help="no dashboard: print progress and a final table; exit 0 only if all shards READY, "
                        "0 identify violations and 0 duplicate sessions")
    p.add_argument("--duration", default="30s", help="how long the demo runs (default 30s)")
    p.add_argument("--kill-after", default="20s", help="when one host is killed to show failover (default 20s)")

    p = sub.add_parser("status", help="the deployment as a table or JSON (exit 0 ready, 1 degraded, 2 no Redis)")
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="stable JSON document (see docs/status.md)")
    p.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")

    p = sub.add_parser("top", help="the live Textual dashboard (same as letsfrag-top)")
    add_connection_args(p)
    p.add_argument("--readonly", action="store_true", help="refuse restart/drain actions")
    p.add_argument("--refresh", default="1s", help="refresh interval (default 1s)")

    p = sub.add_parser("sim", help="run the simulated Discord (REST + gateway) for rehearsals and tests")
    _add_sim_arguments(p)

    p = sub.add_parser("config", help="configuration tools")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    check = config_sub.add_parser("check", help="validate a config and print it with secrets masked")
    check.add_argument("file", metavar="FILE", help="a broker, host or local YAML config")

    p = sub.add_parser("restart", help="restart one cluster, or every cluster of a host (optionally rolling)")
    add_connection_args(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--cluster", type=int, metavar="N", help="cluster id (also clears FAILED)")
    target.add_argument("--host", metavar="H", help="host id")
    p.add_argument("--rolling", action="store_true", help="with --host: one cluster at a time, each waits for READY")
    p.add_argument("--timeout", default="120s", help="how long to wait for the outcome (default 120s)")

    p = sub.add_parser("drain", help="stop a host's clusters and hand them to other hosts (capacity 0)")
    add_connection_args(p)
    p.add_argument("host", metavar="HOST", help="host id")
    p.add_argument("--timeout", default="60s", help="how long to wait for the outcome (default 60s)")

    p = sub.add_parser("rebalance", help="move clusters until hosts are balanced by capacity")
    add_connection_args(p)
    p.add_argument("--timeout", default="60s", help="how long to wait for the outcome (default 60s)")

    p = sub.add_parser("init", help="write the commented sample configs (broker, host, local) to edit")
    p.add_argument("directory", metavar="DIR", nargs="?", default="configs", help="where (default configs)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")

    p = sub.add_parser("bench", help="run a benchmark from benchmarks/ and print its table")
    p.add_argument("name", help="benchmark name, e.g. coldstart, failover, rpc, supervisor, broker_scale, tui")
    return parser


def _add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from .sim.cli import add_arguments
    except ImportError:  # the simulator is optional at import time of the CLI
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        return
    add_arguments(parser)


def _resolve(command: str) -> Callable[[argparse.Namespace], Any] | None:
    target = HANDLERS.get(command)
    if target is None:
        return None
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            return None
        raise
    handler = getattr(module, function, None)
    return handler if callable(handler) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``letsfrag`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = args.command
    if command == "config":
        if args.config_command is None:
            parser.parse_args(["config", "--help"])
        command = f"config {args.config_command}"
    setup_logging(-1 if args.quiet else args.verbose, args.log_format)
    handler = _resolve(command)
    if handler is None:
        print(f"letsfrag {command}: not implemented yet", file=sys.stderr)
        return 2
    try:
        result = handler(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except ConfigError as exc:
        where = f"{exc.source}: " if exc.source else ""
        for problem in exc.problems:
            print(f"error: {where}{problem}" if where and not problem.startswith(exc.source or "") else
                  f"error: {problem}", file=sys.stderr)
        return 2
    except LetsfragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
