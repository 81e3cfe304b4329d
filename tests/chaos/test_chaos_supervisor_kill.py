"""Fault 4: a supervisor alone is SIGKILLed; its clusters exit by themselves and move after the lease."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import pytest
from chaos_checks import SMALL, assert_clean_end, wait_ready
from helpers import wait_until_sync

from letsfrag.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_orphaned_clusters_exit_and_move(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(**SMALL).start()
    wait_ready(deployment)
    before = deployment.assignment()
    moved = sorted(c for c, (host, _) in before.items() if host == "h0")
    survivors = sorted(p.pid for p in deployment.tree(deployment.hosts["h1"])[1:])
    assert moved and survivors

    killed_at = time.time()
    orphans = deployment.kill_supervisor("h0")
    assert orphans, "h0 ran cluster processes"
    # no orphan: parent-death signal / IPC EOF ends them well before the lease could expire (4 s)
    wait_until_sync(lambda: _gone(orphans), timeout=3.0, interval=0.05, message="h0's clusters exit by themselves")
    wait_until_sync(lambda: {h for h, _ in deployment.assignment().values()} == {"h1"}, timeout=20, interval=0.1,
                    message="the broker moves h0's clusters to h1 after the lease")
    after = deployment.assignment()
    assert all(after[c][1] > before[c][1] for c in moved), "every moved cluster got a newer epoch"
    events = assert_clean_end(deployment, ["host_lost", "cluster_moved"], since=killed_at)
    lost = [e for e in events if e.kind == "host_lost" and e.ts >= killed_at]
    assert lost[0].fields.get("host") == "h0"
    assert lost[0].ts - killed_at >= SMALL["lease_ttl"] - SMALL["heartbeat_interval"], "not before the lease ran out"
    # h1's own clusters were never touched
    assert all(pid in deployment.cluster_pids() for pid in survivors)
