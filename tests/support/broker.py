"""Support of the broker tests: a config with test-speed timers and a Deployment of fake hosts and brokers."""

from __future__ import annotations

import json
from typing import Any, cast

from letsfrag.broker import ClusterBroker
from letsfrag.config import BrokerConfig
from letsfrag.connection import create_redis
from letsfrag.contract.keys import Keys
from support.fake_hosts import FakeHost, Ledger

#: the bot token the ``/gateway/bot`` stub (fixture ``stub``) accepts
TOKEN = "stub-token-123456"
TTL = 1.0
GRACE = 0.6
HEARTBEAT = 0.1


class Stub:
    """The state of the ``/gateway/bot`` stub (fixture ``stub`` in conftest.py): its URL, the Authorization
    headers it received, and what it answers."""

    def __init__(self) -> None:
        self.url = ""
        self.calls: list[str] = []
        self.shards = 13
        self.max_concurrency = 4


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_config(redis_url: str, **overrides: Any) -> BrokerConfig:
    """A broker config with 4 clusters (32 shards / 8) and test-speed timers; ``overrides`` deep-merge."""
    data: dict[str, Any] = {
        "redis": redis_url, "shards": 32, "shards_per_cluster": 8, "max_concurrency": 1,
        "hosts": {"expected": 2, "startup_grace": 10}, "lease": {"ttl": TTL, "grace": GRACE},
        "heartbeat_interval": HEARTBEAT, "leader_ttl": 1.0, "rebalance": "on-join",
    }
    return BrokerConfig.model_validate(_merge(data, overrides))


class Deployment:
    """Fake hosts and brokers of one test, with readers of the Redis truth."""

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self.ledger = Ledger()
        self.hosts: dict[str, FakeHost] = {}
        self.brokers: list[ClusterBroker] = []
        self.keys = Keys("letsfrag")
        self.redis = create_redis(redis_url)  # retries once on a stale connection after a restart

    async def host(self, host_id: str, capacity: int = 4, **kwargs: Any) -> FakeHost:
        kwargs.setdefault("lease_ttl", TTL)
        kwargs.setdefault("heartbeat", HEARTBEAT)
        host = FakeHost(self.url, host_id, capacity=capacity, ledger=self.ledger, **kwargs)
        self.hosts[host_id] = host
        return await host.start()

    async def broker(self, config: BrokerConfig | None = None, **kwargs: Any) -> ClusterBroker:
        broker = ClusterBroker(config or make_config(self.url), **kwargs)
        self.brokers.append(broker)
        await broker.start()
        return broker

    async def assignment(self) -> dict[int, tuple[str, int]]:
        raw = await self.redis.hgetall(self.keys.assignment)
        return {int(c): (json.loads(v)["host"], json.loads(v)["epoch"]) for c, v in raw.items()}

    async def owners(self) -> dict[int, str]:
        return {c: h for c, (h, _) in (await self.assignment()).items()}

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for host in (await self.owners()).values():
            out[host] = out.get(host, 0) + 1
        return out

    async def running(self) -> dict[str, dict[int, int]]:
        """``running`` of every registered host, as its record says."""
        out: dict[str, dict[int, int]] = {}
        for host in cast("set[str]", await self.redis.smembers(self.keys.hosts)):
            raw = await self.redis.hget(self.keys.host(host), "running")
            out[host] = {int(c): e for c, e in json.loads(raw or "{}").items()}
        return out

    async def settled(self, expected: dict[str, int]) -> bool:
        """True when the assignment gives each host ``expected`` clusters and the hosts run exactly that."""
        owners = await self.owners()
        counts = {h: sum(1 for o in owners.values() if o == h) for h in expected}
        if counts != expected or len(owners) != sum(expected.values()):
            return False
        live = {h: set(self.hosts[h].running) for h in expected}
        return all(live[h] == {c for c, o in owners.items() if o == h} for h in expected)

    async def events(self, kind: str) -> list[dict[str, str]]:
        entries = cast("list[tuple[str, dict[str, str]]]", await self.redis.xrange(self.keys.events))
        return [data for _, data in entries if data.get("kind") == kind]

    async def close(self) -> None:
        for broker in self.brokers:
            await broker.close()
        for host in self.hosts.values():
            await host.close()
        await self.redis.aclose()
