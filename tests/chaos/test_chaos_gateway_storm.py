"""Fault 9: the simulator forces INVALID_SESSION and RECONNECT on random shards for a while."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.chaos import SMALL, assert_clean_end, fault_window, kinds, wait_ready

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos

SECONDS = 12.0
RATE = 2.0


def test_gateway_storm_recovers_in_process(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(**SMALL).start()
    wait_ready(deployment)
    pids = sorted(deployment.cluster_pids())
    before = deployment.assignment()
    started_at = time.time()
    reply = deployment.sim_post(f"/_sim/chaos?seconds={SECONDS}&rate={RATE}")
    assert reply["chaos"] is True
    fault_window(SECONDS + 0.5)
    events = assert_clean_end(deployment)
    stats = deployment.sim_stats()
    # the storm really happened: both kinds of disturbance, and sessions were resumed as well as re-identified
    assert stats["invalid_sessions"] > 0 and stats["reconnects"] > 0, stats
    assert stats["resumes"] > 0, stats
    assert stats["identifies"]["total"] > deployment.settings.shards, "INVALID_SESSION forced new IDENTIFYs"
    assert stats["identify_violations"]["total"] == 0 and stats["duplicate_sessions"]["count"] == 0
    # discord.py recovered inside the processes: nothing restarted, nothing moved
    assert sorted(deployment.cluster_pids()) == pids
    assert deployment.assignment() == before
    after = kinds(events, since=started_at)
    for bad in ("cluster_crash", "cluster_restart", "cluster_hung", "host_lost", "cluster_moved", "cluster_fenced"):
        assert bad not in after, f"{bad} during a gateway storm: {after}"
