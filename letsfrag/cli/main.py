"""The ``letsfrag`` command line: one parser, subcommands implemented in their own modules.

Exit codes: 0 success, 1 a runtime failure (or "degraded" for ``status``), 2 bad usage or configuration
(or "Redis unreachable" for ``status``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from .. import __version__
from ..errors import ConfigError, LetsfragError
from ..lifeline import watch_lifeline
from ..logs import setup_logging

#: subcommand -> "module:function" taking the parsed args and returning an exit code
HANDLERS: dict[str, str] = {
    "broker": "letsfrag.cli.broker_command:run",
    "supervise": "letsfrag.cli.supervise_command:run",
    "run": "letsfrag.cli.local:run",
    "demo": "letsfrag.lab.demo:run",
    "status": "letsfrag.cli.status:run",
    "top": "letsfrag.tui.app:run_from_args",
    "sim": "letsfrag.sim.cli:run",
    "config check": "letsfrag.config.check:run",
    "restart": "letsfrag.cli.operator:run_restart",
    "drain": "letsfrag.cli.operator:run_drain",
    "rebalance": "letsfrag.cli.operator:run_rebalance",
    "reshard": "letsfrag.cli.operator:run_reshard",
    "bench": "letsfrag.lab.bench:run",
    "logs": "letsfrag.cli.logtail:run",
    "completion": "letsfrag.cli.completion:run",
    "init": "letsfrag.samples:run_init",
}


def version_text() -> str:
    """What ``--version`` prints, for ``letsfrag`` and ``letsfrag-top`` alike."""
    return f"letsfrag {__version__}"


def add_global_args(parser: argparse.ArgumentParser, *, after_command: bool = False) -> None:
    """``--version``, ``-v``, ``-q``, ``--log-format``; accepted before and (``after_command``) after the command.

    After the command the defaults are suppressed, so they do not overwrite what came before it; ``-v`` given
    after the command counts into ``verbose_after`` and adds up with the ``-v`` before it.
    """
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    group = parser.add_argument_group("global options") if after_command else parser
    group.add_argument("--version", action="version", version=version_text())
    group.add_argument("-v", "--verbose", action="count", dest="verbose_after" if after_command else "verbose",
                       default=default(0), help="more logging (-vv: discord.py too)")
    group.add_argument("-q", "--quiet", action="store_true", default=default(False), help="only warnings and errors")
    group.add_argument("--log-format", choices=["auto", "rich", "plain", "json"], default=default("auto"),
                       help="log output: rich on a terminal, plain otherwise (auto), or JSON lines")


def add_config_arg(parser: argparse.ArgumentParser, *, required: bool, default: str | None = None,
                   help_text: str = "a broker, host or local config") -> None:
    """The config file, positionally (``CONFIG``) or as ``-c/--config FILE``; :func:`resolve_config` merges them."""
    parser.add_argument("config_file", metavar="CONFIG", nargs="?", default=None,
                        help=help_text + ("" if default is None else f" (default {default})"))
    parser.add_argument("-c", "--config", metavar="FILE", default=None, help="the same as CONFIG")
    parser.set_defaults(config_required=required, config_default=default)


def resolve_config(args: argparse.Namespace) -> str | None:
    """``args.config`` from ``CONFIG`` or ``-c``; the usage problem (for exit 2) as ``ValueError``."""
    positional, option = getattr(args, "config_file", None), getattr(args, "config", None)
    if positional and option and positional != option:
        raise ValueError(f"the config is given twice ({positional} and -c {option}); give CONFIG or -c FILE")
    config = option or positional or getattr(args, "config_default", None)
    if config is None and getattr(args, "config_required", False):
        raise ValueError("the config is required: give CONFIG or -c FILE")
    return config


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """``[CONFIG]``/``-c``/``--redis``/``--namespace``/``--secret-env``: how a tool finds the deployment."""
    add_config_arg(parser, required=False,
                   help_text="a broker, host or local config to take redis, namespace and secret from")
    group = parser.add_argument_group("connection")
    group.add_argument("--redis", metavar="URL", help="Redis URL (overrides the config; default redis://127.0.0.1:6379/0)")
    group.add_argument("--namespace", metavar="NS", help="key and channel prefix (default letsfrag)")
    group.add_argument("--secret-env", metavar="VAR", default="LETSFRAG_SECRET",
                       help="environment variable holding the signing secret (default LETSFRAG_SECRET)")


def add_top_args(parser: argparse.ArgumentParser) -> None:
    """The dashboard's arguments (``letsfrag top`` and ``letsfrag-top``)."""
    add_connection_args(parser)
    parser.add_argument("--readonly", action="store_true", help="refuse restart/drain actions")
    parser.add_argument("--refresh", default="1s", help="refresh interval (default 1s)")


