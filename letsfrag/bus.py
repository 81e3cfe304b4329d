"""The Redis transport: signed envelopes over pub/sub, request/reply with deadlines, reconnects.

One client (``bus.redis``) serves commands and publishing; subscriptions run on their own connection inside a
receive loop that survives Redis restarts: it reconnects with capped backoff, re-subscribes every channel and
exposes ``connected`` (and ``on_state`` callbacks). Requests carry ``reply_to``; the answer comes back on
``{ns}:reply:{node}`` and callers always get a value, a :class:`RemoteError` or a :class:`RequestTimeout`.

Every envelope is bound to its receiver here, once for all receivers: it carries (signed) the channel it was
published on and is dropped on any other (``misrouted``); a ``target`` must name this node or one of its
:attr:`Bus.aliases` (``wrong_receiver``, routine on shared inboxes: a standby broker sees the leader's
commands). Ids are remembered in memory for the window (:class:`~letsfrag.contract.envelope.ReplayGuard`); with a
secret, :data:`~letsfrag.contract.envelope.ONCE_TYPES` (commands, stop, rpc, eval) are also claimed in Redis
(``SET {ns}:replay:<receiver>:<id> 1 NX PX <2 × window>``, receiver = the target name or, without a target,
this node's id) before their handler runs, so a receiver restarted inside the window still refuses a replay.
The broadcast channel, which every cluster must read, has a smaller size cap (``broadcast_max_bytes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .connection import create_redis, display_url
from .contract.envelope import (
    DEFAULT_BROADCAST_MAX_BYTES,
    DEFAULT_MAX_BYTES,
    DEFAULT_WINDOW,
    ONCE_TYPES,
    Codec,
    Envelope,
    MessageType,
    ReplayGuard,
    sender_hint,
)
from .contract.keys import Keys
from .errors import BusError, ProtocolError, RemoteError, RequestTimeout
from .logs import mask
from .loops import cancel_and_wait

if TYPE_CHECKING:
    from .config import RedisSettings

log = logging.getLogger(__name__)

Handler = Callable[[Envelope], Awaitable[Any]]
StateCallback = Callable[[bool], Any]

#: a handler returns this to send no reply to a request (e.g. a broadcast meant for others)
NO_REPLY: Any = object()

_DROP_WARN_INTERVAL = 60.0
#: at most this many drop warnings per interval in all (senders are chosen by whoever publishes)
_DROP_WARN_BUDGET = 20


@dataclass(frozen=True, slots=True)
class Result:
    """One target's outcome in a fan-out: a value, an error, or a timeout."""

    target: str
    status: Literal["ok", "error", "timeout"]
    value: Any = None
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "status": self.status, "value": self.value,
                "error": self.error, "error_type": self.error_type}


