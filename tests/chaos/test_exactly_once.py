"""Exactly-once command handling under faults: each ``!ping <n>`` answered at most once, losses bounded.

The simulator sends ``!ping <n>`` at a steady rate and its handling referee counts the answers per message
(``answered_twice_or_more`` must stay 0). The freeze test uses a simulator heartbeat interval LONGER than the
lease TTL, so the frozen host's sessions are still live at the simulator when it wakes up with events buffered
in its sockets: only the dispatch guard stands between those events and a second answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.exactly_once import (
    SecuredRehearsal,
    all_clusters_ready,
    cluster_states,
    deployment_factory,
    handling,
    letsfrag_cli,
    live_pids,
    reset_referee,
    settle,
    start_traffic,
    traffic_off,
    traffic_on,
)
from support.waiting import wait_until_sync

pytestmark = pytest.mark.chaos

RATE = 20.0
#: process start of a cluster (python + discord.py import, login) and the supervisor noticing the grant
START_SLACK = 3.0


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., SecuredRehearsal]]:
    yield from deployment_factory(tmp_path)


def _started(deploy: Callable[..., SecuredRehearsal], **settings: object) -> SecuredRehearsal:
    deployment = deploy(
        hosts=2, shards=8, shards_per_cluster=2, max_concurrency=4, identify_window=1.0, **settings
    ).start()
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="8 shards READY")
    reset_referee(deployment)
    return deployment


def _answered_cleanly(deployment: SecuredRehearsal, seconds: float = 2.0) -> dict[str, int]:
    """A clean phase after a disturbance: every message answered exactly once."""
    reset_referee(deployment)
    start_traffic(deployment, RATE, seconds)
    wait_until_sync(
        lambda: handling(deployment)["sent"] >= int(RATE * seconds),
        timeout=seconds + 10,
        interval=0.2,
        message="clean traffic sent",
    )
    counts = settle(deployment)
    assert counts["answered_twice_or_more"] == 0, counts
    assert counts["unanswered_live"] == 0 and counts["undeliverable"] == 0, counts
    assert counts["answered_once"] == counts["sent"] > 0, counts
    return counts


def test_frozen_host_past_its_lease_never_answers_twice(deploy: Callable[..., SecuredRehearsal]) -> None:
    ttl, grace = 3.0, 1.0
    deployment = _started(deploy, lease_ttl=ttl, lease_grace=grace, sim_heartbeat_interval=10.0)
    client = deployment.redis_client()
    try:
        frozen = deployment.cluster_pids("h0")  # not its launcher, which the live supervisor keeps
        moved = [cid for cid, (host, _) in deployment.assignment(client).items() if host == "h0"]
        assert frozen and moved
        traffic_on(deployment, RATE)
        frozen_at = time.monotonic()
        deployment.freeze_host("h0")
        wait_until_sync(
            lambda: all_clusters_ready(deployment, client, host="h1"),
            timeout=40,
            interval=0.1,
            message="h0's clusters READY on h1",
        )
        takeover = time.monotonic() - frozen_at
        deployment.thaw_host("h0")
        # the woken clusters find events buffered in their sockets; they must hold them and exit
        wait_until_sync(lambda: not live_pids(frozen), timeout=30, message="woken cluster processes exit")
        wait_until_sync(
            lambda: all_clusters_ready(deployment, client),
            timeout=40,
            interval=0.2,
            message="every cluster READY after the thaw",
        )
        counts = traffic_off(deployment)
    finally:
        client.close()
    shards_moved = len(moved) * deployment.settings.shards_per_cluster
    identify_time = (
        math.ceil(shards_moved / deployment.settings.max_concurrency) * deployment.settings.identify_window
    )
    bound = RATE * (ttl + grace + identify_time + START_SLACK)
    lost = counts["unanswered_live"] + counts["undeliverable"]
    print(f"freeze: takeover {takeover:.1f}s, handling {counts}, lost {lost} <= bound {bound:.0f}")
    assert counts["answered_twice_or_more"] == 0, counts
    assert lost <= bound, f"lost {lost} commands, bound {bound:.0f}: {counts}"
    assert counts["answered_once"] > 0
    _answered_cleanly(deployment)


def test_broker_failover_answers_everything_once(deploy: Callable[..., SecuredRehearsal]) -> None:
    deployment = _started(deploy, lease_ttl=3.0, lease_grace=1.0)
    client = deployment.redis_client()
    try:
        pids = sorted(deployment.cluster_pids())
        traffic_on(deployment, RATE)
        deployment.kill_broker("b0")
        deployment.start_broker("b1")
        ns = deployment.settings.namespace
        wait_until_sync(lambda: client.get(f"{ns}:leader") == "b1", timeout=30, message="b1 leads")
        counts = traffic_off(deployment, more=20, message="traffic after the takeover")
        assert sorted(deployment.cluster_pids()) == pids, "a broker failover restarts no cluster"
    finally:
        client.close()
    print(f"broker failover: handling {counts}")
    assert counts["answered_twice_or_more"] == 0, counts
    assert counts["unanswered_live"] == 0 and counts["undeliverable"] == 0, counts


def test_redis_restart_never_answers_twice(deploy: Callable[..., SecuredRehearsal]) -> None:
    deployment = _started(deploy, lease_ttl=4.0, lease_grace=1.0, redis_persist=True)
    assert deployment.redis is not None
    traffic_on(deployment, RATE)
    deployment.redis.stop()
    down_at = time.monotonic()
    wait_until_sync(lambda: time.monotonic() - down_at >= 3.0, timeout=10, message="Redis down for 3 s")
    deployment.redis.start()  # same port, data from the append-only file
    client = deployment.redis_client()
    try:
        wait_until_sync(
            lambda: all_clusters_ready(deployment, client),
            timeout=60,
            interval=0.2,
            message="every cluster READY after the Redis restart",
        )
        counts = traffic_off(deployment)
    finally:
        client.close()
    print(f"redis restart: handling {counts}")
    assert counts["answered_twice_or_more"] == 0, counts
    _answered_cleanly(deployment)


def test_rolling_restart_never_answers_twice(deploy: Callable[..., SecuredRehearsal]) -> None:
    deployment = _started(deploy, lease_ttl=3.0, lease_grace=1.0)
    client = deployment.redis_client()
    try:
        before = {
            cid: pid for cid, (host, _, pid) in cluster_states(deployment, client).items() if host == "h0"
        }
        assert before
        traffic_on(deployment, RATE)
        done = letsfrag_cli(
            "restart",
            "--host",
            "h0",
            "--rolling",
            "--redis",
            deployment.redis_url,
            "--namespace",
            deployment.settings.namespace,
            "--timeout",
            "60s",
            env={"LETSFRAG_SECRET": deployment.secret},
            timeout=90,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        after = {
            cid: pid for cid, (host, _, pid) in cluster_states(deployment, client).items() if host == "h0"
        }
        assert all(after[cid] != pid for cid, pid in before.items()), (
            f"every h0 cluster restarted: {before} {after}"
        )
        wait_until_sync(lambda: all_clusters_ready(deployment, client), timeout=30, message="all READY")
        counts = traffic_off(deployment)
    finally:
        client.close()
    print(f"rolling restart: handling {counts}")
    assert counts["answered_twice_or_more"] == 0, counts
    assert "Traceback" not in done.stderr
    assert deployment.secret not in done.stdout + done.stderr, "the secret is never printed"