def _id_arg(value: str) -> str:
    """An id given on the command line: the whole text must be letters, digits, '_', '.', '-'."""
    from ..config.common import check_name

    try:
        return check_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard_count_arg(value: str) -> int:
    """A shard count given on the command line: a whole number >= 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of shards >= 1, found {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of shards >= 1, found {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    """The ``letsfrag`` command line (also walked by ``letsfrag completion``)."""
    parser = argparse.ArgumentParser(
        prog="letsfrag",
        description="Run one discord.py bot across many processes and machines, coordinated through Redis.",
    )
    add_global_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str, parent: Any = sub) -> argparse.ArgumentParser:
        new = parent.add_parser(name, help=help_text)
        add_global_args(new, after_command=True)
        return new

    p = command("broker", "run the ClusterBroker (layout, leases, assignment, failover)")
    add_config_arg(p, required=True, help_text="broker config, e.g. configs/broker.yaml")
    p.add_argument("--broker-id", type=_id_arg, help="this broker's id among standbys (default hostname-pid)")

    p = command("supervise", "run the host supervisor: spawn and watch this host's clusters")
    add_config_arg(p, required=True, help_text="host config, e.g. configs/host.yaml")
    p.add_argument("--host-id", type=_id_arg, help="override host.id")
    p.add_argument("--capacity", type=int, help="override host.capacity (clusters)")

    p = command("run", "broker and supervisor in one command for a single machine")
    add_config_arg(p, required=False,
                   help_text="local config (both roles); default configs/local.yaml, else the packaged sample")
    p.add_argument("--no-progress", action="store_true", help="no live progress line, only logs")

    p = command("demo", "everything on this machine: embedded Redis, simulated Discord, N hosts")
    p.add_argument("--hosts", type=int, default=2, help="host supervisors to start (default 2)")
    p.add_argument("--shards", type=int, default=16, help="shard count (default 16)")
    p.add_argument("--shards-per-cluster", type=int, default=4, help="shards per cluster (default 4)")
    p.add_argument("--headless", action="store_true",
                   help="no dashboard: print progress and a final table; exit 0 only if all shards READY, "
                        "0 identify violations and 0 duplicate sessions")
    p.add_argument("--duration", default="30s", help="how long the demo runs (default 30s)")
    p.add_argument("--kill-after", default="20s", help="when one host is killed to show failover (default 20s)")

    p = command("status", "the deployment as a table or JSON (exit 0 ready, 1 degraded, 2 no Redis)")
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="stable JSON document (see docs/status.md)")
    p.add_argument("--watch", action="store_true", help="refresh every second until Ctrl-C")

    p = command("top", "the live Textual dashboard (same as letsfrag-top)")
    add_top_args(p)

    p = command("sim", "run the simulated Discord (REST + gateway) for rehearsals and tests")
    _add_sim_arguments(p)

    p = command("config", "configuration tools")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    check = command("check", "validate a config and print it with secrets masked", config_sub)
    add_config_arg(check, required=True, help_text="a broker, host or local YAML config")

    p = command("restart", "restart one cluster by a handover, or every cluster of a host (rolling: one handover "
                           "at a time; without: stop and start, lossy)")
    add_connection_args(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--cluster", type=int, metavar="N",
                        help="cluster id: handed over to a fresh process (a FAILED one is stopped and started)")
    target.add_argument("--host", metavar="H", type=_id_arg, help="host id")
    p.add_argument("--rolling", action="store_true",
                   help="with --host: one handover at a time, the next after the previous switch")
    p.add_argument("--timeout", default="120s", help="how long to wait for the outcome (default 120s)")

    p = command("drain", "hand a host's clusters over to other hosts (capacity 0)")
    p.add_argument("host", metavar="HOST", type=_id_arg, help="host id")
    add_connection_args(p)
    p.add_argument("--timeout", default="60s", help="how long to wait for the outcome (default 60s)")

    p = command("rebalance", "hand clusters over until hosts are balanced by capacity")
    add_connection_args(p)
    p.add_argument("--timeout", default="60s", help="how long to wait for the outcome (default 60s)")

    p = command("reshard", "reshard to a new shard count without downtime (--dry-run: only print the plan)")
    add_connection_args(p)
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--shards", type=_shard_count_arg, metavar="N",
                      help="the new shard count (rounded up to a multiple of max_concurrency)")
    goal.add_argument("--recommended", action="store_true", help="the shard count /gateway/bot recommends")
    p.add_argument("--dry-run", action="store_true", help="only print the plan (exit 0), or the refusal (exit 1)")
    p.add_argument("--timeout", default=None, metavar="D",
                   help="how long the new generation has to become ready before the reshard is rolled back "
                        "(default the broker's handover_timeout); with --dry-run, how long to wait for the plan "
                        "(default 60s)")

    p = command("logs", "this host's cluster logs: the last lines, -f to follow through rotations")
    add_connection_args(p)
    p.add_argument("--dir", metavar="DIR", help="the log directory (default: logs.dir of the config)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--cluster", type=int, metavar="N", help="one cluster (names its host if it runs elsewhere)")
    which.add_argument("--host", metavar="H", help="every cluster of host H (must be this host)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C stops)")
    p.add_argument("-n", "--lines", type=int, default=20, metavar="LINES", help="lines to show first (default 20)")

    p = command("init", "write the commented sample configs (broker, host, local) to edit")
    p.add_argument("directory", metavar="DIR", nargs="?", default="configs", help="where (default configs)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")

    p = command("bench", "run a benchmark from benchmarks/ and print its table")
    p.add_argument("name", help="benchmark name, e.g. coldstart, failover, rpc, supervisor, broker_scale, tui")

    p = command("completion", "print a shell completion script (bash, zsh or fish)")
    p.add_argument("shell", choices=["bash", "zsh", "fish"],
                   help="e.g. `letsfrag completion bash > ~/.local/share/bash-completion/completions/letsfrag`")
    return parser


def _add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from ..sim.cli import add_arguments
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
    return run_command(command, args)


def run_command(command: str, args: argparse.Namespace, prog: str | None = None) -> int:
    """Run a parsed ``command`` (a :data:`HANDLERS` key): config argument, logging, errors as exit codes."""
    prog = prog or f"letsfrag {command}"
    try:
        args.config = resolve_config(args)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    verbose = int(getattr(args, "verbose", 0) or 0) + int(getattr(args, "verbose_after", 0) or 0)
    setup_logging(-1 if args.quiet else verbose, args.log_format)
    watch_lifeline()
    handler = _resolve(command)
    if handler is None:
        print(f"letsfrag {command}: not implemented yet", file=sys.stderr)
        return 2
    try:
        result = handler(args)
        if isinstance(result, types.CoroutineType):  # as inspect.iscoroutine
            import asyncio  # not before the handler: ``supervise`` starts its launcher first thing

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