class _Collector:
    """Gathers replies for one request id until every expected sender answered.

    ``done`` is a bare future (not an ``asyncio.Event``): ``wait_for`` on a future needs no extra task.
    """

    def __init__(self, expected: set[str] | None) -> None:
        self.expected = expected
        self.missing = len(expected) if expected is not None else 1
        self.replies: dict[str, Envelope] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def add(self, env: Envelope) -> None:
        if env.sender not in self.replies and (self.expected is None or env.sender in self.expected):
            self.missing -= 1
        self.replies[env.sender] = env
        if self.missing <= 0:
            self.finish()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Bus:
    """A node's connection to the letsfrag bus (see module docstring)."""

    def __init__(
        self,
        redis: RedisSettings | str,
        *,
        node_id: str,
        namespace: str = "letsfrag",
        secret: str | None = None,
        window: float = DEFAULT_WINDOW,
        max_bytes: int = DEFAULT_MAX_BYTES,
        broadcast_max_bytes: int = DEFAULT_BROADCAST_MAX_BYTES,
        request_timeout: float = 10.0,
        reconnect_max: float = 1.0,
        aliases: Iterable[str] = (),
    ) -> None:
        self.node_id = node_id
        #: other target names this node answers to now (the leading broker answers to ``broker``)
        self.aliases: set[str] = set(aliases)
        self.keys = Keys(namespace)
        self.codec = Codec(secret, window=window, max_bytes=max_bytes)
        self.broadcast_max_bytes = broadcast_max_bytes
        self.replays = ReplayGuard(window)
        self.request_timeout = request_timeout
        self.reconnect_max = reconnect_max
        self.redis: aioredis.Redis = create_redis(redis)
        # raw bytes on the subscription side: a message that is not UTF-8 must be dropped, not crash the decoder
        self._sub_redis: aioredis.Redis = create_redis(redis, decode_responses=False)
        self.address = display_url(redis)
        self.connected = False
        self.dropped: Counter[str] = Counter()
        self.received = 0
        self._handlers: dict[str, Handler] = {}
        self._pending: dict[str, _Collector] = {}
        self._state_callbacks: list[StateCallback] = []
        self._pubsub: Any = None
        self._loop_task: asyncio.Task[None] | None = None
        # the broadcast channel, which anyone may flood, is read on a connection of its own: a backlog there
        # (or Redis cutting that subscriber off at its output buffer limit) never delays this node's inbox
        self._broadcast_task: asyncio.Task[None] | None = None
        self._broadcast_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribed = asyncio.Event()
        self._closing = False
        self._last_warning: dict[str, float] = {}

    # lifecycle ---------------------------------------------------------------------------------------

    async def start(self, wait: float | None = 10.0) -> None:
        """Start the receive loop; wait up to ``wait`` seconds for the first subscription (None: don't wait)."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._receive_loop(False), name=f"bus-{self.node_id}")
        self._start_broadcast_loop()
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), wait)
                if self._broadcast_task is not None:
                    await asyncio.wait_for(self._broadcast_ready.wait(), wait)
            if not self.connected:
                raise BusError(f"cannot reach Redis at {self.address}")

    async def close(self) -> None:
        """Stop the receive loop, fail pending requests and close connections."""
        self._closing = True
        await cancel_and_wait(self._loop_task, self._broadcast_task)
        self._loop_task = self._broadcast_task = None
        for task in list(self._tasks):
            task.cancel()
        for collector in self._pending.values():
            collector.finish()
        for client in (self.redis, self._sub_redis):
            with contextlib.suppress(Exception):
                await client.aclose()

    async def __aenter__(self) -> Bus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def on_state(self, callback: StateCallback) -> None:
        """Call ``callback(connected)`` whenever the subscription connection goes up or down."""
        self._state_callbacks.append(callback)

    # subscriptions -----------------------------------------------------------------------------------

    @property
    def reply_channel(self) -> str:
        return self.keys.reply(self.node_id)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        """Route every valid envelope on ``channel`` to ``handler``; a request's return value is its reply."""
        self._handlers[channel] = handler
        if channel == self.keys.broadcast:
            if self._loop_task is not None and self._broadcast_task is None:
                self._start_broadcast_loop()
                if self.connected:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._broadcast_ready.wait(), 10.0)
            return
        if self._pubsub is not None and self.connected:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._handlers.pop(channel, None)
        if channel == self.keys.broadcast:
            if self._broadcast_task is not None:
                self._broadcast_task.cancel()
                self._broadcast_task = None
                self._broadcast_ready.clear()
            return
        if self._pubsub is not None and self.connected:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    def _start_broadcast_loop(self) -> None:
        if self.keys.broadcast in self._handlers and self._broadcast_task is None and not self._closing:
            self._broadcast_task = asyncio.create_task(self._receive_loop(True),
                                                       name=f"bus-{self.node_id}-broadcast")

    async def _receive_loop(self, broadcast: bool) -> None:
        """Read one subscription connection: the broadcast channel alone, or the reply channel and every
        other subscribed channel (whose state is :attr:`connected`)."""
        delay = 0.1
        while not self._closing:
            pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
            try:
                if broadcast:
                    await pubsub.subscribe(self.keys.broadcast)
                    self._broadcast_ready.set()
                else:
                    await pubsub.subscribe(self.reply_channel, *(c for c in self._handlers if c != self.keys.broadcast))
                    self._pubsub = pubsub
                    self._set_connected(True)
                delay = 0.1
                while True:
                    # block without a timeout: a timed read costs a timer and a cancel scope per message
                    message = await pubsub.get_message(timeout=None)
                    if message is not None and message.get("type") == "message":
                        channel = message["channel"]
                        self._on_raw(channel.decode() if isinstance(channel, bytes) else channel, message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if broadcast and self._broadcast_ready.is_set():
                    log.warning("lost the broadcast subscription at %s (%s); resubscribing", self.address,
                                type(exc).__name__)
                elif not broadcast:
                    if self.connected:
                        log.warning("lost Redis at %s (%s); reconnecting", self.address, type(exc).__name__)
                    self._set_connected(False)
            finally:
                if broadcast:
                    self._broadcast_ready.clear()
                else:
                    self._pubsub = None
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            if self._closing:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max)

    def _set_connected(self, up: bool) -> None:
        if up == self.connected:
            if up:
                self._subscribed.set()
            return
        self.connected = up
        if up:
            log.info("connected to Redis at %s", self.address)
            self._subscribed.set()
        for callback in self._state_callbacks:
            try:
                result = callback(up)
                if asyncio.iscoroutine(result):
                    self._spawn(result)
            except Exception:
                log.exception("bus state callback failed")

    # receiving ---------------------------------------------------------------------------------------

    def _cap(self, channel: str) -> int | None:
        return self.broadcast_max_bytes if channel == self.keys.broadcast else None

    def _on_raw(self, channel: str, data: Any) -> None:
        try:
            env = self.codec.decode(data, channel=channel, max_bytes=self._cap(channel))
            if env.target is not None and env.target != self.node_id and env.target not in self.aliases:
                # the channel is right (it is signed): a message for another node on a shared inbox
                self.dropped["wrong_receiver"] += 1
                log.debug("ignored a %s for %r on %s", env.type, env.target, channel)
                return
            self.replays.check(env, time.monotonic())
        except ProtocolError as exc:
            self._count_drop(exc, data)
            return
        except Exception:  # the decoder promises ProtocolError only; never let anything out of the loop
            log.exception("decoder failed unexpectedly")
            self.dropped["malformed"] += 1
            return
        self.received += 1
        if env.type is MessageType.REPLY:
            if env.corr and env.corr in self._pending:
                self._pending[env.corr].add(env)
            return
        handler = self._handlers.get(channel)
        if handler is not None:
            self._spawn(self._handle(handler, env))

    def _count_drop(self, exc: ProtocolError, data: Any, sender: str | None = None) -> None:
        self.dropped[exc.reason] += 1
        if sender is None and isinstance(data, bytes):  # the first bytes only: a dropped message is never parsed
            sender = sender_hint(data)
        sender = "unknown" if sender is None else sender[:64]
        now = time.monotonic()
        if now - self._last_warning.get(sender, -_DROP_WARN_INTERVAL) < _DROP_WARN_INTERVAL:
            return
        # forget senders warned about more than an interval ago, so forged sender names cannot grow this
        self._last_warning = {k: t for k, t in self._last_warning.items() if now - t < _DROP_WARN_INTERVAL}
        if len(self._last_warning) >= _DROP_WARN_BUDGET:
            return
        self._last_warning[sender] = now
        if len(self._last_warning) == _DROP_WARN_BUDGET:
            log.warning("dropped a message from %r: %s; more than %d senders in a minute: further drops are only "
                        "counted", sender, exc, _DROP_WARN_BUDGET)
        else:
            log.warning("dropped a message from %r: %s (further drops from it are counted quietly)", sender, exc)

    async def _claim(self, env: Envelope) -> bool:
        """Record ``env``'s id in Redis for this receiver; False when it was recorded before (a replay)."""
        receiver = env.target or self.node_id
        ttl = max(1, int(2 * self.codec.window * 1000))
        return bool(await self.redis.set(self.keys.replay(receiver, env.id), "1", nx=True, px=ttl))

    async def _handle(self, handler: Handler, env: Envelope) -> None:
        try:
            if env.type in ONCE_TYPES and self.codec.signing:
                try:
                    claimed = await self._claim(env)
                except (RedisError, OSError) as exc:  # refuse rather than risk running it twice
                    raise BusError(f"cannot record message id {env.id} in Redis to refuse replays ({exc})") from exc
                if not claimed:
                    self._count_drop(ProtocolError("replayed", "id already recorded in Redis"), None, env.sender)
                    return
            value = await handler(env)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not env.reply_to:
                log.warning("%s from %r refused: %s: %s", env.type, env.sender, type(exc).__name__, exc)
                log.debug("handler traceback", exc_info=True)
                return
            # a handler's error text goes over Redis: the registered secrets never do
            await self._reply(env, {"ok": False, "error": {"type": type(exc).__name__, "message": mask(str(exc))}})
            return
        if env.reply_to and value is not NO_REPLY:
            await self._reply(env, {"ok": True, "value": value})

    async def _reply(self, request: Envelope, payload: dict[str, Any]) -> None:
        assert request.reply_to is not None
        try:
            await self.publish(self.keys.reply(request.reply_to), MessageType.REPLY, payload, corr=request.id,
                               target=request.reply_to)
        except (BusError, TypeError, ValueError) as exc:
            if isinstance(exc, TypeError | ValueError):
                error = {"type": "TypeError", "message": f"result is not JSON-serialisable: {exc}"}
                with contextlib.suppress(BusError):
                    await self.publish(self.keys.reply(request.reply_to), MessageType.REPLY,
                                       {"ok": False, "error": error}, corr=request.id, target=request.reply_to)
            else:
                log.warning("could not reply to %r: %s", request.sender, exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # sending -----------------------------------------------------------------------------------------

    def envelope(self, type: MessageType, payload: dict[str, Any] | None = None, **fields: Any) -> Envelope:
        return Envelope(type=type, sender=self.node_id, payload=payload or {}, **fields)

    async def publish(
        self,
        channel: str,
        type: MessageType,
        payload: dict[str, Any] | None = None,
        *,
        target: str | None = None,
        corr: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
    ) -> int:
        """Publish one envelope, signed for ``channel``; return how many subscribers received it.

        Raises ``BusError`` when offline, ``ProtocolError("oversized")`` over the channel's size cap."""
        fields: dict[str, Any] = {"target": target, "corr": corr, "reply_to": reply_to, "channel": channel}
        if message_id:
            fields["id"] = message_id
        data = self.codec.encode(self.envelope(type, payload, **fields), max_bytes=self._cap(channel))
        try:
            return int(await self.redis.publish(channel, data))
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot publish to {channel}: Redis at {self.address} unavailable ({exc})") from exc

    async def request(
        self,
        channel: str,
        type: MessageType,
        payload: dict[str, Any] | None = None,
        *,
        target: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a request to one target and return its value; raise ``RemoteError`` or ``RequestTimeout``."""
        name = target or channel
        result = (await self._collect(channel, type, payload, {name}, target, timeout, single=True))[name]
        if result.status == "ok":
            return result.value
        if result.status == "error":
            raise RemoteError(result.error_type or "Error", result.error or "")
        raise RequestTimeout(result.error or f"no reply from {name}")

    async def broadcast(
        self,
        channel: str,
        type: MessageType,
        payload: dict[str, Any] | None = None,
        *,
        expected: Iterable[str],
        timeout: float | None = None,
    ) -> dict[str, Result]:
        """Publish once on a shared channel and gather a :class:`Result` per expected sender (partial results)."""
        return await self._collect(channel, type, payload, set(expected), None, timeout, single=False)

    async def gather(
        self,
        targets: dict[str, str],
        type: MessageType,
        payload: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Result]:
        """Send the same request to several targets (``{target: channel}``) and gather every outcome."""
        calls = [
            self._collect(channel, type, payload, {name}, name, timeout, single=True)
            for name, channel in targets.items()
        ]
        merged: dict[str, Result] = {}
        for part in await asyncio.gather(*calls):
            merged.update(part)
        return merged

    async def _collect(
        self,
        channel: str,
        type: MessageType,
        payload: dict[str, Any] | None,
        expected: set[str],
        target: str | None,
        timeout: float | None,
        *,
        single: bool,
    ) -> dict[str, Result]:
        deadline = self.request_timeout if timeout is None else timeout
        env_id = uuid.uuid4().hex
        collector = _Collector(None if single else expected)
        self._pending[env_id] = collector
        try:
            try:
                receivers = await self.publish(channel, type, payload, target=target,
                                               reply_to=self.node_id, message_id=env_id)
            except BusError as exc:
                return {name: Result(name, "timeout", error=str(exc)) for name in expected}
            if receivers == 0:
                return {name: Result(name, "timeout", error=f"nobody is listening on {channel}")
                        for name in expected}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(collector.done, deadline)
        finally:
            self._pending.pop(env_id, None)
        results: dict[str, Result] = {}
        replies = collector.replies
        if single and replies:
            replies = {next(iter(expected)): next(iter(replies.values()))}
        for name, env in replies.items():
            results[name] = _result_from(name, env)
        for name in expected - results.keys():
            results[name] = Result(name, "timeout", error=f"no reply from {name} within {deadline:g}s")
        return results


def _result_from(name: str, env: Envelope) -> Result:
    payload = env.payload
    if payload.get("ok") is True:
        return Result(name, "ok", value=payload.get("value"))
    raw_error = payload.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    return Result(name, "error", error=str(error.get("message", "")), error_type=str(error.get("type", "Error")))
