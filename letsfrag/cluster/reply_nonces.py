"""Idempotent replies: a message sent while a claimed event is handled carries a nonce derived from the event.

A claimed event may be handled twice after all: a woken process (SIGSTOP, then SIGCONT) finishes the handler it
was running while the new owner, which took the pending claim over (:mod:`letsfrag.claims`), handles the replayed
event. Discord dedupes message creation by nonce: with ``enforce_nonce: true``, a second message of the same
author with the same nonce within a few minutes returns the first one and creates nothing. :func:`install` wraps
one client's ``HTTPClient.send_message`` (every ``Messageable.send``/``Message.reply`` of discord.py 2.7 goes
through it): inside a claimed handling (``current()`` not None) a message sent without a nonce gets
``handling.next_nonce()`` — the same for the k-th message of that event in every process — and
``enforce_nonce: true``, in the JSON payload or in the ``payload_json`` part of a multipart one. A nonce the bot
passes itself is left alone. Interaction responses need none: Discord accepts one callback per interaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from discord.http import HTTPClient, MultipartParameters

from ..claims import ClaimedHandling

_MARK = "__letsfrag_nonces__"


def with_nonce(params: MultipartParameters, nonce: Callable[[], str]) -> MultipartParameters:
    """``params`` with the nonce ``nonce()`` and ``enforce_nonce`` set, unless the payload already has a nonce
    (then ``nonce`` is not called); a new tuple, the given one is not changed."""
    if params.payload is not None:
        if params.payload.get("nonce") is not None:
            return params
        return params._replace(payload={**params.payload, "nonce": nonce(), "enforce_nonce": True})
    if not params.multipart:
        return params
    parts = list(params.multipart)
    for index, part in enumerate(parts):
        if part.get("name") != "payload_json":
            continue
        payload = json.loads(part["value"])
        if not isinstance(payload, dict) or payload.get("nonce") is not None:
            return params
        payload.update(nonce=nonce(), enforce_nonce=True)
        parts[index] = {**part, "value": json.dumps(payload, separators=(",", ":"))}
        return params._replace(multipart=parts)
    return params


def install(http: HTTPClient, current: Callable[[], ClaimedHandling | None]) -> bool:
    """Wrap ``http.send_message`` of this client (idempotent); False when it was wrapped already."""
    if getattr(http.send_message, _MARK, False):
        return False
    original = http.send_message

    def send_message(channel_id: Any, *, params: MultipartParameters) -> Any:
        handling = current()
        if handling is not None:
            params = with_nonce(params, handling.next_nonce)
        return original(channel_id, params=params)

    setattr(send_message, _MARK, True)
    http.send_message = send_message  # type: ignore[method-assign]
    return True
