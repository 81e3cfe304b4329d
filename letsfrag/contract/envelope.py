"""The wire protocol: one signed envelope for every message letsfrag sends over Redis.

A message on the wire is a *frame*: a short header, then the envelope as JSON::

    lf2.<sig>.{"v":2,"sender":"host:web-1","type":"command","id":"9f1c…","corr":null,"reply_to":"cli-1a2b",
               "target":"broker","channel":"letsfrag:cb","ts":1767225600.123,"payload":{...}}

- ``lf2`` names the frame format and protocol version; anything else is dropped (``wrong_version``; a plain
  JSON object is a version-1 envelope) before any parsing.
- ``sig`` HMAC-SHA256 (hex) over the exact body bytes after the second ``.``; empty when unsigned. With a
  secret it is checked over the raw bytes *before* the body is parsed (``unsigned`` / ``bad_signature``), so
  refusing a forgery costs one HMAC, never a JSON parse. Oversized frames are refused by length first.
- ``v`` the protocol version again (must equal the header's); ``type`` one of :class:`MessageType` (unknown
  types are ``unknown_type``); ``id`` unique message id; ``corr`` the id of the request a reply answers;
  ``reply_to`` set on requests: the node whose reply channel (``{ns}:reply:{node}``) gets the answer.
- ``target`` the node the message is for (``None``: whoever serves ``channel``); ``channel`` the pub/sub
  channel it was signed for. A receiver drops an envelope that arrived on another channel (``misrouted``) or
  names another node (``wrong_receiver``), so a captured message cannot be replayed to a second receiver.
- ``ts`` sender's wall clock (seconds); with a secret, messages older or newer than the window are ``stale``.

Decoding never raises anything but :class:`~letsfrag.errors.ProtocolError`, whose ``reason`` is one of
:data:`DROP_REASONS`; receivers count drops and carry on. A receiver also drops a second copy of a message id
it accepted within the window (:class:`ReplayGuard` in memory; for :data:`ONCE_TYPES` also a key in Redis,
see :class:`letsfrag.bus.Bus`), reason ``replayed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import ProtocolError

PROTOCOL_VERSION = 2
DEFAULT_MAX_BYTES = 1024 * 1024
#: the default size cap of the broadcast channel: every cluster receives (and must refuse) what is sent there
DEFAULT_BROADCAST_MAX_BYTES = 64 * 1024
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
    "misrouted",
    "wrong_receiver",
)

_HEADER = f"lf{PROTOCOL_VERSION}.".encode()
_SIG_HEX = re.compile(rb"^[0-9a-f]{64}$")
#: where a frame's sender is looked for when it is dropped: the first bytes only, never a parse of the body
_SENDER = re.compile(rb'"sender"\s*:\s*"((?:[^"\\\x00-\x1f]|\\.){1,256})"')
_SENDER_SCAN = 512


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

#: Messages that change state or run code, and so must run at most once even across receiver restarts: with a
#: secret the receiving bus records their id in Redis for the window (``{ns}:replay:<receiver>:<id>``) before
#: the handler sees them. The others are idempotent or harmless twice and skip that round trip: ``ping`` and
#: ``fetch`` only read; ``assign``, ``doorbell`` and ``host_hello`` only say "look at the keys";
#: ``cluster_stopped`` is checked against the move's epoch; ``host_leave`` names the host incarnation that
#: leaves (a restarted host has another); a ``reply`` is matched to a pending request id in memory.
ONCE_TYPES = frozenset({MessageType.COMMAND, MessageType.STOP, MessageType.RPC, MessageType.EVAL})


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
    channel: str | None = None
    v: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The body fields, ``sender`` first (a dropped frame's sender is read from its first bytes)."""
        return {
            "v": self.v,
            "sender": self.sender,
            "type": str(self.type),
            "id": self.id,
            "corr": self.corr,
            "reply_to": self.reply_to,
            "target": self.target,
            "channel": self.channel,
            "ts": self.ts,
            "payload": self.payload,
        }


