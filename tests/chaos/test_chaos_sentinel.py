"""Fault 10: Redis behind Sentinel; the master is killed and letsfrag follows the promoted replica."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.chaos import SMALL, assert_clean_end, cluster_pids_by_id, kinds, status_of, wait_ready
from support.sentinel import SentinelGroup
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos

VICTIM = 3


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "sentinel")
    try:
        group.start()
        yield group
    finally:
        group.close()


def test_master_failover_is_followed(sentinel_group: SentinelGroup, rehearsal: Callable[..., Rehearsal]) -> None:
    # sentinel_group first: it is torn down after the deployment has stopped
    deployment = rehearsal(**{**SMALL, "lease_ttl": 8.0}, redis_yaml=sentinel_group.redis_yaml())
    deployment.external_redis_url = sentinel_group.master_url()
    deployment.start(redis=False)
    wait_ready(deployment)
    pids = cluster_pids_by_id(deployment)
    before = deployment.assignment()

    killed_at = time.time()
    sentinel_group.kill_master()
    wait_until_sync(sentinel_group.promoted, timeout=30, interval=0.2, message="the sentinels promote the replica")
    deployment.external_redis_url = sentinel_group.master_url()
    promoted_at = time.time()

    def following() -> bool:
        client = deployment.redis_client()
        try:
            hosts = all(float(client.hget(f"rehearsal:host:{h}", "heartbeat_at") or 0) > promoted_at
                        for h in deployment.hosts)
            broker = float(client.hget("rehearsal:broker", "heartbeat_at") or 0) > promoted_at
            return hosts and broker and client.get("rehearsal:leader") == "b0"
        finally:
            client.close()

    wait_until_sync(following, timeout=30, interval=0.25, message="broker and supervisors write to the new master")
    assert deployment.assignment() == before, "the failover caused no reassignment"
    assert cluster_pids_by_id(deployment) == pids, "no cluster restarted by the failover"

    # pub/sub follows too: a restart command reaches the supervisor through the new master
    restart = deployment.letsfrag_cli("restart", "--cluster", str(VICTIM), "--secret-env", "REHEARSAL_SECRET")
    assert restart.returncode == 0, (restart.stdout, restart.stderr)
    wait_until_sync(lambda: cluster_pids_by_id(deployment).get(VICTIM) not in (None, pids[VICTIM])
                    and status_of(deployment, VICTIM).get("state") == "ready", timeout=30, interval=0.2,
                    message="the restarted cluster is READY (it identified through the new master)")
    events = assert_clean_end(deployment)
    after = kinds(events, since=killed_at)
    for bad in ("host_lost", "cluster_moved", "host_fenced", "cluster_fenced", "leader_lost", "redis_data_lost"):
        assert bad not in after, f"{bad} after the failover: {after}"
