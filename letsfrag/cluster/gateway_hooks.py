"""Hooks into discord.py 2.7's gateway: a check before every RESUME, and the dispatch guard on every parse.

RESUME: discord.py has no hook before it sends RESUME (``before_identify_hook`` covers IDENTIFY only). Every
websocket an ``AutoShardedClient`` opens — first launch, ``Shard.reidentify`` (RESUME or IDENTIFY) and
``Shard.reconnect`` — is created by ``DiscordWebSocket.from_client`` looked up *at call time* as a global of
``discord.shard``. :func:`install` puts :class:`GuardedWebSocket` there: a subclass whose ``resume()`` first
awaits the owning client's ``_lf_before_resume(shard_id)`` (the ownership check; it raises ``FencedError``
when fenced), so no RESUME leaves a process that lost its shards. This replaces a name, not discord.py code;
clients that are not letsfrag clients get the unchanged behaviour. Once an IDENTIFY has left, it awaits the
client's ``_lf_after_identify(shard_id)`` (the bucket's identify window restarts from the send). It also stamps the
time of the last received gateway message per shard (``last_event_age`` in the shard status). A connection whose
RESUME or IDENTIFY fails inside ``from_client`` is closed there (discord.py would leave its keep-alive thread
running).

Parsers: discord.py parses a gateway dispatch (``ConnectionState.parse_*``) *before* calling
``Client.dispatch``, and some parsers act without dispatching (``INTERACTION_CREATE`` runs app commands and
views directly). :func:`wrap_parsers` routes every parse through the guard so nothing the gateway delivered is
acted on past the horizon; held parses run later in arrival order. The parse of a claimable event first waits
for its claim (:mod:`letsfrag.claims`); :data:`current_shard` tells the admission which shard's order a parse keeps.

Gateway URL marker: discord.py builds each gateway URL in ``DiscordWebSocket.from_client`` with
``gateway.with_query(v=..., encoding=..., compress=...)``, which *replaces* the query, so a parameter put into
``DEFAULT_GATEWAY`` (or the ``resume_gateway_url`` it RESUMEs to) is lost. :class:`GuardedWebSocket`'s
``from_client`` asks the client for extra parameters (``client._lf_gateway_query()``, e.g. a handover
successor's ``letsfrag_handover=<epoch>``) and :func:`install` wraps ``HTTPClient.ws_connect`` to add them to
the URL of the connection being opened (only inside that ``from_client``: voice connections are untouched).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

import discord.http
import discord.shard
import yarl
from discord.gateway import DiscordWebSocket

#: the shard whose gateway message is being handled (set around every received message; parsers run inside it)
current_shard: ContextVar[int | None] = ContextVar("letsfrag_current_shard", default=None)
#: query parameters added to the gateway connection being opened (set inside ``GuardedWebSocket.from_client``)
_extra_query: ContextVar[Mapping[str, str] | None] = ContextVar("letsfrag_gateway_query", default=None)


class GuardedWebSocket(DiscordWebSocket):
    """``DiscordWebSocket`` that asks its letsfrag client before every RESUME (see module docstring)."""

    letsfrag_last_receive: float | None = None
    #: gateway messages received on this connection (``messages`` in the shard status; a Prometheus counter)
    letsfrag_messages: int = 0

    @classmethod
    async def from_client(cls, client: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        query = getattr(client, "_lf_gateway_query", None)
        extra = query() if callable(query) else None
        if not extra:
            return await super().from_client(client, **kwargs)
        token = _extra_query.set(extra)
        try:
            return await super().from_client(client, **kwargs)
        finally:
            _extra_query.reset(token)

    async def resume(self) -> None:
        client = _client_of(self)
        check = getattr(client, "_lf_before_resume", None)
        try:
            if check is not None:
                await check(self.shard_id)
            await super().resume()
        except BaseException:
            await self._lf_discard()
            raise

    async def identify(self) -> None:
        try:
            await super().identify()  # runs before_identify_hook: the identify queue and the ownership check
        except BaseException:
            await self._lf_discard()
            raise
        after = getattr(_client_of(self), "_lf_after_identify", None)
        if after is not None:  # the IDENTIFY has left: its bucket's window restarts from now
            await after(self.shard_id)

    async def _lf_discard(self) -> None:
        """``from_client`` failed after HELLO (a RESUME or IDENTIFY refused or postponed, the wait for it
        cancelled, the send failed): nobody gets this connection, so stop its keep-alive thread (started at HELLO;
        left running it would heartbeat a dead socket and outlive the event loop) and close it with 4000, which
        ends no session."""
        if self._keep_alive is not None:
            self._keep_alive.stop()
            self._keep_alive = None
        with contextlib.suppress(Exception):
            await self.close(code=4000)

    async def received_message(self, msg: Any, /) -> None:
        self.letsfrag_last_receive = time.monotonic()
        self.letsfrag_messages += 1
        token = current_shard.set(self.shard_id)
        try:
            await super().received_message(msg)
        finally:
            current_shard.reset(token)


def _client_of(ws: DiscordWebSocket) -> Any:
    state = getattr(ws, "_connection", None)
    get_client = getattr(state, "_get_client", None)
    return get_client() if get_client is not None else None


def marked_url(url: str, extra: Mapping[str, str] | None) -> str:
    """``url`` with the ``extra`` query parameters added (kept as they are when there are none)."""
    if not extra:
        return url
    return str(yarl.URL(url).update_query(dict(extra)))


def install() -> None:
    """Make discord.py's shard machinery create :class:`GuardedWebSocket` and let it mark its gateway URLs
    (idempotent)."""
    discord.shard.DiscordWebSocket = GuardedWebSocket  # type: ignore[attr-defined,misc]
    original = discord.http.HTTPClient.ws_connect
    if getattr(original, "__letsfrag_marked__", False):
        return

    async def ws_connect(self: discord.http.HTTPClient, url: str, *, compress: int = 0) -> Any:
        return await original(self, marked_url(url, _extra_query.get()), compress=compress)

    ws_connect.__letsfrag_marked__ = True  # type: ignore[attr-defined]
    discord.http.HTTPClient.ws_connect = ws_connect  # type: ignore[method-assign]


def wrap_parsers(
    parsers: dict[str, Callable[[Any], None]], admit: Callable[[str, Any, Callable[[], None]], Any]
) -> int:
    """Route every gateway parser through ``admit(event, data, parse)`` (which runs, holds or drops the parse);
    return how many."""
    wrapped = 0
    for event, func in list(parsers.items()):
        if getattr(func, "__letsfrag_guarded__", False):
            continue

        def guarded(data: Any, _func: Callable[[Any], None] = func, _event: str = event) -> None:
            admit(_event, data, lambda: _func(data))

        guarded.__letsfrag_guarded__ = True  # type: ignore[attr-defined]
        parsers[event] = guarded
        wrapped += 1
    return wrapped