def body_bytes(body: dict[str, Any]) -> bytes:
    """The body of a frame: compact JSON, non-ASCII escaped (so any str encodes); the signature covers these
    exact bytes, so receivers never re-serialise anything."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode()


def frame(body: bytes, sig: str = "") -> bytes:
    """``lf2.<sig>.<body>``: the bytes published on Redis."""
    return _HEADER + sig.encode() + b"." + body


def split_frame(raw: bytes) -> tuple[bytes, bytes]:
    """``(sig, body)`` of a frame, without parsing the body; ``ProtocolError`` when it is not a frame."""
    sig, start = _read_header(raw)
    return sig, raw[start:]


def _read_header(raw: bytes) -> tuple[bytes, int]:
    """The signature of a frame and where its body starts (the body itself is not copied)."""
    if not raw.startswith(_HEADER):
        if raw[:64].lstrip()[:1] == b"{":
            raise ProtocolError("wrong_version", "a plain JSON envelope (protocol version 1)")
        if raw.startswith(b"lf") and raw[2:3].isdigit():
            raise ProtocolError("wrong_version", repr(raw[:8])[:40])
        raise ProtocolError("malformed", "not a letsfrag frame")
    dot = raw.find(b".", len(_HEADER), len(_HEADER) + 65)
    if dot < 0:
        raise ProtocolError("malformed", "no signature field")
    sig = raw[len(_HEADER):dot]
    if sig and not _SIG_HEX.match(sig):
        raise ProtocolError("malformed", "signature is not 64 hex digits")
    return sig, dot + 1


def sender_hint(raw: bytes) -> str | None:
    """The ``sender`` a dropped frame claims, read from its first bytes only (for the drop warning; unverified)."""
    match = _SENDER.search(raw, 0, _SENDER_SCAN)
    if match is None:
        return None
    try:
        value = json.loads(b'"' + match.group(1) + b'"')
    except ValueError:
        return None
    return value[:64] if isinstance(value, str) else None


def sign(body: bytes | memoryview, secret: bytes) -> str:
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

    def encode(self, envelope: Envelope, *, max_bytes: int | None = None) -> bytes:
        """The frame of ``envelope`` (signed with a secret); ``ProtocolError("oversized")`` over the cap."""
        body = body_bytes(envelope.to_dict())
        data = frame(body, sign(body, self._secret) if self._secret else "")
        cap = self.max_bytes if max_bytes is None else min(max_bytes, self.max_bytes)
        if len(data) > cap:
            raise ProtocolError("oversized", f"{len(data)} bytes > cap {cap}")
        return data

    def decode(self, raw: bytes | str, now: float | None = None, *, channel: str | None = None,
               max_bytes: int | None = None) -> Envelope:
        """Verify and parse ``raw``; raise ``ProtocolError`` with a reason from :data:`DROP_REASONS`.

        In this order, cheapest first: length (``max_bytes`` lowers the cap), frame header, signature over the
        raw body, then the JSON parse, the fields, the window and — when ``channel`` (the channel the frame
        arrived on) is given — the channel the envelope was signed for.
        """
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="replace")
        cap = self.max_bytes if max_bytes is None else min(max_bytes, self.max_bytes)
        if len(raw) > cap:
            raise ProtocolError("oversized", f"{len(raw)} bytes > cap {cap}")
        sig, start = _read_header(raw)
        if self._secret:
            if not sig:
                raise ProtocolError("unsigned", "no signature")
            if not hmac.compare_digest(sig, sign(memoryview(raw)[start:], self._secret).encode()):
                raise ProtocolError("bad_signature", "signature does not match")
        try:
            body = json.loads(raw[start:])
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
            now = time.time() if now is None else now
            if abs(now - env.ts) > self.window:
                raise ProtocolError("stale", f"from {env.sender!r}, {now - env.ts:.1f}s old")
        if channel is not None and env.channel != channel:
            raise ProtocolError("misrouted", f"from {env.sender!r}: signed for channel {env.channel!r}, "
                                             f"arrived on {channel!r}")
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
            raise ProtocolError("replayed", f"from {envelope.sender!r}")
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
    for name in ("corr", "reply_to", "target", "channel"):
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
        channel=optional["channel"],
    )
