"""The gateway websocket: framing, compression, heartbeats and per-connection limits."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from letsfrag.contract.exitcodes import CloseCode
from letsfrag.contract.handover import GATEWAY_PARAM
from letsfrag.contract.opcodes import GatewayOp
from letsfrag.sim import payloads
from letsfrag.sim.client_ops import handle_command
from letsfrag.sim.compression import Compressor, make_compressor
from letsfrag.sim.core import SimCore
from letsfrag.sim.protocol import SUPPORTED_API_VERSIONS
from letsfrag.sim.rest import CORE_KEY, json_response
from letsfrag.sim.sessions import Session

log = logging.getLogger(__name__)
_conn_ids = itertools.count(1)
_RATE_PERIOD = 60.0
_ACK_FRAME = payloads.op_frame(GatewayOp.HEARTBEAT_ACK)
#: a close the peer does not complete (it stopped reading) ends in a TCP reset after this long
_CLOSE_GRACE = 30.0


def handover_marker(value: str | None) -> int | None:
    """The epoch of a ``letsfrag_handover`` query value; None when absent or not a positive integer."""
    if value is None:
        return None
    try:
        epoch = int(value)
    except ValueError:
        return None
    return epoch if epoch > 0 else None


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class GatewayConnection:
    """One client websocket. Frames leave through one writer task, in the order they were queued."""

    def __init__(self, core: SimCore, ws: web.WebSocketResponse, request: web.Request, compressor: Compressor):
        self.core = core
        self.ws = ws
        self.request = request
        self.compressor = compressor
        self.conn_id = next(_conn_ids)
        self.session: Session | None = None
        self.closing = False
        self.last_heartbeat = core.clock()
        self._queue: asyncio.Queue[str | _Close] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._rate_window_start = 0.0
        self._rate_count = 0
        self._rate_flagged = False
        self._close_started = False
        #: ``?letsfrag_replay=1``: a side connection that only drains a session's replay (not a duplicate)
        self.replay_drain = request.query.get("letsfrag_replay") == "1"
        #: ``?letsfrag_handover=<epoch>``: a letsfrag successor's connection (an announced overlap, not a duplicate)
        self.handover_epoch = handover_marker(request.query.get(GATEWAY_PARAM))

    # --- Link -------------------------------------------------------------------------------------------
    def send(self, frame: str) -> None:
        """Queue a frame (dropped once the connection is closing)."""
        if not self.closing:
            self._queue.put_nowait(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close frame after everything already queued."""
        if not self.closing:
            self.closing = True
            self._queue.put_nowait(_Close(code, reason))
            self._timers.add(asyncio.get_running_loop().call_later(_CLOSE_GRACE, self.abort))

    def abort(self) -> None:
        """Cut the TCP connection without a close frame (the client sees a dropped connection)."""
        self.closing = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    # --- loop -------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve the connection until it closes."""
        self.core.link_opened(self)
        self.core.referee.connection_opened(self.compressor.name)
        self._writer = asyncio.create_task(self._write_loop(), name=f"sim-gateway-writer-{self.conn_id}")
        client_code: int | None = None
        hello = {"heartbeat_interval": int(self.core.options.heartbeat_interval * 1000), "_trace": ["letsfrag-sim"]}
        self.send(payloads.op_frame(GatewayOp.HELLO, hello))
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type is WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    try:
                        self._on_text(msg.data.decode())
                    except UnicodeDecodeError:
                        self.core.close_link(self, CloseCode.DECODE_ERROR, "Error while decoding payload.")
                elif msg.type is WSMsgType.CLOSE:
                    client_code = msg.data if isinstance(msg.data, int) else None
                    break
                else:  # CLOSING, CLOSED, ERROR
                    break
        finally:
            self.closing = True
            for timer in self._timers:
                timer.cancel()
            self.core.link_closed(self, client_code)
            writer = self._writer
            if writer is not None and not writer.done():
                try:
                    if self._close_started:  # let our close handshake finish
                        await asyncio.wait_for(asyncio.shield(writer), timeout=5.0)
                except TimeoutError:
                    pass
                finally:
                    writer.cancel()
            if not self.ws.closed:
                await self.ws.close()

    async def _write_loop(self) -> None:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Close):
                    self._close_started = True
                    await self.ws.close(code=item.code, message=item.reason.encode()[:120])
                    return
                data = self.compressor.compress(item)
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer vanished while we wrote: the reader notices and cleans up
            log.debug("gateway connection %s: write failed: %r", self.conn_id, exc)
            self.closing = True

    # --- incoming ---------------------------------------------------------------------------------------
    def _on_text(self, text: str) -> None:
        if self.closing:
            return
        if self._over_rate_limit():
            return
        try:
            message = json.loads(text)
        except ValueError:
            self.core.close_link(self, CloseCode.DECODE_ERROR, "Error while decoding payload.")
            return
        if not isinstance(message, dict):
            self.core.close_link(self, CloseCode.DECODE_ERROR, "Payload must be an object.")
            return
        op, data = message.get("op"), message.get("d")
        if op == GatewayOp.HEARTBEAT:
            self.last_heartbeat = self.core.clock()
            self._schedule_ack()
        try:
            handle_command(self.core, self, op, data)
        except Exception:  # a simulator bug must not look like a protocol answer: log it and close 4000
            log.exception("gateway connection %s: op %r failed", self.conn_id, op)
            self.core.close_link(self, CloseCode.UNKNOWN_ERROR, "simulator error")

    def _schedule_ack(self) -> None:
        delay = self.core.options.ack_delay
        if delay <= 0:
            self.send(_ACK_FRAME)
            return
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self.send(_ACK_FRAME)

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    def _over_rate_limit(self) -> bool:
        """Discord allows ``gateway_rate_limit`` commands per 60 s per connection."""
        now = self.core.clock()
        if now - self._rate_window_start >= _RATE_PERIOD:
            self._rate_window_start, self._rate_count, self._rate_flagged = now, 0, False
        self._rate_count += 1
        if self._rate_count <= self.core.options.gateway_rate_limit:
            return False
        if not self._rate_flagged:
            self._rate_flagged = True
            self.core.referee.count("gateway_rate_limited")
            log.info("gateway connection %s sent more than %s commands in 60s", self.conn_id,
                     self.core.options.gateway_rate_limit)
        if self.core.options.on_violation == "close":
            self.core.close_link(self, CloseCode.RATE_LIMITED, "You are being rate limited.")
            return True
        return False


