"""``letsfrag restart``, ``drain``, ``rebalance`` and ``reshard``: send one command, print its outcome.

``restart --cluster N`` and ``restart --host H --rolling`` go to the broker, which hands each cluster over to a
fresh process (nothing lost); while it works the command prints the handovers it sees in ``{ns}:handover`` and
the rolling restart's ``n of m`` from ``{ns}:broker`` ``operation``.

``reshard --shards N | --recommended [--dry-run] [--timeout D]`` asks the leader broker for the plan of a
reshard (:mod:`letsfrag.broker.reshard_plan`) and prints it on stdout; without ``--dry-run`` the broker runs it
(:mod:`letsfrag.contract.reshard`: the new generation starts beside the live one, switches at one instant, the old one
is retired) while the command prints the progress; ``--timeout`` is how long the new generation has to become ready
(default the broker's handover timeout) before it is rolled back.

Exit codes: 0 the target reported success (a restart: switched; ``reshard``: switched and the old generation
retired; ``reshard --dry-run``: a plan), 1 it reported
failure (a restart: rolled back or refused, naming the cluster and the reason; a reshard: refused or rolled back,
naming the cluster) or did not answer in time, 2 bad arguments or Redis unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.exceptions import RedisError

from ..bus import Bus
from ..connection import display_url
from ..contract.handover import OPERATION_FIELD, HandoverRecord, HandoverState
from ..contract.records import LayoutRecord
from ..errors import BusError, ConfigError, RecordError
from ..loops import cancel_and_wait
from ..units import parse_duration
from .connect import connection_from_args, tool_node_id
from .control import Control

__all__ = ["run_drain", "run_rebalance", "run_reshard", "run_restart"]

OperatorCall = Callable[[Control, float], Awaitable[dict[str, Any]]]
#: prints progress until ``stop`` is set; may return an outcome of its own, read from Redis, which then ends the
#: wait for the broker's answer (a reshard finished by another leader after the asked one died)
Watch = Callable[[Bus, asyncio.Event], Coroutine[Any, Any, "dict[str, Any] | None"]]
#: how often the progress of a restart is read from Redis (seconds)
PROGRESS_INTERVAL = 0.2


def _watch_handovers(cluster: int | None = None, host: str | None = None) -> Watch:
    """Print each handover of ``cluster`` (or of ``host``'s clusters) and the rolling ``n of m`` as they change."""

    async def watch(bus: Bus, stop: asyncio.Event) -> None:
        seen: set[tuple[int, int, str]] = set()
        last_op = ""
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError):
                raw: Any = await bus.redis.hgetall(bus.keys.handover)  # type: ignore[misc]
                op: Any = await bus.redis.hget(bus.keys.broker, OPERATION_FIELD)  # type: ignore[misc]
                if op and op != last_op:
                    last_op = op
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        data = json.loads(op)
                        if data.get("host") == host:
                            print(f"rolling restart of {host}: {data['done']} of {data['total']} handed over",
                                  file=sys.stderr)
                for field, value in sorted(raw.items()):
                    try:
                        record = HandoverRecord.from_json(field, value, key=bus.keys.handover)
                    except RecordError:
                        continue
                    if (cluster is not None and record.cluster != cluster) or \
                            (host is not None and record.from_host != host):
                        continue
                    key = (record.cluster, record.epoch, str(record.state))
                    if key in seen:
                        continue
                    seen.add(key)
                    if record.state is HandoverState.PREPARING:
                        print(f"cluster {record.cluster}: handing over to {record.host} (epoch {record.epoch})…",
                              file=sys.stderr)
                    else:
                        print(f"cluster {record.cluster}: switched to {record.host} (epoch {record.epoch}); "
                              f"{record.from_host} stops epoch {record.from_epoch}", file=sys.stderr)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_INTERVAL):  # not a cancel: redis-py may swallow one
                    await stop.wait()

    return watch


def _timeout(args: argparse.Namespace) -> float:
    raw = getattr(args, "timeout", None) or "60s"
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"--timeout: {exc}") from None
    if value <= 0:
        raise ConfigError(f"--timeout: expected a positive duration, found {raw!r}")
    return value


async def _run(args: argparse.Namespace, describe: str, action: OperatorCall, watch: Watch | None = None,
               show: Callable[[dict[str, Any]], int] | None = None) -> int:
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
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(bus, stop)) if watch is not None else None
    asking = asyncio.ensure_future(action(Control(bus, timeout=timeout), timeout))
    try:
        print(f"{describe} …", file=sys.stderr)
        await asyncio.wait({asking} | ({watcher} if watcher is not None else set()),
                           return_when=asyncio.FIRST_COMPLETED)
        seen = None
        if watcher is not None and watcher.done() and not asking.done() and not watcher.cancelled() \
                and watcher.exception() is None:
            seen = watcher.result()
        outcome = seen if seen is not None else await asking
    finally:
        stop.set()
        await cancel_and_wait(asking)
        if watcher is not None:
            await asyncio.wait({watcher}, timeout=2.0)
        await bus.close()
    if show is not None:
        return show(outcome)
    steps = outcome.get("steps")
    for step in steps if isinstance(steps, list) else []:
        print(str(step), file=sys.stderr)
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
                          lambda c, t: c.restart_cluster(cluster, timeout=t), _watch_handovers(cluster=cluster))
    if not host:
        print("error: one of --cluster or --host is required", file=sys.stderr)
        return 2
    what = f"rolling restart of host {host}" if rolling else f"restarting every cluster of host {host} (stop and start)"
    return await _run(args, what, lambda c, t: c.restart_host(host, rolling=rolling, timeout=t),
                      _watch_handovers(host=host) if rolling else None)


