"""Security of the cluster RPC against a real deployment (broker, supervisor, a discord.py cluster process):
``fetch`` cannot read secrets, the cluster's bus keeps its host's ``signature_window`` and ``max_message_bytes``,
and ``eval`` needs the broker's opt-in as well as the host's.

One deployment: 1 host, 1 cluster (shards 0-1), a signing secret; the host config says ``signature_window: 3s``,
``max_message_bytes: 4KiB`` and ``allow_eval: true``; the broker config leaves ``allow_eval`` off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support.waiting import wait_until_sync

from letsfrag.bus import Bus
from letsfrag.contract.envelope import Codec, Envelope, MessageType
from letsfrag.contract.keys import Keys
from letsfrag.errors import LetsfragError, RemoteError
from letsfrag.lab.rehearsal import Rehearsal, RehearsalSettings
from letsfrag.rpc.caller import RpcClient

# one deployment (a module-scoped fixture) serves these tests: with `--dist loadgroup` they run on one xdist
# worker, in this order, and the deployment starts once
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("test_rpc_security")]

HOST_BUS = "signature_window: 3s\nmax_message_bytes: 4KiB\nallow_eval: true\n"
SECRET_PATHS = [
    "http.token",
    "cluster.environment.token",
    "cluster.environment.secret",
    "cluster.environment.redis",
    "cluster.environment",
    "http",
    "ws",
    "cluster.server.client.http.token",
    "cluster.caller.bus.codec",
    "_connection.http.token",
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    settings = RehearsalSettings(hosts=1, shards=2, shards_per_cluster=2, max_concurrency=2, guilds_per_shard=3,
                                 extra_host_yaml=HOST_BUS, namespace="secrpc")
    running = Rehearsal(settings, tmp_path_factory.mktemp("rpc-security"))
    try:
        running.start()
        wait_until_sync(running.all_ready, timeout=60, interval=0.25, message="2 shards READY")
        yield running
    finally:
        leftovers = running.close()
        assert leftovers == [], f"processes needed SIGKILL after the graceful stop: {leftovers}"


def rpc(deployment: Rehearsal, **kwargs: Any) -> RpcClient:
    return RpcClient(deployment.redis_url, namespace=deployment.settings.namespace, secret=deployment.secret,
                     **kwargs)


def test_fetch_of_every_secret_path_is_refused_naming_the_path(deployment: Rehearsal) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with rpc(deployment) as client:
            refused = {path: (await client.fetch_client_values(path))[0] for path in SECRET_PATHS}
            refused["http.token (len)"] = (await client.fetch_client_values("http.token", length=True))[0]
            allowed = {
                "guilds": (await client.fetch_client_values("guilds", length=True))[0],
                "guild ids": (await client.fetch_client_values("guilds"))[0],
                "shard_ids": (await client.fetch_client_values("shard_ids"))[0],
                "cluster.id": (await client.fetch_client_values("cluster.id"))[0],
                "latencies": (await client.fetch_client_values("latencies"))[0],
            }
            with pytest.raises(RemoteError, match="no RPC handler named 'environment'"):
                await client.request(0, "environment")
            return refused, allowed

    refused, allowed = asyncio.run(scenario())
    secrets = [deployment.secret, deployment.token]
    for path, result in refused.items():
        assert result.status == "error", f"{path} was answered: {result}"
        bare = path.split(" ")[0]
        assert repr(bare) in (result.error or ""), f"the refusal of {path} does not name it: {result.error}"
        assert not any(s in (result.error or "") for s in secrets), f"the refusal of {path} leaks a secret"
    assert "is not fetchable" in (refused["http.token"].error or "")
    assert allowed["guilds"].value == 6
    assert len(allowed["guild ids"].value) == 6 and all(isinstance(g, int) for g in allowed["guild ids"].value)
    assert allowed["shard_ids"].value == [0, 1]
    assert allowed["cluster.id"].value == 0
    assert sorted(shard for shard, _ in allowed["latencies"].value) == [0, 1]  # in the order shards connected


def _cluster_log(deployment: Rehearsal) -> str:
    path = Path(deployment.workdir) / "logs" / "h0" / "cluster-0.log"
    return path.read_text(errors="replace") if path.exists() else ""


def test_cluster_keeps_its_hosts_signature_window_and_size_cap(deployment: Rehearsal) -> None:
    keys = Keys(deployment.settings.namespace)
    codec = Codec(deployment.secret)  # the sender's codec: it signs anything, old or big

    def ping(sender: str, *, age: float, pad: int) -> bytes:
        return codec.encode(Envelope(MessageType.PING, sender=sender, payload={"pad": "x" * pad},
                                     reply_to=sender, target="cluster:0", channel=keys.cluster_inbox(0),
                                     ts=time.time() - age))

    probes = {
        "tool:stale-20s": ping("tool:stale-20s", age=20.0, pad=0),
        "tool:big-100k": ping("tool:big-100k", age=0.0, pad=100_000),
        "tool:fine": ping("tool:fine", age=1.0, pad=1000),  # inside both limits: answered (the control)
    }
    listener = redis.Redis.from_url(deployment.redis_url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(*(keys.reply(sender) for sender in probes))
    wait_until_sync(lambda: listener.get_message(timeout=0.05) is None and listener.subscribed, timeout=5,
                    message="reply listener subscribed")
    publisher = redis.Redis.from_url(deployment.redis_url)
    try:
        for data in probes.values():
            publisher.publish(keys.cluster_inbox(0), data)
    finally:
        publisher.close()
    # the control is answered after the two others were consumed (pub/sub keeps order per subscriber)
    replies: list[str] = []

    def answered_fine() -> bool:
        message = listener.get_message(timeout=0.1)
        if message is not None:
            replies.append(message["channel"].decode())
        return keys.reply("tool:fine") in replies

    try:
        wait_until_sync(answered_fine, timeout=15, interval=0.01, message="the control ping answered")
        with contextlib.suppress(Exception):
            while (extra := listener.get_message(timeout=0.3)) is not None:
                replies.append(extra["channel"].decode())
    finally:
        listener.close()
    assert replies == [keys.reply("tool:fine")], f"a stale or oversized ping was answered: {replies}"
    wait_until_sync(lambda: "dropped a message from 'tool:stale-20s'" in _cluster_log(deployment), timeout=10,
                    message="the stale drop in the cluster log")


def test_eval_needs_the_brokers_opt_in_too(deployment: Rehearsal) -> None:
    keys = Keys(deployment.settings.namespace)

    async def scenario() -> tuple[str, Any]:
        async with rpc(deployment, allow_eval=True) as client:
            with pytest.raises(LetsfragError, match="does not allow it") as refused:
                await client.broadcast_eval("len(client.guilds)")
        # an insider with the secret skips the caller's check and sends the eval itself
        bus = Bus(deployment.redis_url, node_id="tool:insider", namespace=deployment.settings.namespace,
                  secret=deployment.secret)
        await bus.start()
        try:
            results = await bus.broadcast(keys.broadcast, MessageType.EVAL, {"code": "client.http.token"},
                                          expected=["cluster:0"], timeout=5)
        finally:
            await bus.close()
        return str(refused.value), results["cluster:0"]

    caller_refusal, cluster_result = asyncio.run(scenario())
    assert "broker config" in caller_refusal
    assert cluster_result.status == "error" and "eval is disabled on cluster 0" in (cluster_result.error or "")
    assert deployment.token not in json.dumps(cluster_result.value)
    client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
    try:
        assert client.hget(keys.layout, "allow_eval") == "0"
    finally:
        client.close()
