"""Hooks into discord.py 2.7's gateway: a check before every RESUME, and the dispatch guard on every parse.

RESUME: discord.py has no hook before it sends RESUME (``before_identify_hook`` covers IDENTIFY only). Every
websocket an ``AutoShardedClient`` opens — first launch, ``Shard.reidentify`` (RESUME or IDENTIFY) and
``Shard.reconnect`` — is created by ``DiscordWebSocket.from_client`` looked up *at call time* as a global of
``discord.shard``. :func:`install` puts :class:`GuardedWebSocket` there: a subclass whose ``resume()`` first
awaits the owning client's ``_lf_before_resume(shard_id)`` (the ownership check; it raises ``FencedError``
when fenced), so no RESUME leaves a process that lost its shards. This replaces a name, not discord.py code;
clients that are not letsfrag clients get the unchanged behaviour. It also stamps the time of the last
received gateway message per shard (``last_event_age`` in the shard status).

Parsers: discord.py parses a gateway dispatch (``ConnectionState.parse_*``) *before* calling
``Client.dispatch``, and some parsers act without dispatching (``INTERACTION_CREATE`` runs app commands and
views directly). :func:`wrap_parsers` routes every parse through the guard so nothing the gateway delivered is
acted on past the horizon; held parses run later in arrival order. The parse of a claimable event first waits
for its claim (:mod:`letsfrag.claims`); :data:`current_shard` tells the admission which shard's order a parse keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import discord.shard
from discord.gateway import DiscordWebSocket

#: the shard whose gateway message is being handled (set around every received message; parsers run inside it)
current_shard: ContextVar[int | None] = ContextVar("letsfrag_current_shard", default=None)


class GuardedWebSocket(DiscordWebSocket):
    """``DiscordWebSocket`` that asks its letsfrag client before every RESUME (see module docstring)."""

    letsfrag_last_receive: float | None = None
    #: gateway messages received on this connection (``messages`` in the shard status; a Prometheus counter)
    letsfrag_messages: int = 0

    async def resume(self) -> None:
        client = _client_of(self)
        check = getattr(client, "_lf_before_resume", None)
        if check is not None:
            await check(self.shard_id)
        await super().resume()

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


def install() -> None:
    """Make discord.py's shard machinery create :class:`GuardedWebSocket` (idempotent)."""
    discord.shard.DiscordWebSocket = GuardedWebSocket  # type: ignore[attr-defined,misc]


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
