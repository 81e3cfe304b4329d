"""Bad input and intrusion against a running signed deployment: forged, replayed and malformed bus messages.

Every forged message carries its own sender name, so each rejection shows up as its own drop warning
("dropped a message from <sender>") in the broker, host or cluster log: waiting for that line is the
synchronisation — a message that was accepted instead would never produce it. Signed ``ping`` requests sent
after a flood prove every subscriber has consumed what came before (pub/sub keeps order per subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from support.exactly_once import (
    SecuredRehearsal,
    all_clusters_ready,
    cluster_states,
    deployment_factory,
    forged,
    letsfrag_cli,
    publish_raw,
)
from support.waiting import wait_until_sync

from letsfrag.bus import Bus
from letsfrag.contract.envelope import Codec, Envelope, MessageType, frame, split_frame
from letsfrag.contract.keys import Keys

# one deployment (a module-scoped fixture) serves these tests: with `--dist loadgroup` they run on one xdist
# worker, in this order, and the deployment starts once
pytestmark = [pytest.mark.chaos, pytest.mark.xdist_group("test_intrusion")]

WINDOW = 3.0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRehearsal]:
    """One signed deployment (2 hosts, 4 clusters, 3 s signature window) shared by the intrusion tests."""
    factory = deployment_factory(tmp_path_factory.mktemp("intrusion"))
    make = next(factory)
    running = make(hosts=2, shards=8, shards_per_cluster=2, signature_window=WINDOW).start()
    wait_until_sync(running.all_ready, timeout=60, interval=0.25, message="8 shards READY")
    yield running
    with contextlib.suppress(StopIteration):
        next(factory)


@dataclass
class Baseline:
    assignment: dict[int, tuple[str, int]]
    pids: dict[int, int]
    processes: list[int]


def baseline(deployment: SecuredRehearsal) -> Baseline:
    client = deployment.redis_client()
    try:
        wait_until_sync(
            lambda: all_clusters_ready(deployment, client), timeout=30, message="all clusters READY"
        )
        pids = {cid: pid for cid, (_, _, pid) in cluster_states(deployment, client).items()}
        return Baseline(deployment.assignment(client), pids, sorted(p.pid for p in deployment.processes()))
    finally:
        client.close()


def assert_unchanged(deployment: SecuredRehearsal, before: Baseline) -> None:
    after = baseline(deployment)
    assert after.assignment == before.assignment, "the assignment changed"
    assert after.pids == before.pids, "a cluster restarted"
    assert after.processes == before.processes, "processes changed"
    assert deployment.all_ready(), "every shard READY with one session"
    client = deployment.redis_client()
    try:
        assert client.smembers(Keys(deployment.settings.namespace).hosts) == {"h0", "h1"}
    finally:
        client.close()


def logs(deployment: SecuredRehearsal) -> str:
    """Every log of the deployment (broker, hosts, clusters)."""
    return "\n".join(
        p.read_text(errors="replace")
        for p in sorted(Path(deployment.workdir).rglob("*.log"))
        if p.name != "redis.log"
    )


def wait_dropped(deployment: SecuredRehearsal, senders: list[str], reason: str | None = None) -> None:
    def all_logged() -> list[str]:
        text = logs(deployment)
        missing = [s for s in senders if f"dropped a message from {s!r}:" not in text]
        if reason is not None:
            lines = [line for line in text.splitlines() if "dropped a message from" in line]
            missing += [s for s in senders if not any(s in line and reason in line for line in lines)]
        return missing

    wait_until_sync(
        lambda: not all_logged(),
        timeout=15,
        interval=0.1,
        message=f"drop warnings for {senders} ({all_logged()} missing)",
    )


async def _probe(deployment: SecuredRehearsal) -> dict[str, Any]:
    """Signed pings to every cluster and host inbox and a signed no-op command to the broker."""
    keys = Keys(deployment.settings.namespace)
    bus = Bus(
        deployment.redis_url,
        node_id="tool:probe",
        namespace=deployment.settings.namespace,
        secret=deployment.secret,
        request_timeout=10,
    )
    await bus.start()
    try:
        targets = {f"cluster:{cid}": keys.cluster_inbox(cid) for cid in range(deployment.settings.clusters)}
        targets.update({f"host:{h}": keys.host_inbox(h) for h in deployment.hosts})
        results = await bus.gather(targets, MessageType.PING)
        broker = await bus.request(
            keys.broker_inbox, MessageType.COMMAND, {"action": "probe"}, target="broker"
        )
    finally:
        await bus.close()
    answers: dict[str, Any] = {name: result.status for name, result in results.items()}
    answers["broker"] = broker
    return answers


def probe(deployment: SecuredRehearsal) -> None:
    answers = asyncio.run(_probe(deployment))
    assert all(v == "ok" for k, v in answers.items() if k != "broker"), answers
    assert answers["broker"]["ok"] is False and "unknown action" in answers["broker"]["message"], answers


def test_forged_unsigned_messages_are_rejected(deployment: SecuredRehearsal) -> None:
    before = baseline(deployment)
    keys = Keys(deployment.settings.namespace)
    h0_cluster = min(cid for cid, (host, _) in before.assignment.items() if host == "h0")
    listener = redis.Redis.from_url(deployment.redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(keys.reply("tool:forger-eval"), keys.reply("tool:forger-restart"))
    forgeries = [
        # a fake host registers and claims clusters
        (keys.broker_inbox, forged("host_hello", "host:evil", {"host": "evil", "capacity": 100})),
        # a real host "leaves" (would move its clusters at once)
        (keys.broker_inbox, forged("host_leave", "host:forger-leave", {"host": "h0"})),
        # operator commands: drain h0 (moves everything to h1), rebalance
        (
            keys.broker_inbox,
            forged(
                "command",
                "tool:forger-drain",
                {"action": "drain", "host": "h0"},
                reply_to="tool:forger-drain",
            ),
        ),
        (keys.broker_inbox, forged("command", "tool:forger-rebalance", {"action": "rebalance"})),
        # a grant doorbell naming a fake host, restarts to the host inboxes
        (
            keys.host_inbox("h0"),
            forged("assign", "broker:forger", {"host": "evil", "cluster": h0_cluster, "epoch": 10**6}),
        ),
        (
            keys.host_inbox("h0"),
            forged(
                "command",
                "tool:forger-restart",
                {"action": "restart", "cluster": h0_cluster},
                reply_to="tool:forger-restart",
            ),
        ),
        (keys.host_inbox("h1"), forged("command", "tool:forger-rolling", {"action": "rolling_restart"})),
        (keys.host_inbox("h1"), forged("command", "tool:forger-all", {"action": "restart_all"})),
        # code evaluation on every cluster, and a stop to one cluster
        (
            keys.broadcast,
            forged(
                "eval", "tool:forger-eval", {"code": "__import__('os')._exit(3)"}, reply_to="tool:forger-eval"
            ),
        ),
        (keys.cluster_inbox(h0_cluster), forged("stop", "host:forger-stop", {"reason": "forged"})),
        (
            keys.cluster_inbox(h0_cluster),
            forged("rpc", "tool:forger-rpc", {"name": "stats"}, reply_to="tool:forger-rpc"),
        ),
    ]
    for channel, message in forgeries:
        publish_raw(deployment, channel, message)
    # the old (version 1) format is refused too, by its first byte
    publish_raw(deployment, keys.host_inbox("h0"), forged("command", "tool:forger-v1", {"action": "restart_all"})[5:])
    wait_dropped(deployment, [json.loads(m[5:])["sender"] for _, m in forgeries], reason="unsigned")
    wait_dropped(deployment, ["tool:forger-v1"], reason="wrong_version")
    probe(deployment)  # every subscriber has consumed the forgeries by now
    assert_unchanged(deployment, before)
    replies = [listener.get_message(timeout=0.2) for _ in range(3)]
    listener.close()
    assert replies == [None, None, None], f"a forged request was answered: {replies}"
    assert (
        "broker:forger"
        not in redis.Redis.from_url(deployment.redis_url, decode_responses=True)
        .hgetall(keys.assignment)
        .values()
    )


def test_replayed_signed_restart_outside_the_window_is_rejected(deployment: SecuredRehearsal) -> None:
    before = baseline(deployment)
    keys = Keys(deployment.settings.namespace)
    cid = max(before.assignment)
    # `restart --cluster` is a broker command (a planned handover): capture it on the broker's inbox
    tap = redis.Redis.from_url(deployment.redis_url).pubsub(ignore_subscribe_messages=True)
    tap.subscribe(keys.broker_inbox)
    commands: list[dict[str, Any]] = []

    def captured_command() -> dict[str, Any] | None:
        while (message := tap.get_message(timeout=0.1)) is not None:
            if json.loads(split_frame(message["data"])[1]).get("type") == "command":
                commands.append(message)
        return commands[0] if commands else None

    try:
        done = letsfrag_cli(
            "restart",
            "--cluster",
            str(cid),
            "--redis",
            deployment.redis_url,
            "--namespace",
            deployment.settings.namespace,
            "--timeout",
            "30s",
            env={"LETSFRAG_SECRET": deployment.secret},
        )
        assert done.returncode == 0, done.stdout + done.stderr
        captured = wait_until_sync(captured_command, timeout=5, message="captured command")
    finally:
        tap.close()
    raw: bytes = captured["data"]
    sig, body = split_frame(raw)
    original = json.loads(body)
    assert original["type"] == "command" and original["payload"]["cluster"] == cid and sig
    restarted = baseline(deployment)
    assert restarted.pids[cid] != before.pids[cid], "the genuine restart happened"
    # replay the captured bytes once they are older than the window
    wait_until_sync(
        lambda: time.time() > original["ts"] + WINDOW + 0.5, timeout=WINDOW + 5, message="window passed"
    )
    publish_raw(deployment, keys.broker_inbox, raw.decode())
    # and a correctly signed command with an old timestamp (a stolen-but-old message)
    old = Codec(deployment.secret).encode(
        Envelope(
            MessageType.COMMAND,
            sender="tool:replayer-old",
            payload={"action": "restart", "cluster": cid},
            reply_to="tool:replayer-old",
            target="broker",
            channel=keys.broker_inbox,
            ts=time.time() - 3600,
        )
    )
    publish_raw(deployment, keys.broker_inbox, old.decode())
    wait_dropped(deployment, [original["sender"], "tool:replayer-old"], reason="stale")
    probe(deployment)
    assert_unchanged(deployment, restarted)


def _mutations(rng: random.Random, signed: bytes, count: int) -> Iterator[bytes]:
    """``count`` malformed or mutated messages: garbage, wrong shapes, wrong types, broken signatures."""
    shapes: list[Any] = [None, 0, -1, 1.5, 1e308, "", "x" * 300, [], {}, [1, 2], True, {"a": {"b": []}}]
    types = [t.value for t in MessageType] + ["", "STOP", "x" * 100, None, 7]
    sig_bytes, body_bytes = split_frame(signed)
    sig = sig_bytes.decode()
    base = json.loads(body_bytes)

    def framed(body: Any, signature: str = sig) -> bytes:
        return frame(json.dumps(body).encode(), signature)

    for i in range(count):
        kind = i % 12
        if kind == 0:
            yield rng.randbytes(rng.randint(0, 200))
        elif kind == 1:  # a non-object, bare (version-1 style) or in an unsigned frame
            shape = json.dumps(rng.choice(shapes)).encode()
            yield shape if i % 24 == 1 else frame(shape)
        elif kind == 2:
            yield signed[: rng.randint(0, len(signed) - 1)]
        elif kind == 3:  # one flipped byte somewhere in a signed frame (header, signature or body)
            data = bytearray(signed)
            pos = rng.randrange(len(data))
            data[pos] = (data[pos] + rng.randint(1, 255)) % 256
            yield bytes(data)
        elif kind == 4:  # one field replaced by a value of another type
            body = dict(base)
            body[rng.choice([*base, "extra"])] = rng.choice(shapes)
            yield framed(body)
        elif kind == 5:  # a field removed
            body = dict(base)
            body.pop(rng.choice(list(base)), None)
            yield framed(body)
        elif kind == 6:
            yield framed(dict(base, type=rng.choice(types)), rng.choice(["", "00" * 32, sig]))
        elif kind == 7:
            body = dict(base, v=rng.choice([0, 1, "2", None, 2.0001]))
            yield framed(body) if i % 24 == 7 else json.dumps(body).encode()
        elif kind == 8:
            yield framed(dict(base, ts=rng.choice(["now", None, [], 1e308, -1e308, 0, 2**63])))
        elif kind == 9:  # unsigned but otherwise well formed, every type
            yield forged(
                str(rng.choice(types[:12])),
                f"tool:fuzz-{i}",
                {"action": "restart", "cluster": 0, "code": "1", "name": "stats"},
            ).encode()
        elif kind == 10:  # nesting bombs and odd encodings
            yield rng.choice(
                [
                    b"[" * 50_000,
                    b"lf2.." + b'{"a":' * 20_000,
                    b"\xff\xfe{}",
                    "\u2028{}".encode(),
                    b'lf2..{"v":2,"type":"ping","id":"\x00","sender":"\x00","ts":1}',
                    b"NaN",
                    b"lf2..Infinity",
                    b"lf9.." + body_bytes,
                ]
            )
        else:  # the right signature over a different body
            yield framed(dict(base, payload={"action": "restart_all"}))
    yield b"x" * (1024 * 1024 + 10)  # one message over max_message_bytes


def _signed_garbage(rng: random.Random, codec: Codec, count: int, channels: list[str]) -> Iterator[tuple[str, bytes]]:
    """Correctly signed envelopes (an insider's mistakes) whose payloads have the wrong shapes, each signed for
    the channel it is published on (so it reaches the handlers).

    Nothing here names a real target: no ``stop``, no valid restart/drain; a host is never a real host id."""
    junk: list[Any] = [None, -1, 999, 1.5, 10**30, "", "ghost", "x" * 500, [], [1], {}, {"a": 1}, True]
    types = [
        MessageType.RPC,
        MessageType.FETCH,
        MessageType.EVAL,
        MessageType.PING,
        MessageType.COMMAND,
        MessageType.ASSIGN,
        MessageType.HOST_HELLO,
        MessageType.HOST_LEAVE,
        MessageType.CLUSTER_STOPPED,
        MessageType.REPLY,
        MessageType.DOORBELL,
    ]
    actions = [None, 5, "", "restart", "drain", "undrain", "nope", ["restart"]]
    for i in range(count):
        kind = types[i % len(types)]
        payload: dict[str, Any] = {
            name: rng.choice(junk)
            for name in rng.sample(
                [
                    "cluster",
                    "host",
                    "name",
                    "path",
                    "code",
                    "args",
                    "kwargs",
                    "timeout",
                    "wait",
                    "length",
                    "epoch",
                    "incarnation",
                    "ok",
                    "value",
                    "error",
                ],
                rng.randint(0, 5),
            )
        }
        if kind is MessageType.COMMAND:
            payload["action"] = rng.choice(actions)
            if payload["action"] == "restart" and not (
                isinstance(payload.get("cluster"), int) and payload["cluster"] >= 99
            ):
                payload["cluster"] = rng.choice(["0", None, 1.0, 999, -1])
        if kind is MessageType.RPC:
            payload["name"] = rng.choice(["stats", "nope", None, 5])
        channel = channels[i % len(channels)]
        yield channel, codec.encode(
            Envelope(
                kind,
                sender=f"tool:fuzz-signed-{i % 7}",
                payload=payload,
                reply_to=rng.choice([None, "tool:fuzz-signed"]),
                corr=rng.choice([None, "abc"]),
                channel=channel,
            )
        )


def test_five_thousand_malformed_messages_change_nothing(deployment: SecuredRehearsal) -> None:
    before = baseline(deployment)
    keys = Keys(deployment.settings.namespace)
    clusters = range(deployment.settings.clusters)
    channels = [
        keys.broker_inbox,
        keys.broadcast,
        keys.doorbell,
        keys.host_inbox("ghost"),
        *(keys.host_inbox(h) for h in deployment.hosts),
        *(keys.cluster_inbox(c) for c in clusters),
        keys.cluster_inbox(99),
        keys.reply("broker:b0"),
        *(keys.reply(f"host:{h}") for h in deployment.hosts),
        *(keys.reply(f"cluster:{c}") for c in clusters),
    ]
    # a genuine signed envelope to mutate (a harmless ping), valid for the window
    signed = Codec(deployment.secret).encode(
        Envelope(MessageType.PING, sender="tool:fuzz-base", reply_to="tool:x")
    )
    rng = random.Random(20261126)
    sent = _publish_all(deployment, zip(itertools.cycle(channels), _mutations(rng, signed, 5000)))
    assert sent > 5000
    probe(deployment)  # every subscriber consumed the flood and still answers
    assert_unchanged(deployment, before)
    text = logs(deployment)
    assert "Traceback" not in text and "decoder failed unexpectedly" not in text
    # correctly signed messages with payloads of the wrong shape: refused or answered with an error, no crash
    sent = _publish_all(deployment, _signed_garbage(rng, Codec(deployment.secret), 600, channels))
    assert sent == 600
    probe(deployment)
    assert_unchanged(deployment, before)


def _publish_all(deployment: SecuredRehearsal, messages: Iterator[tuple[str, bytes]]) -> int:
    """Publish ``(channel, message)`` pairs (pipelined); return how many."""
    client = redis.Redis.from_url(deployment.redis_url)
    sent = 0
    try:
        pipe = client.pipeline(transaction=False)
        for channel, message in messages:
            pipe.publish(channel, message)
            sent += 1
            if sent % 500 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()
    return sent