async def gateway_handler(request: web.Request) -> web.StreamResponse:
    """``GET /`` with a websocket upgrade: a gateway connection; without one, a short JSON description."""
    core = request.app[CORE_KEY]
    ws = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024 * 1024)
    if not ws.can_prepare(request).ok:
        return json_response({"simulator": "letsfrag", "gateway": core.gateway_url})
    query = request.query
    problem: tuple[int, str] | None = None
    if query.get("v", "10") not in SUPPORTED_API_VERSIONS:
        problem = (CloseCode.INVALID_API_VERSION, f"Invalid API version {query.get('v')!r}.")
    elif query.get("encoding", "json") != "json":
        problem = (CloseCode.DECODE_ERROR, f"encoding={query.get('encoding')} is not supported by the simulator")
    compressor: Compressor | None = None
    if problem is None:
        try:
            compressor = make_compressor(query.get("compress"))
        except ValueError as exc:
            problem = (CloseCode.UNKNOWN_ERROR, str(exc))
    await ws.prepare(request)
    if problem is not None or compressor is None:
        code, reason = problem or (CloseCode.UNKNOWN_ERROR, "no compressor")
        core.referee.closed_with(code)
        await ws.close(code=code, message=reason.encode()[:120])
        return ws
    await GatewayConnection(core, ws, request, compressor).run()
    return ws

