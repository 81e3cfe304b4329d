"""Fault: Redis loses its data mid-run (FLUSHALL): the broker re-adopts every running cluster from its host's
claim; no cluster fences, restarts or identifies again in the meantime — they hold events until adopted."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.chaos import SMALL, assert_clean_end, identifies, kinds, wait_ready
from support.waiting import wait_until_sync

from letsfrag.lab.rehearsal import Rehearsal

pytestmark = pytest.mark.chaos


def test_data_loss_is_adopted_without_fencing(rehearsal: Callable[..., Rehearsal]) -> None:
    deployment = rehearsal(**SMALL).start()
    wait_ready(deployment)
    pids = sorted(deployment.cluster_pids())
    before = deployment.assignment()
    spent = identifies(deployment)

    client = deployment.redis_client()
    client.flushall()
    lost_at = time.time()
    client.close()

    wait_until_sync(lambda: deployment.assignment() == before, timeout=30, interval=0.25,
                    message="every cluster adopted back (same hosts, same epochs)")
    events = assert_clean_end(deployment, expected_kinds=("cluster_adopted",), since=lost_at)
    after = kinds(events, since=lost_at)
    for bad in ("cluster_fenced", "host_fenced", "cluster_crash", "cluster_granted", "cluster_moved", "host_lost"):
        assert bad not in after, f"{bad} after the data loss: {after}"
    assert sorted(deployment.cluster_pids()) == pids, "no cluster process restarted"
    assert identifies(deployment) == spent, "gateway sessions survived: no new IDENTIFY"
