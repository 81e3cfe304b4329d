"""Fault 4: a supervisor alone is SIGKILLed; its clusters exit by themselves and move after the lease."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from support.chaos import (
    FAULTY_BOT,
    SMALL,
    assert_clean_end,
    cluster_pids_by_id,
    status_of,
    wait_on_ready,
    wait_ready,
)
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

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
    survivors = sorted(deployment.cluster_pids("h1"))
    assert moved and survivors

    killed_at = time.time()
    orphans = deployment.kill_supervisor("h0")
    assert orphans, "h0 ran cluster processes"
    # no orphan: parent-death signal / IPC EOF ends them well before the lease could expire (4 s)
    wait_until_sync(lambda: _gone(orphans), timeout=3.0, interval=0.05, message="h0's clusters exit by themselves")
    # every cluster granted again (a revoked one is briefly in no grant: h1 alone holding the rest is not enough)
    after = wait_until_sync(lambda: (a := deployment.assignment()).keys() == before.keys()
                            and {h for h, _ in a.values()} == {"h1"} and a, timeout=20, interval=0.1,
                            message="the broker moves h0's clusters to h1 after the lease")
    assert all(after[c][1] > before[c][1] for c in moved), "every moved cluster got a newer epoch"
    events = assert_clean_end(deployment, ["host_lost", "cluster_moved"], since=killed_at)
    lost = [e for e in events if e.kind == "host_lost" and e.ts >= killed_at]
    assert lost[0].fields.get("host") == "h0"
    assert lost[0].ts - killed_at >= SMALL["lease_ttl"] - SMALL["heartbeat_interval"], "not before the lease ran out"
    # h1's own clusters were never touched
    assert all(pid in deployment.cluster_pids() for pid in survivors)


def test_orphaned_hung_cluster_is_killed_before_its_shards_move(rehearsal: Callable[..., Rehearsal],
                                                               tmp_path: Path) -> None:
    """A blocked event loop sees neither the parent-death SIGTERM nor the IPC EOF: the orphan watchdog kills it
    within half the lease TTL, before the broker moves its shards (no duplicate session at the referee)."""
    victim, flag = 0, tmp_path / "hang.flag"
    deployment = rehearsal(**SMALL, bot_command=FAULTY_BOT, hang_timeout=60.0,
                           bot_env={"CHAOS_FAULT": "hang", "CHAOS_CLUSTER": str(victim), "CHAOS_FLAG": str(flag)})
    deployment.start()
    wait_ready(deployment)
    host = status_of(deployment, victim)["host"]
    wait_on_ready(flag, cluster_pids_by_id(deployment)[victim])  # else the running process could take the fault
    flag.touch()
    restart = deployment.letsfrag_cli("restart", "--cluster", str(victim), "--secret-env", "REHEARSAL_SECRET")
    assert restart.returncode == 0, restart.stderr
    wait_until_sync(lambda: not flag.exists(), timeout=30, interval=0.1, message="the bot blocks its event loop")
    hung = cluster_pids_by_id(deployment)[victim]

    killed_at = time.time()
    orphans = deployment.kill_supervisor(host)
    assert hung in orphans and len(orphans) > 1
    others = [pid for pid in orphans if pid != hung]
    wait_until_sync(lambda: _gone(others), timeout=3.0, interval=0.05, message="the healthy orphans exit at once")
    wait_until_sync(lambda: _gone([hung]), timeout=15.0, interval=0.05, message="the hung orphan is killed")
    took = time.time() - killed_at
    assert took < SMALL["lease_ttl"] - SMALL["heartbeat_interval"], f"gone after {took:.1f}s: before any move"
    events = assert_clean_end(deployment, ["host_lost", "cluster_moved"], since=killed_at)
    assert any(e.kind == "host_lost" and e.fields.get("host") == host for e in events)
