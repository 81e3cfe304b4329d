"""Fault 5: the leader broker SIGKILLed with a standby running, then the last broker too, then a new one."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.chaos import SMALL, assert_clean_end, kinds, wait_ready
from support.waiting import scaled, wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos


def _leader(deployment: Rehearsal) -> str | None:
    client = deployment.redis_client()
    try:
        value = client.get(f"{deployment.settings.namespace}:leader")
        return None if value is None else str(value)
    finally:
        client.close()


def _role(deployment: Rehearsal, broker_id: str) -> str | None:
    client = deployment.redis_client()
    try:
        value = client.get(f"{deployment.settings.namespace}:brokers:{broker_id}")
        return None if value is None else str(value)
    finally:
        client.close()


def test_standby_takes_over_and_state_survives_all_brokers(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(**SMALL).start()
    wait_ready(deployment)
    deployment.start_broker("b1")
    wait_until_sync(lambda: _role(deployment, "b1") == "standby", timeout=15, interval=0.1,
                    message="b1 runs as a standby")
    assert _leader(deployment) == "b0"
    pids = sorted(deployment.cluster_pids())
    before = deployment.assignment()
    leader_ttl = max(2.0, SMALL["lease_ttl"])

    killed_at = time.time()
    started = time.monotonic()
    deployment.kill_broker("b0")
    wait_until_sync(lambda: _leader(deployment) == "b1", timeout=leader_ttl + 5, interval=0.05,
                    message="the standby b1 takes the lead")
    # the old lock expires after at most leader_ttl; the standby polls it (slack for its poll interval)
    assert time.monotonic() - started < leader_ttl + scaled(2.0)
    assert deployment.assignment() == before and sorted(deployment.cluster_pids()) == pids

    # the last broker dies too; with no broker at all the clusters keep running
    deployment.kill_broker("b1")
    deployment.start_broker("b2")
    wait_until_sync(lambda: _leader(deployment) == "b2", timeout=leader_ttl + 10, interval=0.1,
                    message="a freshly started b2 leads")
    assert deployment.assignment() == before, "state recovered from Redis: same grants, same epochs"
    assert sorted(deployment.cluster_pids()) == pids, "no cluster restarted"

    joined_at = time.time()
    deployment.start_host("h2")
    wait_until_sync(lambda: "h2" in {h for h, _ in deployment.assignment().values()} and deployment.all_ready(),
                    timeout=40, interval=0.25, message="a host started after the failovers receives clusters")
    # the on-join rebalance moves clusters to h2 by planned handovers
    events = assert_clean_end(deployment, ["leader_acquired", "host_joined", "handover_switched", "handover_done"],
                              since=killed_at)
    leaders = [e.source for e in events if e.kind == "leader_acquired" and e.ts >= killed_at]
    assert leaders[:2] == ["broker:b1", "broker:b2"], leaders
    assert "host_lost" not in kinds(events, since=killed_at)
    assert "host_joined" in kinds(events, since=joined_at)
