"""A host that is merely slow keeps its lease: both hosts under a CPU oversubscribed twice for a minute.

Two busy loops run beside a 2-host deployment on this 2-core machine (twice as many runnable processes as
cores, plus the deployment itself) while the simulator sends ``!ping <n>`` at a steady rate. Nothing may
change: no host lost, no cluster moved, revoked or restarted, and every command answered exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from support.exactly_once import (
    SecuredRehearsal,
    all_clusters_ready,
    cluster_states,
    deployment_factory,
    reset_referee,
    settle,
    start_traffic,
    stop_traffic,
)
from support.waiting import wait_until_sync

from letsfrag.contract.keys import Keys

pytestmark = pytest.mark.chaos

RATE = 10.0
#: how long the CPU stays oversubscribed (LETSFRAG_OVERSUBSCRIBED_SECONDS shortens it for a local run)
SECONDS = float(os.environ.get("LETSFRAG_OVERSUBSCRIBED_SECONDS", "60"))
#: event kinds that mean a host or a cluster changed hands
CHANGES = {
    "host_lost", "host_left", "cluster_revoked", "cluster_unassigned", "cluster_moved", "cluster_granted",
    "move_timeout", "rebalance_step", "drain",
}


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[Callable[..., SecuredRehearsal]]:
    yield from deployment_factory(tmp_path)


def _busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` processes that each keep one core busy until killed."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]


def _event_kinds_since(client: redis.Redis, keys: Keys, since: str) -> list[tuple[str, str]]:
    entries = client.xrange(keys.events, min=f"({since}", max="+")
    return [(str(data.get("kind")), str(data.get("message"))) for _, data in entries]  # type: ignore[union-attr]


def test_oversubscribed_cpu_loses_no_lease_and_moves_nothing(deploy: Callable[..., SecuredRehearsal]) -> None:
    deployment = deploy(hosts=2, shards=8, shards_per_cluster=2, max_concurrency=4, identify_window=1.0).start()
    wait_until_sync(deployment.all_ready, timeout=60, interval=0.25, message="8 shards READY")
    client = deployment.redis_client()
    keys = Keys(deployment.settings.namespace)
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        wait_until_sync(lambda: all_clusters_ready(deployment, client), timeout=30, message="clusters READY in Redis")
        before = cluster_states(deployment, client)
        grants = deployment.assignment(client)
        last = client.xrevrange(keys.events, count=1)
        since = str(last[0][0]) if last else "0-0"  # type: ignore[index]
        reset_referee(deployment)
        hogs = _busy_loops(os.cpu_count() or 2)
        start_traffic(deployment, RATE, joins=0.3)
        started = time.monotonic()
        wait_until_sync(
            lambda: time.monotonic() - started >= SECONDS,
            timeout=SECONDS + 30,
            interval=0.5,
            message=f"{SECONDS:.0f} s of oversubscribed CPU",
        )
        stop_traffic(deployment)
        for hog in hogs:
            hog.kill()
            hog.wait()
        hogs = []
        counts = settle(deployment, timeout=30)
        after = cluster_states(deployment, client)
        changes = [(kind, text) for kind, text in _event_kinds_since(client, keys, since) if kind in CHANGES]
        assert changes == [], f"a slow host changed hands: {changes}"
        assert deployment.assignment(client) == grants, "no grant moved and no epoch changed"
        assert after == before, f"no cluster restarted or changed state: {before} -> {after}"
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        client.close()
    print(f"oversubscribed {SECONDS:.0f}s: handling {counts}")
    assert counts["sent"] >= RATE * SECONDS * 0.5 and counts["sent_join"] > 0, counts
    assert counts["answered_twice_or_more"] == 0, counts
    assert counts["unanswered_live"] == 0 and counts["undeliverable"] == 0, counts
    assert counts["answered_once"] == counts["sent"], counts
