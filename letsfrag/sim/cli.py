"""``letsfrag sim`` / ``python -m letsfrag.sim``: serve the simulated Discord until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from letsfrag.errors import ConfigError
from letsfrag.sim.options import VIOLATION_MODES, SimulatorOptions
from letsfrag.units import parse_duration


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"cannot be negative, found {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser``."""
    d = SimulatorOptions()
    add = parser.add_argument
    add("--host", default=d.host, help=f"address to bind (default {d.host})")
    add("--port", type=int, default=d.port, help="port to bind; 0 picks a free one and prints it (default 0)")
    add("--shards", type=int, default=d.shards,
        help=f"shard count of the bot: guild ids are generated round-robin over it; sessions of any shard count "
             f"may identify at once and get the guilds (guild_id >> 22) %% num_shards routes to them "
             f"(default {d.shards})")
    add("--guilds", type=int, default=d.guilds, help=f"guilds, spread round-robin over shards (default {d.guilds})")
    add("--members-per-guild", type=int, default=d.members_per_guild,
        help=f"non-bot members in every guild (default {d.members_per_guild})")
    add("--max-concurrency", type=int, default=d.max_concurrency,
        help=f"identify buckets: shard_id %% max_concurrency (default {d.max_concurrency})")
    add("--identify-window", type=_duration, default=d.identify_window,
        help="one IDENTIFY per bucket per this window (default 5s)")
    add("--token", default=None, help="the only bot token accepted (default: any non-empty token)")
    add("--ack-delay", type=_duration, default=d.ack_delay,
        help="delay before HEARTBEAT_ACK, for a realistic latency (default 20ms)")
    add("--heartbeat-interval", type=_duration, default=d.heartbeat_interval,
        help="heartbeat interval sent in HELLO; no heartbeat for 1.5x this closes with 4009 (default 41.25s)")
    add("--on-violation", choices=VIOLATION_MODES, default=d.on_violation,
        help="an IDENTIFY too early for its bucket: close 4008, INVALID_SESSION, or only count (default count)")
    add("--resume-window", type=_duration, default=d.resume_window,
        help="how long a disconnected session stays resumable (default 60s)")
    add("--session-start-total", type=int, default=d.session_start_total,
        help=f"session_start_limit.total, the daily IDENTIFY budget (default {d.session_start_total})")
    add("--reject-when-exhausted", action="store_true",
        help="close an IDENTIFY with 4008 once the budget is used up (default: only count)")
    add("--deny-privileged-intents", action="store_true",
        help="close with 4014 when a client asks for members/presences/message_content")
    add("--answer-timeout", type=_duration, default=d.answer_timeout,
        help="a !ping unanswered for this long counts as unanswered (default 5s)")
    add("--traffic-rate", type=_non_negative_float, default=0.0,
        help="background '!ping <n>' messages per second, spread over all guilds (default 0 = none)")
    add("--handover-deadline", type=_duration, default=d.handover_deadline,
        help="an announced handover may keep two live sessions of a shard this long (default 120s)")
    add("--guilds-per-shard", type=int, default=None,
        help="GET /gateway/bot recommends ceil(guilds / this) shards, rounded up to a multiple of "
             "--max-concurrency (Discord: about 1000; default: recommend --shards)")
    add("--max-guilds-per-shard", type=int, default=d.max_guilds_per_shard,
        help="close a shard holding more guilds than this with 4011, at IDENTIFY or when POST /_sim/guilds adds "
             f"guilds past it (default {d.max_guilds_per_shard} like Discord; 0 = no limit)")
    add("--seed", type=int, default=None, help="seed for chaos and traffic choices")


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    """Build validated options from parsed arguments (ConfigError names what is wrong)."""
    return SimulatorOptions(
        host=args.host,
        port=args.port,
        shards=args.shards,
        guilds=args.guilds,
        members_per_guild=args.members_per_guild,
        max_concurrency=args.max_concurrency,
        identify_window=args.identify_window,
        token=args.token,
        ack_delay=args.ack_delay,
        heartbeat_interval=args.heartbeat_interval,
        on_violation=args.on_violation,
        resume_window=args.resume_window,
        session_start_total=args.session_start_total,
        reject_when_exhausted=args.reject_when_exhausted,
        privileged_intents_allowed=not args.deny_privileged_intents,
        answer_timeout=args.answer_timeout,
        traffic_rate=args.traffic_rate,
        handover_deadline=args.handover_deadline,
        guilds_per_shard=args.guilds_per_shard,
        max_guilds_per_shard=args.max_guilds_per_shard,
        seed=args.seed,
    )


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print ``letsfrag sim listening on URL`` once ready. Returns an exit code."""
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"letsfrag sim: error: {problem}", file=sys.stderr)
        return 2
    import asyncio  # neither is imported by the CLI's parser (every command reads these options)

    from letsfrag.sim.simulator import Simulator  # aiohttp's web stack

    sim = Simulator(options)
    try:
        await sim.start()
    except OSError as exc:
        print(f"letsfrag sim: error: cannot listen on {options.host}:{options.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        print(f"letsfrag sim listening on {sim.base_url}", flush=True)
        print(f"  api     {sim.api_url}\n  gateway {sim.gateway_url}\n  stats   {sim.base_url}/_sim/stats", flush=True)
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await sim.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m letsfrag.sim``."""
    parser = argparse.ArgumentParser(prog="python -m letsfrag.sim", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    import asyncio

    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130
