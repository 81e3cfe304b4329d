"""Idempotent replies: a message sent while a claimed event is handled carries a nonce derived from the event.

A claimed event may be handled twice after all: a woken process (SIGSTOP, then SIGCONT) finishes the handler it
was running while the new owner, which took the pending claim over (:mod:`letsfrag.claims`), handles the replayed
event. Discord dedupes message creation by nonce: with ``enforce_nonce: true``, a second message of the same
author with the same nonce within a few minutes returns the first one and creates nothing.

discord.py 2.7's ``Messageable.send`` (every ``channel.send``, ``Message.reply``, ``Context.send`` outside an
interaction) gives each message a random nonce when the bot passes none, and sends ``enforce_nonce: true`` with
it (in the JSON payload or the ``payload_json`` part of a multipart one). :func:`install` wraps that one method:
inside a claimed handling (:data:`letsfrag.claims.current_handling` set) a message sent without a nonce gets
``handling.next_nonce()`` instead — the same for the k-th such message of that event in every process. A nonce
the bot passes itself is left alone, and outside a claimed handling nothing changes. Interaction responses need
none: Discord accepts one callback per interaction.
"""

from __future__ import annotations

import functools
from typing import Any

import discord.abc

from ..claims import current_handling

_MARK = "__letsfrag_nonces__"


def install() -> bool:
    """Wrap ``discord.abc.Messageable.send`` (idempotent: False when it was wrapped already)."""
    original = discord.abc.Messageable.send
    if getattr(original, _MARK, False):
        return False

    @functools.wraps(original)
    async def send(self: discord.abc.Messageable, content: Any = None, **kwargs: Any) -> Any:
        handling = current_handling.get()
        if handling is not None and kwargs.get("nonce") is None:
            kwargs["nonce"] = handling.next_nonce()
        return await original(self, content, **kwargs)

    setattr(send, _MARK, True)
    discord.abc.Messageable.send = send  # type: ignore[assignment,method-assign]
    return True
