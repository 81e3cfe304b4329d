"""Drain a dead session: RESUME it on a side connection (not a discord.py shard) and collect what it missed.

:func:`drain_session` opens a websocket to the record's ``resume_gateway_url``, waits for HELLO, sends RESUME
(``session_id``, the stored ``seq``, the token) — never IDENTIFY, so a replay spends no session start — keeps
heartbeating while Discord replays the missed dispatches, stops at ``RESUMED`` (the end of the replay) and
closes with 1000, which also ends the session at Discord. The URL carries ``letsfrag_replay=1`` so the
simulator's referee counts the drain in ``replay_drains`` rather than as a duplicate session of the shard.
INVALID_SESSION (op 9) on RESUME means the session is no longer resumable: the result says so and carries no
events. Handing the replayed events to the cluster (through its claims, once its fresh shards are READY) is the
caller's business.

:func:`is_expired_interaction`: Discord accepts an interaction's answer for 3 s after it was created; a replayed
``INTERACTION_CREATE`` older than that can only be counted, not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import yarl

from ..contract.opcodes import GatewayOp
from .session_records import SessionRecord

#: Discord's epoch of snowflakes (ms)
DISCORD_EPOCH_MS = 1_420_070_400_000
#: seconds Discord gives a bot to answer an interaction
INTERACTION_ANSWER_WINDOW = 3.0


@dataclass
class Replay:
    """The outcome of one drain: ``resumed`` False with a ``reason`` when Discord refused the RESUME."""

    shard_id: int
    resumed: bool
    reason: str = ""
    #: (event name, data) of every replayed dispatch, in order
    events: list[tuple[str, Any]] = field(default_factory=list)
    #: the seq of the last replayed dispatch
    seq: int = 0


def snowflake_time(snowflake: int | str) -> float:
    """The Unix time (seconds) a snowflake was created."""
    return ((int(snowflake) >> 22) + DISCORD_EPOCH_MS) / 1000.0


def is_expired_interaction(event: str, data: Any, now: float | None = None) -> bool:
    """True for an ``INTERACTION_CREATE`` created more than :data:`INTERACTION_ANSWER_WINDOW` s before ``now``."""
    if event != "INTERACTION_CREATE" or not isinstance(data, Mapping) or data.get("id") is None:
        return False
    try:
        created = snowflake_time(data["id"])
    except (TypeError, ValueError):
        return False
    return (time.time() if now is None else now) - created > INTERACTION_ANSWER_WINDOW


def _gateway_url(url: str) -> str:
    parsed = yarl.URL(url)
    if not parsed.path:
        parsed = parsed.with_path("/")
    # letsfrag_replay=1 marks the drain for the simulator's referee (Discord ignores unknown parameters)
    return str(parsed.update_query({"v": "10", "encoding": "json", "letsfrag_replay": "1"}))


async def drain_session(record: SessionRecord, token: str, *, timeout: float = 15.0,
                        http: aiohttp.ClientSession | None = None) -> Replay:
    """RESUME ``record``'s session, collect its replay up to RESUMED, close with 1000 (see the module docstring).

    Raises ``TimeoutError`` when the replay does not end within ``timeout`` and ``aiohttp.ClientError`` /
    ``OSError`` when the gateway cannot be reached; the connection is closed either way."""
    owned = http is None
    session = http or aiohttp.ClientSession()
    replay = Replay(record.shard_id, resumed=False, seq=record.seq)
    heartbeat: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(timeout):
            async with session.ws_connect(_gateway_url(record.resume_gateway_url), autoclose=False,
                                          max_msg_size=0) as ws:
                try:
                    hello = await _receive(ws)
                    if hello.get("op") != GatewayOp.HELLO:
                        replay.reason = f"the gateway did not start with HELLO (op {hello.get('op')})"
                        return replay
                    interval = float(hello["d"]["heartbeat_interval"]) / 1000.0
                    heartbeat = asyncio.create_task(_heartbeat(ws, interval, replay))
                    await ws.send_str(json.dumps({"op": GatewayOp.RESUME, "d": {
                        "token": token, "session_id": record.session_id, "seq": record.seq}}))
                    while True:
                        message = await _receive(ws)
                        op = message.get("op")
                        if op == GatewayOp.DISPATCH:
                            if isinstance(message.get("s"), int):
                                replay.seq = message["s"]
                            if message.get("t") == "RESUMED":
                                replay.resumed = True
                                return replay
                            replay.events.append((str(message.get("t")), message.get("d")))
                        elif op == GatewayOp.INVALID_SESSION:
                            replay.events.clear()
                            replay.reason = "Discord no longer resumes this session (INVALID_SESSION on RESUME)"
                            return replay
                        elif op == GatewayOp.RECONNECT:
                            replay.events.clear()
                            replay.reason = "the gateway asked to reconnect during the replay"
                            return replay
                        elif op == GatewayOp.HEARTBEAT:
                            await ws.send_str(json.dumps({"op": GatewayOp.HEARTBEAT, "d": replay.seq}))
                finally:
                    if heartbeat is not None:
                        heartbeat.cancel()
                    with contextlib.suppress(Exception):
                        await ws.close(code=1000)
    finally:
        if owned:
            await session.close()


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive()
    if message.type is not aiohttp.WSMsgType.TEXT:
        code = ws.close_code
        raise ConnectionError(f"the gateway closed the replay connection ({message.type.name}, code {code})")
    data = json.loads(message.data)
    if not isinstance(data, dict):
        raise ConnectionError("the gateway sent a frame that is not a JSON object")
    return data


async def _heartbeat(ws: aiohttp.ClientWebSocketResponse, interval: float, replay: Replay) -> None:
    with contextlib.suppress(Exception):
        while not ws.closed:
            await asyncio.sleep(interval)
            await ws.send_str(json.dumps({"op": GatewayOp.HEARTBEAT, "d": replay.seq}))