async def run_drain(args: argparse.Namespace) -> int:
    """``letsfrag drain HOST``."""
    host = str(args.host)
    return await _run(args, f"draining host {host}", lambda c, t: c.drain(host, timeout=t),
                      _watch_handovers(host=host))


async def run_rebalance(args: argparse.Namespace) -> int:
    """``letsfrag rebalance``."""
    return await _run(args, "rebalancing", lambda c, t: c.rebalance(timeout=t))


#: how long ``letsfrag reshard`` (not ``--dry-run``) waits for the broker's answer beyond the readiness deadline
#: (the switch and the old generation's graceful stop), and in all when the deadline is the broker's default
RESHARD_STOP_MARGIN = 120.0
RESHARD_DEFAULT_WAIT = 3600.0


#: after the reshard it follows has ended in Redis, how long ``letsfrag reshard`` still waits for the broker's own
#: answer (which carries the plan) before it concludes from Redis alone: the broker it asked died meanwhile, and
#: another leader finished (or rolled back) the reshard
RESHARD_ANSWER_GRACE = 5.0


def _watch_reshard() -> Watch:
    """Print the reshard's progress (``{ns}:broker`` ``operation`` of kind ``reshard``) as it changes; once the
    reshard it saw has ended in Redis (no ``{ns}:reshard`` record) and the broker has not answered within
    :data:`RESHARD_ANSWER_GRACE`, return the outcome the live layout tells: switched (its generation is the one
    prepared) or rolled back."""

    async def watch(bus: Bus, stop: asyncio.Event) -> dict[str, Any] | None:
        last = ""
        generation: int | None = None  # of the reshard seen in progress
        ended_at: float | None = None
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(RedisError, OSError, ValueError, TypeError, AttributeError, KeyError):
                op: Any = await bus.redis.hget(bus.keys.broker, OPERATION_FIELD)  # type: ignore[misc]
                data = json.loads(op) if op else None
                if isinstance(data, dict) and data.get("kind") == "reshard":
                    generation = int(data["generation"])
                    if data["state"] == "preparing":
                        line = (f"generation {data['generation']}: {data['ready']} of {data['total']} cluster(s) "
                                "ready")
                    else:
                        line = (f"generation {data['generation']}: switched; stopping generation "
                                f"{data['from_generation']}'s {data['retiring']} cluster(s)")
                    if line != last:
                        last = line
                        print(line, file=sys.stderr)
                if generation is not None and not await bus.redis.exists(bus.keys.reshard):
                    ended_at = ended_at if ended_at is not None else loop.time()
                    if loop.time() - ended_at >= RESHARD_ANSWER_GRACE:
                        return await _reshard_outcome_from_redis(bus, generation)
                else:
                    ended_at = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROGRESS_INTERVAL):  # not a cancel: redis-py may swallow one
                    await stop.wait()
        return None

    return watch


async def _reshard_outcome_from_redis(bus: Bus, generation: int) -> dict[str, Any]:
    """The outcome of a reshard to ``generation`` that ended without the asked broker's answer."""
    layout: Any = await bus.redis.hgetall(bus.keys.layout)  # type: ignore[misc]
    live = LayoutRecord.for_display(layout)
    unanswered = "the broker that was asked stopped answering; read from Redis"
    if live is not None and live.generation == generation:
        return {"ok": True, "executed": True, "lines": [],
                "message": f"generation {generation} serves alone ({live.shard_count} shards; {unanswered})"}
    return {"ok": False, "executed": True, "lines": [],
            "message": f"generation {generation} was rolled back: generation "
                       f"{live.generation if live is not None else '?'} keeps serving ({unanswered})"}


def _show_reshard(dry_run: bool) -> Callable[[dict[str, Any]], int]:
    def show(outcome: dict[str, Any]) -> int:
        lines = outcome.get("lines")
        if not isinstance(lines, list) or (outcome.get("refused") and not outcome.get("executed")):
            message = outcome.get("message") or "no answer"
            print(f"refused: {message}" if outcome.get("refused") else f"failed: {message}", file=sys.stderr)
            return 1
        for line in lines:
            print(str(line))
        if dry_run:
            return 0
        steps = outcome.get("steps")
        message = outcome.get("message") or "no answer"
        for step in steps if isinstance(steps, list) else []:
            if step != message:
                print(str(step), file=sys.stderr)
        if outcome.get("ok"):
            print(f"ok: {message}")
            return 0
        print(f"failed: {message}", file=sys.stderr)
        return 1

    return show


async def run_reshard(args: argparse.Namespace) -> int:
    """``letsfrag reshard --shards N | --recommended [--dry-run] [--timeout D]``."""
    shards = getattr(args, "shards", None)
    recommended = bool(getattr(args, "recommended", False))
    if shards is None and not recommended:
        print("error: one of --shards or --recommended is required", file=sys.stderr)
        return 2
    dry_run = bool(getattr(args, "dry_run", False))
    target = "the recommended shard count" if recommended else f"{shards} shards"
    goal = shards if not recommended else None
    if dry_run:
        return await _run(args, f"planning a reshard to {target}",
                          lambda c, t: c.reshard(shards=goal, recommended=recommended, timeout=t),
                          show=_show_reshard(True))
    deadline: float | None = None
    if getattr(args, "timeout", None) is not None:
        try:
            deadline = _timeout(args)
        except ConfigError as exc:
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            return 2
    wait = RESHARD_DEFAULT_WAIT if deadline is None else deadline + RESHARD_STOP_MARGIN
    wait_args = argparse.Namespace(**{**vars(args), "timeout": f"{wait:g}s"})
    return await _run(wait_args, f"resharding to {target}",
                      lambda c, t: c.reshard(shards=goal, recommended=recommended, execute=True, deadline=deadline,
                                             timeout=t),
                      _watch_reshard(), show=_show_reshard(False))
