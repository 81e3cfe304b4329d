"""Fault 8: a cluster's memory grows past limits.max_memory: it is restarted and the reason says memory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

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

VICTIM = 0
LIMIT_MIB = 300


def test_memory_growth_restarts_with_reason(rehearsal: Callable[..., Rehearsal], tmp_path: Path) -> None:
    flag = tmp_path / "memory.flag"
    deployment = rehearsal(**SMALL, bot_command=FAULTY_BOT, max_memory=f"{LIMIT_MIB}MiB", sample_interval=0.3,
                           bot_env={"CHAOS_FAULT": "memory", "CHAOS_CLUSTER": str(VICTIM),
                                    "CHAOS_FLAG": str(flag), "CHAOS_MEMORY_STEP": str(32 * 1024 * 1024)})
    deployment.start()
    wait_ready(deployment)
    before = cluster_pids_by_id(deployment)
    assert all(int(status_of(deployment, c).get("rss") or 0) < LIMIT_MIB * 2**20 for c in before), \
        "a healthy cluster is well below the limit"
    wait_on_ready(flag, before[VICTIM])  # else the running process, not the restarted one, could take the fault

    flag.touch()
    armed_at = time.time()
    restart = deployment.letsfrag_cli("restart", "--cluster", str(VICTIM), "--secret-env", "REHEARSAL_SECRET")
    assert restart.returncode == 0, restart.stderr
    wait_until_sync(lambda: not flag.exists(), timeout=30, interval=0.1, message="the bot starts hoarding memory")
    grown_pid = cluster_pids_by_id(deployment)[VICTIM]

    def restarted() -> bool:
        pid = cluster_pids_by_id(deployment).get(VICTIM)
        return pid not in (None, grown_pid) and status_of(deployment, VICTIM).get("state") == "ready"

    wait_until_sync(restarted, timeout=40, interval=0.2, message="the cluster is restarted for memory and READY")
    client = deployment.redis_client()
    history = [json.loads(x) for x in client.lrange(f"rehearsal:restarts:cluster:{VICTIM}", 0, -1)]
    client.close()
    memory = [h for h in history if "memory" in str(h.get("reason", "")).lower()]
    assert memory, f"the restart history names memory: {history}"
    assert f"{LIMIT_MIB} MiB" in memory[0]["reason"], memory[0]
    after = cluster_pids_by_id(deployment)
    assert {c: p for c, p in after.items() if c != VICTIM} == {c: p for c, p in before.items() if c != VICTIM}
    events = assert_clean_end(deployment, ["cluster_memory", "cluster_restart"], since=armed_at)
    assert any(e.kind == "cluster_memory" and e.fields.get("cluster") == str(VICTIM) for e in events)
