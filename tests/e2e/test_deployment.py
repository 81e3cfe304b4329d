"""A real deployment end to end: broker + supervisors + discord.py clusters against the simulator."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
import redis
from support.waiting import scaled, wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.integration


def hosts_of(deployment: Rehearsal) -> dict[str, int]:
    counts: dict[str, int] = {}
    for host, _ in deployment.assignment().values():
        counts[host] = counts.get(host, 0) + 1
    return counts


def referee(deployment: Rehearsal) -> tuple[int, int]:
    stats: dict[str, Any] = deployment.sim_stats()
    return int(stats["identify_violations"]["total"]), int(stats["duplicate_sessions"]["count"])


def test_two_hosts_sixteen_shards_all_ready(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(hosts=2, shards=16, shards_per_cluster=4).start()
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="16 shards READY")
    assert hosts_of(deployment) == {"h0": 2, "h1": 2}
    assert referee(deployment) == (0, 0)


def test_host_sigkill_fails_over_within_the_bound(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(hosts=2, shards=16, shards_per_cluster=4, lease_ttl=3.0, lease_grace=1.0).start()
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="16 shards READY")
    before = deployment.assignment()
    killed_at = time.monotonic()
    deployment.kill_host("h0")
    # right after the kill the lease is still valid: nothing may have moved
    assert {c: h for c, (h, _) in deployment.assignment().items()} == {c: h for c, (h, _) in before.items()}
    wait_until_sync(lambda: hosts_of(deployment) == {"h1": 4} and deployment.all_ready(), timeout=60,
                    interval=0.25, message="all clusters READY on h1")
    elapsed = time.monotonic() - killed_at
    # bound: ttl + grace + identify time (8 shards over 4 buckets, 1 s window) + process start slack
    assert elapsed < 3.0 + 1.0 + 2.0 + scaled(10.0)
    after = deployment.assignment()
    assert all(after[c][1] > before[c][1] for c, (h, _) in before.items() if h == "h0"), "epochs must grow"
    assert referee(deployment) == (0, 0)


def test_frozen_host_is_fenced_and_never_runs_twice(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(hosts=2, shards=8, shards_per_cluster=2, lease_ttl=3.0, lease_grace=1.0,
                           sim_heartbeat_interval=1.0).start()
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="8 shards READY")
    frozen_pids = deployment.cluster_pids("h0")  # not its launcher, which the live supervisor keeps
    assert frozen_pids
    deployment.freeze_host("h0")
    wait_until_sync(lambda: hosts_of(deployment) == {"h1": 4} and deployment.all_ready(), timeout=60,
                    interval=0.25, message="h0's clusters moved to h1")
    deployment.thaw_host("h0")

    def old_processes_gone() -> bool:
        return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in frozen_pids)

    wait_until_sync(old_processes_gone, timeout=30, message="woken cluster processes exit")
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="still READY")
    assert referee(deployment) == (0, 0)


def test_broker_restart_changes_nothing_and_new_host_gets_clusters(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(hosts=2, shards=16, shards_per_cluster=4, rebalance="on-join").start()
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="16 shards READY")
    pids = sorted(deployment.cluster_pids())
    before = deployment.assignment()
    deployment.kill_broker("b0")
    deployment.start_broker("b1")

    def broker_took_over() -> bool:
        client = redis.Redis.from_url(deployment.redis_url, decode_responses=True)
        try:
            return client.get(f"{deployment.settings.namespace}:leader") == "b1"
        finally:
            client.close()

    wait_until_sync(broker_took_over, timeout=30, message="restarted broker leads")
    assert deployment.assignment() == before
    assert sorted(deployment.cluster_pids()) == pids, "no cluster restarted"
    deployment.start_host("h2")
    wait_until_sync(lambda: sorted(hosts_of(deployment).values()) in ([1, 1, 2], [1, 2, 1]) and
                    len(hosts_of(deployment)) == 3 and deployment.all_ready(), timeout=90, interval=0.25,
                    message="third host received clusters")
    stats: dict[str, Any] = deployment.sim_stats()
    assert stats["duplicate_sessions"]["count"] == 0 and stats["identify_violations"]["total"] == 0
