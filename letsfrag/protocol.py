"""The wire protocol: one signed JSON envelope for every message letsfrag sends over Redis.

An envelope is a JSON object::

    {"v": 1, "type": "command", "id": "9f1c…", "corr": null, "reply_to": "cli-1a2b",
     "sender": "host:web-1", "target": "broker", "ts": 1767225600.123, "payload": {...}, "sig": "hex"}

- ``v`` protocol version; anything else is dropped (``wrong_version``).
- ``type`` one of :class:`MessageType`; unknown types are dropped (``unknown_type``).
- ``id`` unique message id; ``corr`` the id of the request a reply answers; ``reply_to`` set on requests: the
  node whose reply channel (``{ns}:reply:{node}``) gets the answer.
- ``ts`` sender's wall clock (seconds); with a secret, messages older or newer than the window are ``stale``.
- ``sig`` HMAC-SHA256 (hex) over the canonical bytes: the envelope without ``sig``, JSON with sorted keys and no
  spaces, non-ASCII as ``\\u`` escapes. Required whenever a secret is configured (``unsigned`` /
  ``bad_signature`` otherwise).

Decoding never raises anything but :class:`~letsfrag.errors.ProtocolError`, whose ``reason`` is one of
:data:`DROP_REASONS`; receivers count drops and carry on. A receiver also drops a second copy of a message id
it accepted within the window (:class:`ReplayGuard`, reason ``replayed``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .errors import ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_WINDOW = 30.0

DROP_REASONS = (
    "oversized",
    "malformed",
    "wrong_version",
    "unknown_type",
    "unsigned",
    "bad_signature",
    "stale",
    "replayed",
)


class MessageType(StrEnum):
    """Every kind of message on the bus."""

    #: host -> broker: "I registered or changed, look at my record"
    HOST_HELLO = "host_hello"
    #: host -> broker: "I am leaving, move my clusters now"
    HOST_LEAVE = "host_leave"
    #: broker -> host: "your grants changed, read the assignment"
    ASSIGN = "assign"
    #: host -> broker: "I stopped cluster N" (confirms a revoke, e.g. during a rebalance move)
    CLUSTER_STOPPED = "cluster_stopped"
    #: operator -> broker/host: restart, rolling restart, drain, rebalance (a request; acknowledged with its outcome)
    COMMAND = "command"
    #: supervisor -> cluster: close your gateway sessions and exit
    STOP = "stop"
    #: any -> cluster: call a registered RPC handler (a request)
    RPC = "rpc"
    #: any -> cluster: gather attribute values (a request)
    FETCH = "fetch"
    #: any -> cluster: opt-in code evaluation, only when allowed on both sides and signed
    EVAL = "eval"
    #: the answer to a request
    REPLY = "reply"
    #: "something changed, look" (no payload of consequence)
    DOORBELL = "doorbell"
    #: liveness probe (a request)
    PING = "ping"


_TYPES = frozenset(t.value for t in MessageType)


@dataclass(slots=True)
class Envelope:
    """One message on the bus."""

    type: MessageType
    sender: str
    payload: dict[str, Any] = field(default_factory=dict)
    target: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    corr: str | None = None
    reply_to: str | None = None
    ts: float = field(default_factory=time.time)
    v: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "type": str(self.type),
            "id": self.id,
            "corr": self.corr,
            "reply_to": self.reply_to,
            "sender": self.sender,
            "target": self.target,
            "ts": self.ts,
            "payload": self.payload,
        }


def canonical_bytes(body: dict[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, non-ASCII escaped (so any str encodes)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(body: bytes, secret: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


class Codec:
    """Encodes and decodes envelopes with one secret, window and size cap."""

    def __init__(
        self,
        secret: str | bytes | None = None,
        *,
        window: float = DEFAULT_WINDOW,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.window = window
        self.max_bytes = max_bytes

    @property
    def signing(self) -> bool:
        return bool(self._secret)

    def encode(self, envelope: Envelope) -> bytes:
        body = envelope.to_dict()
        data = canonical_bytes(body)
        if self._secret:
            body["sig"] = sign(data, self._secret)
            data = canonical_bytes(body)
        if len(data) > self.max_bytes:
            raise ProtocolError("oversized", f"{len(data)} bytes > cap {self.max_bytes}")
        return data

    def decode(self, raw: bytes | str, now: float | None = None) -> Envelope:
        """Parse and verify ``raw``; raise ``ProtocolError`` with a reason from :data:`DROP_REASONS`."""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="replace")
        if len(raw) > self.max_bytes:
            raise ProtocolError("oversized", f"{len(raw)} bytes > cap {self.max_bytes}")
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError("malformed", "not JSON") from exc
        if not isinstance(body, dict):
            raise ProtocolError("malformed", "not an object")
        if body.get("v") != PROTOCOL_VERSION:
            raise ProtocolError("wrong_version", repr(body.get("v"))[:40])
        kind = body.get("type")
        if not isinstance(kind, str) or kind not in _TYPES:
            raise ProtocolError("unknown_type", repr(kind)[:40])
        env = _envelope_from(body)
        if self._secret:
            sig = body.pop("sig", None)
            if not isinstance(sig, str):
                raise ProtocolError("unsigned", f"from {env.sender}")
            expected = sign(canonical_bytes(body), self._secret)
            if not hmac.compare_digest(sig.encode("utf-8", "replace"), expected.encode()):
                raise ProtocolError("bad_signature", f"from {env.sender}")
            now = time.time() if now is None else now
            if abs(now - env.ts) > self.window:
                raise ProtocolError("stale", f"from {env.sender}, {now - env.ts:.1f}s old")
        return env


class ReplayGuard:
    """Remembers the ids of messages accepted within the signature window; a second copy is a replay.

    Together with the window check this makes a captured signed message useless: too old, it is ``stale``;
    young enough, its id was already seen. Memory is bounded by the messages of one window.
    """

    def __init__(self, window: float = DEFAULT_WINDOW) -> None:
        self.window = window
        self._seen: dict[str, float] = {}
        self._next_prune = 0.0

    def check(self, envelope: Envelope, now: float) -> None:
        """Raise ``ProtocolError("replayed")`` for an id seen within the window; remember it otherwise."""
        if now >= self._next_prune:
            horizon = now - 2 * self.window
            self._seen = {ident: ts for ident, ts in self._seen.items() if ts >= horizon}
            self._next_prune = now + self.window / 4
        if envelope.id in self._seen:
            raise ProtocolError("replayed", f"from {envelope.sender}")
        self._seen[envelope.id] = now


def _envelope_from(body: dict[str, Any]) -> Envelope:
    try:
        ident, sender, ts, payload = body["id"], body["sender"], body["ts"], body.get("payload", {})
    except KeyError as exc:
        raise ProtocolError("malformed", f"missing {exc.args[0]!r}") from exc
    if not isinstance(ident, str) or not ident or len(ident) > 128:
        raise ProtocolError("malformed", "bad id")
    if not isinstance(sender, str) or not sender or len(sender) > 256:
        raise ProtocolError("malformed", "bad sender")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise ProtocolError("malformed", "bad ts")
    if not isinstance(payload, dict):
        raise ProtocolError("malformed", "payload is not an object")
    optional: dict[str, str | None] = {}
    for name in ("corr", "reply_to", "target"):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise ProtocolError("malformed", f"bad {name}")
        optional[name] = value
    return Envelope(
        type=MessageType(body["type"]),
        sender=sender,
        payload=payload,
        id=ident,
        ts=float(ts),
        corr=optional["corr"],
        reply_to=optional["reply_to"],
        target=optional["target"],
    )
