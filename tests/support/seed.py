"""Seed a realistic deployment into Redis, exactly in the formats of docs/redis.md.

Used by the status/TUI tests and by ``benchmarks/tui.py``. Every timestamp is relative to ``now`` so that a
reader given the same ``now`` renders the same picture (deterministic snapshots).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from letsfrag.contract.keys import Keys

#: the fixed "now" of the seeded test deployment (2026-01-01T00:00:00Z)
NOW = 1_767_225_600.0

TRACEBACK = """Traceback (most recent call last):
  File "/srv/bot/cogs/music.py", line 88, in on_ready
    await self.load_playlists()
  File "/srv/bot/cogs/music.py", line 120, in load_playlists
    data = json.loads(raw)
json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)"""


@dataclass
class Seeded:
    """What was seeded, for assertions."""

    namespace: str
    hosts: list[str]
    clusters: int
    shards_per_cluster: int
    failed: list[int] = field(default_factory=list)
    unassigned: list[int] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    assignment: dict[int, str] = field(default_factory=dict)

    @property
    def shards(self) -> int:
        return self.clusters * self.shards_per_cluster


async def seed(
    redis: aioredis.Redis,
    namespace: str = "letsfrag",
    *,
    hosts: int = 3,
    clusters: int = 12,
    shards_per_cluster: int = 4,
    now: float = NOW,
    failed: tuple[int, ...] = (4,),
    unassigned: tuple[int, ...] = (11,),
    lost: tuple[str, ...] = (),
    draining: tuple[str, ...] = (),
    events: int = 40,
    metrics: int = 30,
    healthy: bool = False,
) -> Seeded:
    """Write a deployment of ``hosts`` hosts and ``clusters`` clusters; ``healthy`` drops failed/unassigned."""
    if healthy:
        failed, unassigned = (), ()
    keys = Keys(namespace)
    host_ids = [f"host-{i + 1:02d}" for i in range(hosts)]
    shard_count = clusters * shards_per_cluster
    info = Seeded(namespace, host_ids, clusters, shards_per_cluster, list(failed), list(unassigned), list(lost))
    pipe = redis.pipeline(transaction=False)
    pipe.hset(keys.layout, mapping={
        "shard_count": shard_count, "shards_per_cluster": shards_per_cluster, "cluster_count": clusters,
        "max_concurrency": 1, "identify_window": 5, "lease_ttl": 10, "lease_grace": 2, "heartbeat_interval": 2,
        "updated_at": f"{now - 3600:.3f}",
    })
    for cid in range(clusters):
        if cid in unassigned:
            continue
        host = host_ids[cid % hosts]
        info.assignment[cid] = host
        pipe.hset(keys.assignment, str(cid), json.dumps({"host": host, "epoch": cid + 1}))
    pipe.set(keys.epoch, clusters)
    for index, host in enumerate(host_ids):
        mine = {str(c): c + 1 for c, h in info.assignment.items() if h == host}
        pipe.sadd(keys.hosts, host)
        pipe.hset(keys.host(host), mapping={
            "id": host, "hostname": f"node{index + 1}.example.net", "pid": 4000 + index, "version": "0.1.0",
            "capacity": max(4, -(-clusters // hosts)), "incarnation": uuid.UUID(int=index).hex,
            "registered_at": f"{now - 7200:.3f}", "heartbeat_at": f"{now - 1 - index % 3:.3f}",
            "state": "draining" if host in draining else "up", "cpu_percent": f"{12.5 + index * 7:.1f}",
            "rss": (400 + 37 * index) * 1024 * 1024, "started_at": f"{now - 7200 - index * 60:.3f}",
            "running": json.dumps(mine),
        })
        if host not in lost:
            pipe.set(keys.lease(host), uuid.UUID(int=index).hex, px=3_600_000)
    for cid in range(clusters):
        _seed_cluster(pipe, keys, cid, info, now, shards_per_cluster, shard_count, metrics)
    pipe.set(keys.leader, "broker-a", px=3_600_000)
    pipe.hset(keys.broker, mapping={
        "id": "broker-a", "since": f"{now - 7000:.3f}", "heartbeat_at": f"{now - 1:.3f}", "state": "running",
        "identify_depth": 0, "unassigned": len(unassigned), "standbys": json.dumps(["broker-b"]),
    })
    pipe.zadd(keys.identify("queue:0"), {"t1": 1, "t2": 2})
    await pipe.execute()
    await _seed_events(redis, keys, info, now, events)
    return info


def _seed_cluster(pipe: aioredis.client.Pipeline, keys: Keys, cid: int, info: Seeded, now: float, per: int,
                  shard_count: int, samples: int) -> None:
    host = info.assignment.get(cid)
    ids = list(range(cid * per, min((cid + 1) * per, shard_count)))
    if host is None:
        return
    is_failed = cid in info.failed
    state = "failed" if is_failed else "ready"
    status = {
        "cluster_id": cid, "host": host, "epoch": cid + 1, "state": state, "pid": 0 if is_failed else 10_000 + cid,
        "shard_ids": json.dumps(ids), "shard_range": f"{ids[0]}–{ids[-1]}", "restarts": 6 if is_failed else cid % 3,
        "started_at": f"{now - 3000 - cid * 10:.3f}", "ready_at": f"{now - 2950 - cid * 10:.3f}",
        "cpu_percent": f"{(cid * 3.7) % 40:.1f}", "rss": (120 + cid * 5) * 1024 * 1024, "threads": 9,
        "last_heartbeat": f"{now - (1 if cid % 5 else 5):.3f}", "guilds": 250 * len(ids),
        "latency": f"{0.040 + cid / 1000:.3f}", "updated_at": f"{now - 1:.3f}",
        "reason": "gave up after 6 restarts in 10m" if is_failed else "",
        "last_error": "json.decoder.JSONDecodeError: Expecting value" if is_failed else "",
        "exit_code": 1 if is_failed else "",
    }
    pipe.hset(keys.cluster_status(cid), mapping=cast(Any, status))
    shards = {}
    for sid in ids:
        shard_state = "ready" if not is_failed else "disconnected"
        shards[str(sid)] = json.dumps({"status": shard_state, "latency": 0.040 + sid / 10000, "guilds": 250,
                                       "last_event_age": 0.5, "ts": round(now - 1, 3)})
    pipe.hset(keys.shard_status(cid), mapping=cast(Any, shards))
    if is_failed:
        for i in range(3):
            pipe.rpush(keys.cluster_errors(cid), json.dumps({"ts": now - 60 - i * 30, "text": TRACEBACK}))
        for i in range(6):
            pipe.rpush(keys.cluster_restarts(cid), json.dumps({"ts": now - 60 - i * 30, "reason": "exited with code 1",
                                                            "exit_code": 1, "exit_signal": None, "delay": 2 ** i}))
    for i in range(samples):
        pipe.rpush(keys.cluster_metrics(cid), json.dumps({"ts": now - i * 2, "cpu": round(10 + (i * 7 + cid) % 25, 1),
                                                      "rss": (120 + cid * 5 + i % 7) * 1024 * 1024}))


async def _seed_events(redis: aioredis.Redis, keys: Keys, info: Seeded, now: float, count: int) -> None:
    pipe = redis.pipeline(transaction=False)
    for i in range(count, 0, -1):
        ts = now - i * 20
        cid = i % info.clusters
        if cid in info.failed and i < 10:
            entry = {"severity": "error", "kind": "cluster_crashed", "message": f"cluster {cid} exited with code 1"}
        elif i % 7 == 0:
            entry = {"severity": "warning", "kind": "cluster_slow", "message": f"cluster {cid} heartbeat is late"}
        else:
            entry = {"severity": "info", "kind": "cluster_ready", "message": f"cluster {cid} is ready"}
        pipe.xadd(keys.events, cast(Any, {"ts": f"{ts:.3f}", "source": "host:" + info.hosts[cid % len(info.hosts)],
                                          "cluster": str(cid), **entry}))
    for cid in info.unassigned:
        pipe.xadd(keys.events, {"ts": f"{now - 5:.3f}", "severity": "error", "kind": "cluster_unassigned",
                                "message": f"cluster {cid} has no host (no capacity left)", "source": "broker:a",
                                "cluster": str(cid)})
    await pipe.execute()


#: what anyone who can write to Redis may put in a host id or an error: markup, a link, terminal escapes
#: (OSC 8 link, clear screen, 8-bit CSI), a bidi override and a newline
HOSTILE = "[/x][link=http://x]y[/link]\x1b]8;;http://e\x07\x1b[2J\x9b\u202e\nforged"
#: how :data:`HOSTILE` must be shown: literally, control characters as escapes
HOSTILE_SHOWN = "[/x][link=http://x]y[/link]\\x1b]8;;http://e\\x07\\x1b[2J\\x9b\\u202e\\nforged"


async def seed_hostile(redis: aioredis.Redis, namespace: str = "letsfrag", cluster: int = 4,
                       now: float = NOW) -> None:
    """Move ``cluster`` (failed in :func:`seed`) to a host whose id, errors and events are :data:`HOSTILE`."""
    keys = Keys(namespace)
    pipe = redis.pipeline(transaction=False)
    pipe.sadd(keys.hosts, HOSTILE)
    pipe.hset(keys.host(HOSTILE), mapping={
        "id": HOSTILE, "hostname": HOSTILE, "pid": 4999, "capacity": 4, "registered_at": f"{now - 60:.3f}",
        "heartbeat_at": f"{now - 1:.3f}", "state": "up", "running": json.dumps({str(cluster): 99})})
    pipe.set(keys.lease(HOSTILE), "x", px=3_600_000)
    pipe.hset(keys.assignment, str(cluster), json.dumps({"host": HOSTILE, "epoch": 99}))
    pipe.hset(keys.cluster_status(cluster), mapping={"host": HOSTILE, "epoch": 99, "last_error": HOSTILE,
                                                     "reason": HOSTILE})
    pipe.lpush(keys.cluster_errors(cluster), json.dumps({"ts": now - 1, "text": f"Traceback\n{HOSTILE}"}))
    pipe.lpush(keys.cluster_restarts(cluster), json.dumps({"ts": now - 1, "reason": HOSTILE, "exit_code": 1}))
    pipe.xadd(keys.events, {"ts": f"{now - 1:.3f}", "severity": "error", "kind": "cluster_crash",
                            "message": HOSTILE, "source": f"host:{HOSTILE}", "cluster": str(cluster)})
    await pipe.execute()


async def seed_handover(redis: aioredis.Redis, namespace: str = "letsfrag", now: float = NOW) -> None:
    """Two planned handovers on top of :func:`seed` and a rolling restart in progress (docs/redis.md formats).

    Cluster 5 (host-03, epoch 6, pid 10005) is being handed to host-01 at epoch 20: *preparing*, its successor
    (pid 20005) READY. Cluster 2 restarts in place on host-03 at epoch 21: *switched*; its successor (pid 20002)
    already wrote the cluster's status hash. The leader broker reports "rolling restart of host-03: 2 of 4".
    """
    keys = Keys(namespace)
    pipe = redis.pipeline(transaction=False)
    pipe.hset(keys.handover, mapping={
        "5": json.dumps({"host": "host-01", "epoch": 20, "from_host": "host-03", "from_epoch": 6,
                         "reason": "rolling", "state": "preparing", "started": now - 3, "deadline": now + 57}),
        "2": json.dumps({"host": "host-03", "epoch": 21, "from_host": "host-03", "from_epoch": 3,
                         "reason": "rolling", "state": "switched", "started": now - 9, "deadline": now + 51}),
    })
    pipe.hset(keys.host("host-01"), "successors",
              json.dumps({"5": {"epoch": 20, "state": "ready", "pid": 20005, "reason": ""}}))
    pipe.hset(keys.host("host-03"), "successors",
              json.dumps({"2": {"epoch": 21, "state": "ready", "pid": 20002, "reason": ""}}))
    pipe.hset(keys.assignment, "2", json.dumps({"host": "host-03", "epoch": 21}))
    pipe.hset(keys.cluster_status(2), mapping={"epoch": 21, "pid": 20002})
    pipe.hset(keys.broker, "operation",
              json.dumps({"kind": "rolling", "host": "host-03", "done": 2, "total": 4, "cluster": 5}))
    await pipe.execute()
