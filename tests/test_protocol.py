"""The envelope codec: signing, staleness, size caps, and a fuzzed decoder that never raises anything else."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from letsfrag.errors import ProtocolError
from letsfrag.protocol import Codec, Envelope, MessageType

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
    body = json.loads(codec.encode(_env()))
    body["payload"]["action"] = "drain"
    with pytest.raises(ProtocolError) as err:
        codec.decode(json.dumps(body))
    assert err.value.reason == "bad_signature"


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
        codec.decode(b"{" + b" " * 300 + b"}")
    assert err.value.reason == "oversized"
    with pytest.raises(ProtocolError):
        codec.encode(_env(payload={"blob": "x" * 500}))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "malformed"),
        (b"[1,2]", "malformed"),
        (b'{"v": 2, "type": "command"}', "wrong_version"),
        (b'{"v": 1, "type": "launch_missiles", "id": "x", "sender": "a", "ts": 1}', "unknown_type"),
        (b'{"v": 1, "type": "command", "sender": "a", "ts": 1}', "malformed"),
        (b'{"v": 1, "type": "command", "id": "x", "sender": "a", "ts": "now"}', "malformed"),
        (b'{"v": 1, "type": "command", "id": "x", "sender": "a", "ts": 1, "payload": []}', "malformed"),
        (b'{"v": 1, "type": "command", "id": "x", "sender": 5, "ts": 1}', "malformed"),
        (b'{"v": 1, "type": "command", "id": "x", "sender": "a", "ts": NaN}', "malformed"),
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


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decoder_survives_random_input(raw: bytes) -> None:
    for codec in (Codec(), Codec(SECRET)):
        try:
            codec.decode(raw)
        except ProtocolError:
            pass


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_decoder_survives_mutated_valid_messages(data: st.DataObject) -> None:
    codec = Codec(SECRET, window=1e12)
    body = json.loads(codec.encode(_env(id="fixed-id", ts=1_700_000_000.0)))
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = data.draw(json_values)
    raw = bytearray(json.dumps(body).encode())
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
    try:
        codec.decode(bytes(raw))
    except ProtocolError:
        pass


def test_replay_guard_remembers_ids_for_the_window() -> None:
    from letsfrag.protocol import ReplayGuard

    guard = ReplayGuard(window=30.0)
    env = _env(id="abc")
    guard.check(env, now=100.0)
    with pytest.raises(ProtocolError) as err:
        guard.check(env, now=120.0)
    assert err.value.reason == "replayed"
    guard.check(_env(id="other"), now=200.0)  # prunes ids older than two windows
    guard.check(env, now=200.0)  # by now the codec's window would call it stale anyway
