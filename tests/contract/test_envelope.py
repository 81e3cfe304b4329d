"""The envelope codec: frames, signing over raw bytes, staleness, size caps, channel binding, and a fuzzed
decoder that never raises anything else."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from letsfrag.contract.envelope import DROP_REASONS, Codec, Envelope, MessageType, frame, sender_hint, sign, split_frame
from letsfrag.errors import ProtocolError

SECRET = "s3cret-for-tests"


def _env(**kw: object) -> Envelope:
    base: dict[str, object] = {"type": MessageType.COMMAND, "sender": "cli-1", "payload": {"action": "restart"}}
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def test_round_trip_without_secret() -> None:
    codec = Codec()
    env = _env(target="broker", reply_to="cli-1")
    decoded = codec.decode(codec.encode(env))
    assert decoded.to_dict() == env.to_dict()


def test_signed_round_trip() -> None:
    codec = Codec(SECRET)
    env = _env()
    assert codec.decode(codec.encode(env)).payload == {"action": "restart"}


def test_forged_signature_is_rejected() -> None:
    good, forger = Codec(SECRET), Codec("another secret")
    with pytest.raises(ProtocolError) as err:
        good.decode(forger.encode(_env()))
    assert err.value.reason == "bad_signature"


def test_tampered_payload_is_rejected() -> None:
    codec = Codec(SECRET)
    sig, raw_body = split_frame(codec.encode(_env()))
    body = json.loads(raw_body)
    body["payload"]["action"] = "drain"
    with pytest.raises(ProtocolError) as err:
        codec.decode(frame(json.dumps(body).encode(), sig.decode()))
    assert err.value.reason == "bad_signature"
    # the same body re-serialised differently (key order, spaces) is other bytes: also refused
    body["payload"]["action"] = "restart"
    with pytest.raises(ProtocolError) as err:
        codec.decode(frame(json.dumps(body, indent=1).encode(), sig.decode()))
    assert err.value.reason == "bad_signature"


def test_signature_is_checked_before_the_body_is_parsed() -> None:
    """A forged frame whose body is not even JSON is refused for its signature: nothing was parsed."""
    codec = Codec(SECRET)
    assert codec.decode(codec.encode(_env())).sender == "cli-1"
    for raw in (frame(b"[" * 50_000), frame(b"{not json", "0" * 64), frame(b"x" * 1000, "ab" * 32)):
        with pytest.raises(ProtocolError) as err:
            codec.decode(raw)
        assert err.value.reason in ("unsigned", "bad_signature")
    # with the secret the same garbage body gets as far as the parser
    with pytest.raises(ProtocolError) as err:
        codec.decode(frame(b"{not json", sign(b"{not json", SECRET.encode())))
    assert err.value.reason == "malformed"


def test_envelope_is_bound_to_the_channel_it_was_signed_for() -> None:
    codec = Codec(SECRET)
    data = codec.encode(_env(channel="ns:cm:h0", target="host:h0"))
    assert codec.decode(data, channel="ns:cm:h0").target == "host:h0"
    for elsewhere in ("ns:cm:h1", "ns:broadcast", "ns:cb"):
        with pytest.raises(ProtocolError) as err:
            codec.decode(data, channel=elsewhere)
        assert err.value.reason == "misrouted"
    with pytest.raises(ProtocolError) as err:  # signed for no channel: valid on none
        codec.decode(codec.encode(_env()), channel="ns:cm:h0")
    assert err.value.reason == "misrouted"


def test_sender_hint_reads_only_the_first_bytes() -> None:
    data = Codec().encode(_env(sender="host:h0"))
    assert sender_hint(data) == "host:h0"
    assert sender_hint(rb'lf2..{"v":2,"sender":"a\"b\u00e9"}') == 'a"b\u00e9'
    assert sender_hint(b"lf2.." + b" " * 1000 + b'{"sender":"late"}') is None
    assert sender_hint(b'{"v": 1, "sender": "old-format"}') == "old-format"
    assert sender_hint(b'"sender":"' + b"x" * 300 + b'"') is None  # longer than a sender may be
    assert sender_hint(b"\xff" * 100) is None


def test_missing_signature_is_rejected() -> None:
    with pytest.raises(ProtocolError) as err:
        Codec(SECRET).decode(Codec().encode(_env()))
    assert err.value.reason == "unsigned"


@pytest.mark.parametrize("age", [31.0, -31.0, 3600.0])
def test_stale_or_future_message_is_rejected(age: float) -> None:
    codec = Codec(SECRET, window=30.0)
    data = codec.encode(_env(ts=time.time() - age))
    with pytest.raises(ProtocolError) as err:
        codec.decode(data)
    assert err.value.reason == "stale"


def test_message_inside_window_is_accepted() -> None:
    codec = Codec(SECRET, window=30.0)
    assert codec.decode(codec.encode(_env(ts=time.time() - 29.0))).sender == "cli-1"


def test_oversized_message_is_rejected_before_parsing() -> None:
    codec = Codec(max_bytes=200)
    with pytest.raises(ProtocolError) as err:
        codec.decode(frame(b"{" + b" " * 300 + b"}"))
    assert err.value.reason == "oversized"
    with pytest.raises(ProtocolError):
        codec.encode(_env(payload={"blob": "x" * 500}))
    # a per-channel cap lowers the limit (never raises it)
    small = Codec(SECRET).encode(_env(payload={"blob": "x" * 500}))
    assert Codec(SECRET).decode(small, max_bytes=10_000).payload["blob"] == "x" * 500
    for cap in (500, 10_000):
        with pytest.raises(ProtocolError) as err:
            Codec(SECRET, max_bytes=200).decode(small, max_bytes=cap)
        assert err.value.reason == "oversized"
    with pytest.raises(ProtocolError) as err:
        Codec(SECRET).encode(_env(payload={"blob": "x" * 500}), max_bytes=300)
    assert err.value.reason == "oversized"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "malformed"),
        (b"lf2..not json", "malformed"),
        (b"lf2..[1,2]", "malformed"),
        (b"lf2.", "malformed"),
        (b"lf2.xyz.{}", "malformed"),
        (b"lf2." + b"A" * 64 + b".{}", "malformed"),
        (b'{"v": 1, "type": "command", "id": "x", "sender": "a", "ts": 1}', "wrong_version"),
        (b'  {"v": 2, "type": "command"}', "wrong_version"),
        (b'lf1..{"v": 1, "type": "command"}', "wrong_version"),
        (b'lf2..{"v": 1, "type": "command"}', "wrong_version"),
        (b'lf2..{"v": 3, "type": "command"}', "wrong_version"),
        (b'lf2..{"v": 2, "type": "launch_missiles", "id": "x", "sender": "a", "ts": 1}', "unknown_type"),
        (b'lf2..{"v": 2, "type": "command", "sender": "a", "ts": 1}', "malformed"),
        (b'lf2..{"v": 2, "type": "command", "id": "x", "sender": "a", "ts": "now"}', "malformed"),
        (b'lf2..{"v": 2, "type": "command", "id": "x", "sender": "a", "ts": 1, "payload": []}', "malformed"),
        (b'lf2..{"v": 2, "type": "command", "id": "x", "sender": 5, "ts": 1}', "malformed"),
        (b'lf2..{"v": 2, "type": "command", "id": "x", "sender": "a", "ts": NaN}', "malformed"),
        (b'lf2..{"v": 2, "type": "command", "id": "x", "sender": "a", "ts": 1, "channel": 5}', "malformed"),
        (b"\xff\xfe", "malformed"),
    ],
)
def test_bad_messages_have_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as err:
        Codec().decode(raw)
    assert err.value.reason == reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _framings(body: bytes) -> list[tuple[Codec, bytes]]:
    """``body`` as an unsigned frame, a wrongly signed one, and one signed with the secret (which the signed
    codec parses: the fuzz reaches the JSON and field checks there too)."""
    return [
        (Codec(), frame(body)),
        (Codec(SECRET, window=1e12), frame(body)),
        (Codec(SECRET, window=1e12), frame(body, "0" * 64)),
        (Codec(SECRET, window=1e12), frame(body, sign(body, SECRET.encode()))),
    ]


def _survives(codec: Codec, raw: bytes) -> None:
    try:
        env = codec.decode(raw, channel=None)
    except ProtocolError as exc:
        assert exc.reason in DROP_REASONS
    else:
        assert isinstance(env, Envelope) and isinstance(env.payload, dict)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decoder_survives_random_input(raw: bytes) -> None:
    for codec in (Codec(), Codec(SECRET)):
        _survives(codec, raw)
    for codec, framed in _framings(raw):
        _survives(codec, framed)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_decoder_survives_mutated_valid_messages(data: st.DataObject) -> None:
    sig, raw_body = split_frame(Codec(SECRET).encode(_env(id="fixed-id", ts=1_700_000_000.0, channel="c")))
    body = json.loads(raw_body)
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(json_values)
    raw = bytearray(json.dumps(body).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
    for codec, framed in [*_framings(bytes(raw)), (Codec(SECRET, window=1e12), frame(bytes(raw), sig.decode()))]:
        _survives(codec, framed)
    # a flipped byte anywhere in a whole signed frame (header and signature included)
    whole = bytearray(Codec(SECRET).encode(_env(id="fixed-id", ts=1_700_000_000.0)))
    whole[data.draw(st.integers(0, len(whole) - 1))] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ProtocolError):
        Codec(SECRET, window=1e12).decode(bytes(whole))


def test_replay_guard_remembers_ids_for_the_window() -> None:
    from letsfrag.contract.envelope import ReplayGuard

    guard = ReplayGuard(window=30.0)
    env = _env(id="abc")
    guard.check(env, now=100.0)
    with pytest.raises(ProtocolError) as err:
        guard.check(env, now=120.0)
    assert err.value.reason == "replayed"
    guard.check(_env(id="other"), now=200.0)  # prunes ids older than two windows
    guard.check(env, now=200.0)  # by now the codec's window would call it stale anyway


def test_refusing_big_forgeries_allocates_nothing_like_their_size() -> None:
    """Oversized frames are refused by length and forged ones by their HMAC: neither is parsed, and reading the
    sender for the drop warning looks at the first bytes only (a parse would allocate several times the size)."""
    import tracemalloc

    body = json.dumps({"v": 2, "sender": "flood", "payload": {"args": ["x" * 60] * (1 << 13)}}).encode()
    cases = [
        (Codec(SECRET), b"x" * (20 << 20), "oversized"),
        (Codec(SECRET), body * 40, "oversized"),  # plain JSON (version 1) of 20 MiB
        (Codec(SECRET), body, "wrong_version"),  # plain JSON (version 1) under the cap
        (Codec(SECRET), frame(body), "unsigned"),  # half a MiB, under the cap
        (Codec(SECRET), frame(body, "0" * 64), "bad_signature"),
    ]
    for codec, raw, reason in cases:
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError) as err:
                codec.decode(raw)
            hint = sender_hint(raw)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert err.value.reason == reason
        assert peak < 64 * 1024, f"{reason}: {peak} bytes allocated for a {len(raw)}-byte message"
        assert hint in (None, "flood")
