"""The Redis transport against a real redis-server: request/reply, partial fan-out, drops, restarts."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from support.waiting import wait_until

from letsfrag.bus import NO_REPLY, Bus
from letsfrag.contract.envelope import Codec, Envelope, MessageType, frame, sign, split_frame
from letsfrag.errors import ProtocolError, RemoteError, RequestTimeout
from letsfrag.redis_server import RedisServer

SECRET = "bus-test-secret"


@pytest.fixture
async def make_bus(redis_url: str) -> AsyncIterator[Any]:
    buses: list[Bus] = []

    async def factory(node_id: str, secret: str | None = SECRET, **kw: Any) -> Bus:
        bus = Bus(redis_url, node_id=node_id, namespace="t", secret=secret, **kw)
        await bus.start()
        buses.append(bus)
        return bus

    yield factory
    for bus in buses:
        await bus.close()


async def test_request_reply(make_bus: Any) -> None:
    server, client = await make_bus("server"), await make_bus("client")

    async def handler(env: Envelope) -> Any:
        if env.payload.get("fail"):
            raise ValueError("asked to fail")
        return {"echo": env.payload["n"], "from": env.sender}

    await server.subscribe("t:svc", handler)
    assert await client.request("t:svc", MessageType.RPC, {"n": 7}, timeout=2) == {"echo": 7, "from": "client"}
    with pytest.raises(RemoteError) as err:
        await client.request("t:svc", MessageType.RPC, {"fail": True}, timeout=2)
    assert err.value.error_type == "ValueError" and "asked to fail" in err.value.message


async def test_a_handler_error_quoting_a_secret_is_masked_in_the_reply(make_bus: Any) -> None:
    from letsfrag.logs import register_secret

    secret = "bus-test-secret-4f1c2b"
    register_secret(secret)
    server, client = await make_bus("server"), await make_bus("client")

    async def handler(env: Envelope) -> Any:
        raise RuntimeError(f"could not log in with {secret} at redis://u:pw-in-url@127.0.0.1:1/0")

    await server.subscribe("t:svc", handler)
    with pytest.raises(RemoteError) as err:
        await client.request("t:svc", MessageType.RPC, {}, timeout=2)
    assert secret not in err.value.message and "pw-in-url" not in err.value.message
    assert "***" in err.value.message


async def test_request_to_nobody_fails_fast(make_bus: Any) -> None:
    client = await make_bus("client")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestTimeout, match="nobody is listening"):
        await client.request("t:void", MessageType.RPC, {}, timeout=5)
    assert loop.time() - started < 1.0


async def test_broadcast_partial_results_across_three_subscribers(make_bus: Any) -> None:
    client = await make_bus("client")
    release = asyncio.Event()

    def make_handler(name: str) -> Any:
        async def handler(env: Envelope) -> Any:
            if name == "c-fail":
                raise RuntimeError("boom")
            if name == "c-slow":
                await release.wait()
            return name.upper()

        return handler

    for name in ("c-ok", "c-fail", "c-slow"):
        bus = await make_bus(name)
        await bus.subscribe("t:broadcast", make_handler(name))
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await client.broadcast(
        "t:broadcast", MessageType.RPC, {}, expected=["c-ok", "c-fail", "c-slow"], timeout=0.5
    )
    elapsed = loop.time() - started
    release.set()
    assert results["c-ok"].status == "ok" and results["c-ok"].value == "C-OK"
    assert results["c-fail"].status == "error" and results["c-fail"].error_type == "RuntimeError"
    assert results["c-slow"].status == "timeout"
    assert 0.45 <= elapsed < 2.0


async def test_gather_to_distinct_channels(make_bus: Any) -> None:
    client = await make_bus("client")
    for name in ("a", "b"):
        bus = await make_bus(name)

        async def handler(env: Envelope, name: str = name) -> Any:
            return name

        await bus.subscribe(f"t:inbox:{name}", handler)
    results = await client.gather(
        {"a": "t:inbox:a", "b": "t:inbox:b", "c": "t:inbox:c"}, MessageType.PING, timeout=0.5
    )
    assert {k: r.status for k, r in results.items()} == {"a": "ok", "b": "ok", "c": "timeout"}
    assert results["a"].value == "a"


async def test_no_reply_sentinel(make_bus: Any) -> None:
    server, client = await make_bus("server"), await make_bus("client")

    async def handler(env: Envelope) -> Any:
        return NO_REPLY

    await server.subscribe("t:quiet", handler)
    with pytest.raises(RequestTimeout):
        await client.request("t:quiet", MessageType.RPC, {}, timeout=0.3)


async def test_unsigned_and_forged_messages_are_dropped_and_counted(make_bus: Any, redis_url: str) -> None:
    server = await make_bus("server")
    seen: list[Envelope] = []

    async def handler(env: Envelope) -> Any:
        seen.append(env)
        return None

    await server.subscribe("t:inbox", handler)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.publish("t:inbox", Codec().encode(Envelope(MessageType.COMMAND, "intruder", channel="t:inbox")))
        await raw.publish("t:inbox", Codec("wrong").encode(Envelope(MessageType.COMMAND, "intruder",
                                                                    channel="t:inbox")))
        await raw.publish("t:inbox", Codec(SECRET).encode(Envelope(MessageType.COMMAND, "friend",
                                                                   channel="t:inbox")))
    finally:
        await raw.aclose()
    await wait_until(lambda: len(seen) == 1, message="the signed message")
    await wait_until(lambda: server.dropped["unsigned"] == 1 and server.dropped["bad_signature"] == 1)
    assert seen[0].sender == "friend"


async def test_receive_loop_survives_5000_malformed_messages(make_bus: Any, redis_url: str) -> None:
    server, client = await make_bus("server"), await make_bus("client")

    async def handler(env: Envelope) -> Any:
        return "alive"

    await server.subscribe("t:inbox", handler)
    rng = random.Random(1234)
    sig, body = split_frame(Codec(SECRET).encode(Envelope(MessageType.RPC, "fuzz", channel="t:inbox")))
    valid = json.loads(body)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        pipe = raw.pipeline(transaction=False)
        for i in range(5000):
            kind = i % 4
            if kind == 0:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
            elif kind == 1:  # a field of another type, signed with the secret (reaches the field checks)
                mutated = dict(valid)
                mutated[rng.choice(list(mutated))] = rng.choice([None, 1, "x", [], {}, 1e308, -1, True])
                encoded = json.dumps(mutated).encode()
                data = frame(encoded, sign(encoded, SECRET.encode()) if i % 8 == 1 else sig.decode())
            elif kind == 2:
                data = frame(json.dumps({**valid, "type": "reply", "corr": "unknown"}).encode(), sig.decode())
            else:
                encoded = bytearray(frame(json.dumps(valid).encode(), sig.decode()))
                encoded[rng.randrange(len(encoded))] = rng.getrandbits(8)
                data = bytes(encoded)
            pipe.publish("t:inbox", data)
        await pipe.execute()
    finally:
        await raw.aclose()
    await wait_until(lambda: server.received + sum(server.dropped.values()) >= 5000, timeout=30,
                     message="all 5000 processed")
    assert await client.request("t:inbox", MessageType.RPC, {}, timeout=2) == "alive"


async def test_reconnects_after_a_real_redis_restart(redis_server: RedisServer, make_bus: Any) -> None:
    server, client = await make_bus("server", reconnect_max=0.5), await make_bus("client", reconnect_max=0.5)
    states: list[bool] = []
    server.on_state(states.append)

    async def handler(env: Envelope) -> Any:
        return "pong"

    await server.subscribe("t:svc", handler)
    assert await client.request("t:svc", MessageType.PING, timeout=2) == "pong"
    redis_server.stop()
    await wait_until(lambda: not server.connected and not client.connected, message="disconnect observed")
    with pytest.raises(RequestTimeout):
        await client.request("t:svc", MessageType.PING, timeout=0.5)
    redis_server.start()
    await wait_until(lambda: server.connected and client.connected, timeout=15, message="reconnect")
    assert await client.request("t:svc", MessageType.PING, timeout=2) == "pong"
    assert states[:2] == [False, True]


async def test_drop_warnings_are_bounded_whatever_the_sender_names(
    make_bus: Any, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = await make_bus("server")

    async def handler(env: Envelope) -> Any:
        return None

    await server.subscribe("t:inbox", handler)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        pipe = raw.pipeline(transaction=False)
        for i in range(300):
            pipe.publish("t:inbox", Codec().encode(Envelope(MessageType.COMMAND, f"forger-{i}", channel="t:inbox")))
        await pipe.execute()
    finally:
        await raw.aclose()
    await wait_until(lambda: server.dropped["unsigned"] == 300, message="all 300 forgeries dropped")
    warnings = [r for r in caplog.records if r.name == "letsfrag.bus" and "dropped a message" in r.getMessage()]
    assert 1 <= len(warnings) <= 20
    assert len(server._last_warning) <= 20


async def test_a_replayed_signed_message_inside_the_window_is_dropped(make_bus: Any, redis_url: str) -> None:
    server = await make_bus("server")
    seen: list[Envelope] = []

    async def handler(env: Envelope) -> Any:
        seen.append(env)
        return None

    await server.subscribe("t:inbox", handler)
    captured = Codec(SECRET).encode(Envelope(MessageType.COMMAND, "operator", {"action": "restart"},
                                             channel="t:inbox"))
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.publish("t:inbox", captured)
        await wait_until(lambda: len(seen) == 1, message="the genuine message")
        await raw.publish("t:inbox", captured)
        await raw.publish("t:inbox", Codec(SECRET).encode(Envelope(MessageType.COMMAND, "operator",
                                                                   channel="t:inbox")))
    finally:
        await raw.aclose()
    await wait_until(lambda: len(seen) == 2 and server.dropped["replayed"] == 1, message="replay dropped")


async def test_a_signed_message_republished_on_another_channel_or_for_another_node_is_dropped(
    make_bus: Any, redis_url: str
) -> None:
    a, b, client = await make_bus("node-a"), await make_bus("node-b"), await make_bus("client")
    seen: list[tuple[str, Envelope]] = []

    def recorder(name: str) -> Any:
        async def handler(env: Envelope) -> Any:
            seen.append((name, env))
            return name

        return handler

    await a.subscribe("t:inbox:a", recorder("a"))
    await b.subscribe("t:inbox:b", recorder("b"))
    raw = aioredis.Redis.from_url(redis_url)
    tap = raw.pubsub(ignore_subscribe_messages=True)
    try:
        await tap.subscribe("t:inbox:a")
        assert await client.request("t:inbox:a", MessageType.RPC, {"n": 1}, target="node-a", timeout=2) == "a"
        captured = (await wait_until(lambda: tap.get_message(timeout=0.1), message="captured"))["data"]
        await raw.publish("t:inbox:b", captured)
        # signed for b's channel but naming a: b refuses it as not addressed to it
        with pytest.raises(RequestTimeout):
            await client.request("t:inbox:b", MessageType.RPC, {"n": 2}, target="node-a", timeout=0.5)
        assert await client.request("t:inbox:b", MessageType.RPC, {"n": 3}, target="node-b", timeout=2) == "b"
    finally:
        await tap.aclose()
        await raw.aclose()
    assert [(name, env.payload["n"]) for name, env in seen] == [("a", 1), ("b", 3)]
    assert b.dropped["misrouted"] == 1 and b.dropped["wrong_receiver"] == 1
    b.aliases.add("node-a")  # a name it answers to
    assert await client.request("t:inbox:b", MessageType.RPC, {"n": 4}, target="node-a", timeout=2) == "b"


async def test_a_replayed_command_is_refused_by_a_restarted_receiver(make_bus: Any, redis_url: str) -> None:
    seen: list[Envelope] = []

    async def handler(env: Envelope) -> Any:
        seen.append(env)
        return "done"

    server = await make_bus("server")
    await server.subscribe("t:inbox", handler)
    client = await make_bus("client")
    raw = aioredis.Redis.from_url(redis_url)
    tap = raw.pubsub(ignore_subscribe_messages=True)
    try:
        await tap.subscribe("t:inbox")
        assert await client.request("t:inbox", MessageType.COMMAND, {"action": "x"}, target="server") == "done"
        assert await client.request("t:inbox", MessageType.PING, target="server") == "done"
        command = (await wait_until(lambda: tap.get_message(timeout=0.1), message="command"))["data"]
        ping = (await wait_until(lambda: tap.get_message(timeout=0.1), message="ping"))["data"]
        await server.close()
        restarted = await make_bus("server")  # a new process: nothing in memory
        await restarted.subscribe("t:inbox", handler)
        await raw.publish("t:inbox", command)
        await wait_until(lambda: restarted.dropped["replayed"] == 1, message="replayed command refused")
        # a ping only reads: it is not recorded in Redis, so a restarted receiver answers its copy
        await raw.publish("t:inbox", ping)
        await wait_until(lambda: len(seen) == 3, message="the ping copy answered")
        assert [env.type for env in seen] == [MessageType.COMMAND, MessageType.PING, MessageType.PING]
        key = restarted.keys.replay("server", seen[0].id)
        assert 0 < await raw.pttl(key) <= 2 * 30_000
    finally:
        await tap.aclose()
        await raw.aclose()


async def test_broadcast_channel_has_a_smaller_size_cap(make_bus: Any, redis_url: str) -> None:
    server, client = await make_bus("server"), await make_bus("client")
    seen: list[int] = []

    async def handler(env: Envelope) -> Any:
        seen.append(len(env.payload["blob"]))
        return None

    await server.subscribe("t:broadcast", handler)
    await server.subscribe("t:inbox", handler)
    blob = "x" * (server.broadcast_max_bytes + 1)
    with pytest.raises(ProtocolError) as err:  # the sender refuses at once
        await client.publish("t:broadcast", MessageType.DOORBELL, {"blob": blob})
    assert err.value.reason == "oversized"
    data = Codec(SECRET).encode(Envelope(MessageType.DOORBELL, "big", {"blob": blob}, channel="t:broadcast"))
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.publish("t:broadcast", data)
    finally:
        await raw.aclose()
    await client.publish("t:inbox", MessageType.DOORBELL, {"blob": blob})  # point to point: the 1 MiB cap
    await wait_until(lambda: seen == [len(blob)] and server.dropped["oversized"] == 1, message="cap applied")
