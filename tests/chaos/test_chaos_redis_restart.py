"""Fault 1: Redis restarted mid-run (persistence on, same port): nothing is restarted or reassigned."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.chaos import SMALL, assert_clean_end, fault_window, identifies, kinds, wait_ready
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos

OUTAGE = 5.0


def test_redis_restart_keeps_sessions_and_assignment(rehearsal: Callable[..., Rehearsal]) -> None:
    # the supervisor fences itself after ttl - heartbeat = 7 s without a renewal: longer than the outage
    deployment = rehearsal(**{**SMALL, "lease_ttl": 8.0, "redis_persist": True}).start()
    wait_ready(deployment)
    pids = sorted(deployment.cluster_pids())
    before = deployment.assignment()
    spent = identifies(deployment)
    client = deployment.redis_client()
    beats = {h: float(client.hget(f"rehearsal:host:{h}", "heartbeat_at") or 0) for h in deployment.hosts}
    client.close()

    deployment.stop_redis()
    down_at = time.time()
    fault_window(OUTAGE)
    deployment.resume_redis()
    up_at = time.time()

    def reconnected() -> bool:
        client = deployment.redis_client()
        try:
            hosts_renewed = all(float(client.hget(f"rehearsal:host:{h}", "heartbeat_at") or 0) > up_at
                                for h in deployment.hosts)
            broker_renewed = float(client.hget("rehearsal:broker", "heartbeat_at") or 0) > up_at
            leader = client.get("rehearsal:leader") == "b0"
            return hosts_renewed and broker_renewed and leader
        finally:
            client.close()

    wait_until_sync(reconnected, timeout=20, interval=0.25, message="supervisors and broker write to Redis again")
    wait_until_sync(lambda: kinds(deployment.events(), since=down_at).count("redis_reconnected") >= 3, timeout=20,
                    message="the broker and both hosts report their reconnect in the events stream")
    assert all(beats[h] < down_at for h in beats), "the heartbeats before the outage were recorded"
    events = assert_clean_end(deployment)
    assert sorted(deployment.cluster_pids()) == pids, "no cluster process restarted"
    assert deployment.assignment() == before, "the outage caused no reassignment (same hosts, same epochs)"
    assert identifies(deployment) == spent, "gateway sessions survived: no new IDENTIFY"
    story = kinds(events)
    assert "ready" in story and "cluster_granted" in story
    after = kinds(events, since=down_at)
    for bad in ("host_lost", "cluster_moved", "cluster_granted", "host_fenced", "cluster_fenced", "cluster_crash",
                "redis_data_lost", "leader_lost"):
        assert bad not in after, f"{bad} after the Redis restart: {after}"
